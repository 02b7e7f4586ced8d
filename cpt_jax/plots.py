"""Figures: a config's learning-rate schedule, a run's validation curves, a study's comparison.

Owns drawing only; the numbers come from `run_plan`, the runs' `metrics.jsonl` and the study
report. Figures are `matplotlib.figure.Figure` objects written to files: pyplot is never
imported, so the process's backend (a notebook's inline plots) is left as the user set it.
"""

from __future__ import annotations

from etils import epath
import jax
from matplotlib.figure import Figure
import numpy as np


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
  figure = Figure(figsize=(8, 3.5))
  axis = figure.subplots()
  axis.plot(steps, values)
  _mark_stages(axis, plans)
  axis.set_xlabel("step")
  axis.set_ylabel("learning rate")
  axis.set_title(title)
  _save(figure, out_path)


def plot_study_schedules(lines: dict[str, list[tuple[np.ndarray, np.ndarray, bool]]], plans,
                         out_path: str, title: str = "") -> None:
  """Every variant's learning rate on one axis (`lines`: {variant: [(steps, rates, whether an
  anneal branch)]}, `study.learning_rates`): its stages solid, its anneal branches dashed,
  variants on the same schedule one line; the stage boundaries of `plans` (the first
  variant's) marked."""
  alike: list[tuple[list[str], list]] = []  # Variants that differ only in data share a line.
  for name, runs in lines.items():
    same = next((names for names, drawn in alike if _same_lines(drawn, runs)), None)
    if same is None:
      alike.append(([name], runs))
    else:
      same.append(name)
  figure = Figure(figsize=(9, 4))
  axis = figure.subplots()
  for index, (names, runs) in enumerate(alike):
    for number, (steps, rates, branch) in enumerate(runs):
      axis.plot(steps, rates, color=f"C{index % 10}", linestyle="--" if branch else "-",
                linewidth=1.2, label=None if number else ", ".join(names))
  _mark_stages(axis, plans)
  axis.set_xlabel("step")
  axis.set_ylabel("learning rate")
  axis.set_title(title + (" (anneal branches dashed)" if any(
      branch for runs in lines.values() for _, _, branch in runs) else ""))
  axis.legend(fontsize=7)
  _save(figure, out_path)


def _same_lines(first, second) -> bool:
  return len(first) == len(second) and all(
      np.array_equal(a_steps, b_steps) and np.array_equal(a_rates, b_rates) and a_branch == b_branch
      for (a_steps, a_rates, a_branch), (b_steps, b_rates, b_branch) in zip(first, second))


def plot_curves(eval_records: list[dict], train_records: list[dict], plans, tokens_per_step: int,
                out_path: str) -> None:
  """Validation loss per domain against tokens seen, stage boundaries marked, LR on the right."""
  figure = Figure(figsize=(8, 4.5))
  axis = figure.subplots()
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


def plot_study(curves: dict[str, dict[str, list[tuple[int, float, float]]]],
               forgetting: dict[str, tuple[float, float, float]], out_path: str) -> None:
  """One panel per domain with every variant's validation curve on shared axes (`curves`:
  {variant: {source: [(step, mean loss, its standard deviation over seeds or 0)]}}, drawn
  with a ± band where seeds differ), and forgetting against replay share (`forgetting`:
  {variant: (replay share, mean forgetting, its standard deviation over seeds or 0)})."""
  sources = sorted({source for per_source in curves.values() for source in per_source})
  figure = Figure(figsize=(4.5 * (len(sources) + 1), 4))
  axes = figure.subplots(1, len(sources) + 1, squeeze=False)[0]
  colors = {name: f"C{index % 10}" for index, name in enumerate(curves)}
  seeded = any(spread for per_source in curves.values() for points in per_source.values()
               for _, _, spread in points) or any(spread for _, _, spread in forgetting.values())
  for axis, source in zip(axes, sources):
    for name, per_source in curves.items():
      if per_source.get(source):
        steps, losses, spreads = map(np.asarray, zip(*per_source[source]))
        axis.plot(steps, losses, color=colors[name], linewidth=1.2, label=name)
        if spreads.any():
          axis.fill_between(steps, losses - spreads, losses + spreads, color=colors[name],
                            alpha=0.2, linewidth=0)
    axis.set_title(f"{source} validation loss" + (" (mean ± std over seeds)" if seeded else ""))
    axis.set_xlabel("step")
  axes[0].legend(fontsize=7)
  axis = axes[-1]
  for name, (replay, value, spread) in forgetting.items():
    axis.errorbar([replay * 100 + _dodge(name, forgetting)], [value],
                  yerr=[spread] if spread else None, fmt="o", color=colors[name], capsize=3,
                  label=name)
  axis.axhline(0, color="gray", linewidth=0.5)
  if forgetting:
    axis.legend(fontsize=7)  # Variants at one replay share would overlap as annotations.
  axis.set_title("forgetting over the last stage" + (" (± std over seeds)" if seeded else ""))
  axis.set_xlabel("replay share of the last stage (%)")
  axis.set_ylabel("mean loss rise of earlier data")
  _save(figure, out_path)


def _dodge(name: str, forgetting: dict[str, tuple[float, float, float]],
           width: float = 0.6) -> float:
  """`name`'s shift in replay % from the others at its share, so their points stay apart."""
  shared = [other for other, point in forgetting.items() if point[0] == forgetting[name][0]]
  return (shared.index(name) - (len(shared) - 1) / 2) * width


def _save(figure, out_path: str) -> None:
  """PNG through etils.epath, so the path may be a gs:// run directory."""
  figure.tight_layout()
  with epath.Path(out_path).open("wb") as f:
    figure.savefig(f, format="png", dpi=120)
