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


def test_the_studys_forgetting_has_error_bars_where_it_has_seeds(tmp_path, monkeypatch):
  from cpt_jax import plots
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda figure, out_path: drawn.append(figure))
  curves = {name: {"code": [(0, 5.0), (10, 4.0)]} for name in ("replay5", "replay0")}
  plots.plot_study(curves, {"replay5": (0.05, 0.9, 0.15), "replay0": (0.0, 3.0, 0.0)},
                   str(tmp_path / "study.png"))
  axis = drawn[0].axes[-1]
  bars = {tuple(line.get_xydata()[0]): line for line in axis.lines if line.get_marker() == "o"}
  assert set(bars) == {(5.0, 0.9), (0.0, 3.0)}
  segments = [collection.get_segments() for collection in axis.collections]
  assert [[list(point) for point in segment] for collected in segments for segment in collected
          ] == [[[5.0, 0.75], [5.0, 1.05]]]  # One bar: replay5's, mean ± its spread.
  assert axis.get_title().endswith("(± std over seeds)")
