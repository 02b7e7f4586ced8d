"""Executes the notebooks under notebooks/ end to end (they must run against the library),
and checks their install cells: skipped where cpt_jax is importable, the documented
commands otherwise."""

import importlib.util
import os
import subprocess
import sys

import nbformat
import pytest

import run_helpers as helpers

NOTEBOOKS = helpers.NOTEBOOKS
NAMES = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))


def _install_cell(name):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  return next(cell.source for cell in notebook.cells
              if cell.cell_type == "code" and "find_spec(\"cpt_jax\")" in cell.source)


@pytest.mark.parametrize("name", [name for name in NAMES if name != helpers.STUDY_NOTEBOOK])
def test_notebook_runs_without_errors(name):
  helpers.execute_notebook(name)  # The study notebook runs in study_test.py, on its study.


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
