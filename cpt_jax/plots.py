"""Figures: a config's learning-rate schedule, and a run's validation curves (matplotlib).

Owns drawing only; the numbers come from `run_plan` and the run's `metrics.jsonl`.
"""

from __future__ import annotations

from etils import epath
import jax
import matplotlib

matplotlib.use("Agg")  # Files only: no display on TPU VMs, CI or Colab's backend.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mark_stages(axis, plans, scale=1.0) -> None:
  for stage_plan in plans:
    if stage_plan.start_step > 0:
      axis.axvline(stage_plan.start_step * scale, color="gray", linestyle=":", linewidth=1)
    axis.text((stage_plan.start_step + 0.01 * stage_plan.steps) * scale, 1.0,
              stage_plan.name, transform=axis.get_xaxis_transform(), va="top", fontsize=8,
              color="gray")


def schedule_values(schedule, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
  steps = np.arange(total_steps + 1)
  return steps, np.asarray(jax.jit(jax.vmap(schedule))(steps))


def plot_schedule(schedule, plans, out_path: str, title: str = "") -> None:
  total = plans[-1].end_step
  steps, values = schedule_values(schedule, total)
  figure, axis = plt.subplots(figsize=(8, 3.5))
  axis.plot(steps, values)
  _mark_stages(axis, plans)
  axis.set_xlabel("step")
  axis.set_ylabel("learning rate")
  axis.set_title(title)
  _save(figure, out_path)


def plot_curves(eval_records: list[dict], train_records: list[dict], plans, tokens_per_step: int,
                out_path: str) -> None:
  """Validation loss per domain against tokens seen, stage boundaries marked, LR on the right."""
  figure, axis = plt.subplots(figsize=(8, 4.5))
  sources = sorted({key.split("/")[1] for record in eval_records for key in record
                    if key.startswith("eval/")})
  for source in sources:
    points = [(record["step"] * tokens_per_step, record[f"eval/{source}/loss"])
              for record in eval_records if f"eval/{source}/loss" in record]
    if points:
      tokens, losses = zip(*points)
      axis.plot(tokens, losses, marker="o", markersize=3, label=f"{source} (validation)")
  axis.set_xlabel("training tokens")
  axis.set_ylabel("validation loss")
  _mark_stages(axis, plans, scale=tokens_per_step)
  axis.legend(loc="lower left", fontsize=8)
  if train_records:
    lr_axis = axis.twinx()
    lr_axis.plot([r["step"] * tokens_per_step for r in train_records],
                 [r["learning_rate"] for r in train_records], color="black", alpha=0.3,
                 linewidth=1)
    lr_axis.set_ylabel("learning rate", color="gray")
  _save(figure, out_path)


def _save(figure, out_path: str) -> None:
  """PNG through etils.epath, so the path may be a gs:// run directory."""
  figure.tight_layout()
  with epath.Path(out_path).open("wb") as f:
    figure.savefig(f, format="png", dpi=120)
  plt.close(figure)
