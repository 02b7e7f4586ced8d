"""Executes the notebooks under notebooks/ end to end: they must run against the library."""

import os

import nbclient
import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb")))
def test_notebook_runs_without_errors(name):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": NOTEBOOKS}}).execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.get("outputs", [])]
  assert any(output.get("output_type") == "display_data" for output in outputs)  # The plots.
  assert not any(output.get("output_type") == "error" for output in outputs)
