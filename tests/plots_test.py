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
  curves = {name: {"code": [(0, 5.0, 0.0), (10, 4.0, 0.0)]} for name in ("replay5", "replay0")}
  plots.plot_study(curves, {"replay5": (0.05, 0.9, 0.15), "replay0": (0.0, 3.0, 0.0)},
                   str(tmp_path / "study.png"))
  axis = drawn[0].axes[-1]
  bars = {tuple(line.get_xydata()[0]): line for line in axis.lines if line.get_marker() == "o"}
  assert set(bars) == {(5.0, 0.9), (0.0, 3.0)}
  segments = [collection.get_segments() for collection in axis.collections]
  assert [[list(point) for point in segment] for collected in segments for segment in collected
          ] == [[[5.0, 0.75], [5.0, 1.05]]]  # One bar: replay5's, mean ± its spread.
  assert axis.get_title().endswith("(± std over seeds)")


def test_the_studys_curves_have_bands_and_variants_at_one_replay_share_stand_apart(
    tmp_path, monkeypatch):
  from cpt_jax import plots
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda figure, out_path: drawn.append(figure))
  curves = {"replay5": {"code": [(0, 5.0, 0.1), (10, 4.0, 0.2)]},
            "no_rewarm": {"code": [(0, 5.0, 0.0), (10, 4.5, 0.0)]},
            "infinite": {"code": [(0, 5.0, 0.0), (10, 4.2, 0.0)]}}
  forgetting = {"replay5": (0.05, 0.9, 0.1), "no_rewarm": (0.05, 0.9, 0.0),
                "infinite": (0.05, 0.8, 0.0)}
  plots.plot_study(curves, forgetting, str(tmp_path / "study.png"))
  code, forgetting_axis = drawn[0].axes
  bands = [collection.get_paths()[0].vertices for collection in code.collections]
  assert len(bands) == 1  # replay5's: mean ± its spread at each step; the others have none.
  assert {tuple(point) for point in bands[0]} >= {(0, 4.9), (0, 5.1), (10, 3.8), (10, 4.2)}
  assert code.get_title() == "code validation loss (mean ± std over seeds)"
  points = [tuple(line.get_xydata()[0]) for line in forgetting_axis.lines
            if line.get_marker() == "o"]
  assert points == [(4.4, 0.9), (5.0, 0.9), (5.6, 0.8)]  # Centred on 5%, 0.6 apart.
  labels = [text.get_text() for text in forgetting_axis.get_legend().get_texts()]
  assert labels == ["replay5", "no_rewarm", "infinite"]
