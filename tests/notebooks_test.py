"""Executes the notebooks under notebooks/ end to end (they must run against the library),
and checks their install cells: skipped where cpt_jax is importable, the documented
commands otherwise."""

import importlib.util
import os
import re
import subprocess
import sys

import nbformat
import pytest

import run_helpers as helpers

NOTEBOOKS = helpers.NOTEBOOKS
NAMES = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
HF_NOTEBOOK = "continue_a_hugging_face_model.ipynb"


def _install_cell(name):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  return next(cell.source for cell in notebook.cells
              if cell.cell_type == "code" and "find_spec(\"cpt_jax\")" in cell.source)


@pytest.mark.parametrize("name", [name for name in NAMES
                                  if name not in (helpers.STUDY_NOTEBOOK, HF_NOTEBOOK)])
def test_notebook_runs_without_errors(name):
  helpers.execute_notebook(name)  # The study notebook runs in study_test.py, on its study.


def test_the_hugging_face_notebook_continues_a_model_and_hands_it_back(tmp_path, monkeypatch):
  """The notebook on a tiny GPT-NeoX made here (Pythia's design; no Hub from the tests)."""
  helpers.tiny_hf_gpt_neox(tmp_path / "hf")
  monkeypatch.setenv("CPT_JAX_NOTEBOOK_MODEL", str(tmp_path / "hf"))
  monkeypatch.setenv("CPT_JAX_NOTEBOOK_DIR", str(tmp_path / "work"))
  monkeypatch.setenv("CPT_JAX_NOTEBOOK_SMOKE", "1")
  outputs = helpers.execute_notebook(HF_NOTEBOOK)
  printed = "".join(output.get("text", "") for output in outputs)
  assert "model: pythia, 2 layers, dim 64" in printed  # The imported model, described.
  for replay in ("5%", "0%"):  # Both runs, measured against the imported model.
    assert re.search(rf"replay +{replay}: prose loss [\d.]+ -> [\d.]+ \(forgetting [+-][\d.]+\); "
                     r"code loss [\d.]+ -> [\d.]+ \(adaptation [+-][\d.]+\)", printed), printed
  assert "def fibonacci(n):" in printed  # transformers generated from the exported model.
  assert (tmp_path / "work" / "hf_replay5" / "model.safetensors").exists()


@pytest.mark.parametrize("name", NAMES)
def test_install_cell_is_skipped_when_importable_and_installs_the_repository_otherwise(
    name, monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(subprocess, "check_call", calls.append)
  monkeypatch.chdir(tmp_path)  # Not a checkout: a fresh Colab runtime.
  monkeypatch.setenv("CPT_JAX_REPOSITORY", "https://example.org/cpt_jax.git")
  cell = _install_cell(name)
  exec(cell, {})  # cpt_jax is importable here: nothing is installed.
  assert calls == []
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  exec(cell, {})
  assert calls == [
      ["git", "clone", "--depth=1", "https://example.org/cpt_jax.git", "/content/cpt_jax"],
      [sys.executable, "-m", "pip", "install", "-q", "-e", "/content/cpt_jax"]]
  calls.clear()
  monkeypatch.chdir(NOTEBOOKS)  # From a checkout: an editable install of it, no clone.
  exec(cell, {})
  assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e",
                    os.path.abspath(os.path.join(NOTEBOOKS, ".."))]]
