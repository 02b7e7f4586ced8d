"""Tests plots.py: figures are written without touching the process's matplotlib backend."""

import subprocess
import sys

import run_helpers as helpers

_SCRIPT = """
import matplotlib
matplotlib.use("svg")  # A backend the user chose (a notebook's inline one, say).
import cpt_jax.trainer
from cpt_jax import plots, run_plan
from configs import demo
config = demo.get_config("smoke")
plots.plot_schedule(run_plan.learning_rate_schedule(config), run_plan.plan(config), {out!r})
print(matplotlib.get_backend())
"""


def test_drawing_leaves_the_users_matplotlib_backend_alone(tmp_path):
  out = str(tmp_path / "lr.png")
  result = subprocess.run([sys.executable, "-c", _SCRIPT.format(out=out)], cwd=helpers.ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["svg"]
  assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
