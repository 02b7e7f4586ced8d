"""The end-of-run report: per-domain validation loss after each stage, forgetting, adaptation.

Owns reading the run's records back and turning them into `RUN_DIR/summary.json`,
`RUN_DIR/curves.png` and the table printed at the end. For each stage after the first, and
for the first too where the run starts from another run's checkpoint (an imported model,
whose loss at the start is what continual pre-training keeps or loses): forgetting = how
much the loss rose during the stage of every source learnt before it and *not* in the
stage's new data (replayed sources included); adaptation = how much the loss of the stage's
new sources fell. A source is learnt before a stage if an earlier stage of the run trained
on it, or the runs the run descends from did (`learnt_before`); where a model in that past
was trained outside cpt-jax (an import), what it learnt is unknown: there, every source. A
source nothing has trained on yet (a later stage's data) is not forgotten.
Positive numbers mean more forgetting and more adaptation.
"""

from __future__ import annotations

import json

from etils import epath

from cpt_jax import metrics_writer
from cpt_jax import plots
from cpt_jax import run_plan


def summarize(eval_records: list[dict], plans, starts_from_checkpoint: bool = False,
              learnt_before: frozenset[str] | None = frozenset()) -> dict:
  start = metrics_writer.losses_at(eval_records, plans[0].start_step)
  stages = []
  for stage_plan in plans:
    stages.append({"name": stage_plan.name, "end_step": stage_plan.end_step,
                   "mixture": stage_plan.mixture,
                   "validation_loss": metrics_writer.losses_at(eval_records, stage_plan.end_step)})
  forgetting, adaptation = {}, {}
  # A fresh run starts from random weights: its first stage forgets nothing worth measuring.
  befores = [start if starts_from_checkpoint else None] + [
      stage["validation_loss"] for stage in stages[:-1]]
  for index, (stage_plan, stage, before) in enumerate(zip(plans, stages, befores)):
    after = stage["validation_loss"]
    if not before or not after:
      continue
    new_sources = set(stage_plan.mixture) - set(stage_plan.replayed_sources)
    learnt = run_plan.sources_learnt(learnt_before, plans[:index])
    forgetting[stage_plan.name] = {source: after[source] - before[source]
                                   for source in sorted(after)
                                   if can_forget(source, new_sources, learnt)}
    adaptation[stage_plan.name] = {source: before[source] - after[source]
                                   for source in sorted(after) if source in new_sources}
  return {"start_validation_loss": start, "stages": stages, "forgetting": forgetting,
          "adaptation": adaptation}


def can_forget(source: str, new_sources, learnt: frozenset[str] | None) -> bool:
  """Whether a stage's forgetting counts `source`: learnt before the stage (any source where
  that is unknown) and not among the stage's new data."""
  return source not in new_sources and (learnt is None or source in learnt)


def table(summary: dict) -> str:
  sources = sorted({source for stage in summary["stages"]
                    for source in (stage["validation_loss"] or {})})
  rows = [("start", summary["start_validation_loss"])] + [
      (f"after {stage['name']}", stage["validation_loss"]) for stage in summary["stages"]]
  width = max(len(label) for label, _ in [("validation loss", None), *rows])  # Columns align.
  lines = ["validation loss".ljust(width) + "".join(f"{s:>12}" for s in sources)]
  for label, losses in rows:
    if losses:
      lines.append(label.ljust(width) + "".join(f"{losses[s]:>12.4f}" for s in sources))
  for kind in ("forgetting", "adaptation"):
    for stage_name, changes in summary[kind].items():
      for source, change in changes.items():
        rose = (change > 0) == (kind == "forgetting")  # Negative forgetting: the loss fell.
        lines.append(f"{kind} during {stage_name!r}: {change:+.4f} ({source} loss "
                     f"{'rose' if rose else 'fell'} by {abs(change):.4f})")
  return "\n".join(lines)


def write(workdir: str, plans, tokens_per_step: int, starts_from_checkpoint: bool = False,
          learnt_before: frozenset[str] | None = frozenset()) -> dict:
  train_records, eval_records = metrics_writer.read_records(workdir)
  summary = summarize(eval_records, plans, starts_from_checkpoint, learnt_before)
  (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=1))
  plots.plot_curves(eval_records, train_records, plans, tokens_per_step,
                    str(epath.Path(workdir) / "curves.png"))
  return summary
