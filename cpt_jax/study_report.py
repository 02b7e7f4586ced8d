"""A study's comparison table: STUDY_DIR/study.md, study.json and study.png.

Owns turning the variants' run directories into one row each, read back from the runs'
metrics.jsonl only: the final validation loss per domain (the result run's evaluation at its
last step) and their average; forgetting (how much each source that is not the last stage's
new data rose during that stage) and adaptation (how much each new source fell), both from
the previous stage's result to the last one's (for a one-stage variant that continues a
checkpoint from outside the study, an imported model, from that model's own evaluation); the
tokens and FLOPs the variant's model took in the study, and those of its update (the runs
after its first stage; a one-stage variant's whole run) as a share of the baseline's; and
the gap of its average loss to the baseline's, in %.
A variant run with several seeds is compared seed by seed with the baseline's run of the same
seed; its row holds the mean of its seeds' numbers, their standard deviations and each seed's
own row.
"""

from __future__ import annotations

import json
import os
import statistics

from etils import epath

from cpt_jax import metrics_writer
from cpt_jax import plots
from cpt_jax import report
from cpt_jax import resume
from cpt_jax import run_plan


def _final_losses(run) -> dict[str, float] | None:
  """The run's validation losses at its last step, or None if it has none yet."""
  return metrics_writer.losses_at(metrics_writer.read_records(run.directory)[1], run.end_step)


def _start_losses(variant) -> dict[str, float] | None:
  """The validation losses of the model a variant continues, where that is a checkpoint from
  outside the study (an imported Hugging Face model): its first run's first evaluation. None
  for a variant that starts from scratch."""
  first = variant.chain[0]
  if not first.config.init.from_checkpoint:
    return None
  return metrics_writer.eval_losses(metrics_writer.read_records(first.directory)[1][0])


def _mean(values) -> float | None:
  values = list(values)
  return sum(values) / len(values) if values else None


def variant_row(variant, study_dir: str) -> dict:
  """One variant's numbers; `status` is "unfinished" (and no numbers) until all its runs
  have a final evaluation. `runs` lists its run directories in training order and
  `stage_results` the one whose final evaluation is each stage's result (relative paths)."""
  results = [_final_losses(run) if run.is_done() else None for run in variant.results]
  last = variant.config.stages[-1]
  row = {"variant": variant.name, "description": variant.description, "seed": variant.config.seed,
         "runs": [os.path.relpath(run.directory, study_dir) for run in variant.runs],
         "stage_results": [os.path.relpath(run.directory, study_dir) for run in variant.results],
         "replay": sum(weight for weight in last.replay.values())}
  if any(result is None for result in results):
    return {**row, "status": "unfinished"}
  final = results[-1]
  row.update(status="done", validation_loss=final, average_loss=_mean(final.values()))
  before = results[-2] if len(results) > 1 else _start_losses(variant)
  if len(results) == 1 and before is not None:
    row["start_validation_loss"] = before  # The continued model's, which the table names.
  if before is not None:
    new = {source for source, weight in last.mixture.items() if weight > 0}
    learnt = run_plan.sources_learnt(resume.learnt_before(variant.chain[0].directory),
                                     run_plan.plan(variant.config)[:-1])
    row["forgetting"] = {s: final[s] - before[s] for s in sorted(final)
                         if report.can_forget(s, new, learnt)}
    row["adaptation"] = {s: before[s] - final[s] for s in sorted(final) if s in new}
    row["average_forgetting"] = _mean(row["forgetting"].values())
    row["average_adaptation"] = _mean(row["adaptation"].values())
  row["tokens"] = sum(run.tokens for run in variant.path)
  row["update_tokens"] = sum(run.tokens for run in variant.update_runs)
  row["flops"] = sum(run.flops for run in variant.path)
  row["update_flops"] = sum(run.flops for run in variant.update_runs)
  return row


_PER_SOURCE = ("validation_loss", "forgetting", "adaptation")
_SPREAD = ("average_loss", "average_forgetting", "average_adaptation", "gap_to_baseline_pct")
_SAME_FOR_EVERY_SEED = ("tokens", "update_tokens", "flops", "update_flops",
                        "update_flops_vs_baseline")


def _across_seeds(seed_rows: list[dict]) -> dict:
  """One variant's row over its seeds: means, standard deviations and the seeds' rows."""
  first = seed_rows[0]
  row = {"variant": first["variant"], "description": first["description"],
         "replay": first["replay"], "seeds": [seed_row["seed"] for seed_row in seed_rows],
         "per_seed": seed_rows}
  if "start_validation_loss" in first:  # One model for every seed (its first seed's batches).
    row["start_validation_loss"] = first["start_validation_loss"]
  if any(seed_row["status"] != "done" for seed_row in seed_rows):
    return {**row, "status": "unfinished"}
  row["status"] = "done"
  for key in _PER_SOURCE:
    if key in first:
      row[key] = {s: _mean(seed_row[key][s] for seed_row in seed_rows) for s in first[key]}
  # A seed's gap needs the baseline's run of the same seed finished too.
  in_every_seed = lambda key: all(key in seed_row for seed_row in seed_rows)
  row.update({key: first[key] for key in _SAME_FOR_EVERY_SEED if in_every_seed(key)})
  spread = [key for key in _SPREAD if in_every_seed(key)]
  row.update({key: _mean(seed_row[key] for seed_row in seed_rows) for key in spread})
  row["std"] = {key: statistics.stdev(seed_row[key] for seed_row in seed_rows)
                for key in spread}
  return row


def _seeds_by_name(variants) -> dict[str, list]:
  """Each variant's plans, one per seed in order (as study.plan gives them), in table order."""
  seeds: dict[str, list] = {}
  for variant in variants:
    seeds.setdefault(variant.name, []).append(variant)
  return seeds


def rows(variants, baseline: str, study_dir: str) -> list[dict]:
  """Every variant's row, each seed compared with the baseline's run of the same seed where
  both are done; a variant with several seeds as `_across_seeds` gathers them."""
  by_name = {name: [variant_row(variant, study_dir) for variant in seeds]
             for name, seeds in _seeds_by_name(variants).items()}
  for seed_rows in by_name.values():
    for row, base in zip(seed_rows, by_name[baseline]):
      if row["status"] == "done" and base["status"] == "done":
        row["update_flops_vs_baseline"] = row["update_flops"] / base["flops"]
        row["gap_to_baseline_pct"] = 100 * (row["average_loss"] / base["average_loss"] - 1)
  return [seed_rows[0] if len(seed_rows) == 1 else _across_seeds(seed_rows)
          for seed_rows in by_name.values()]


def _number(value, spec: str) -> str:
  return "—" if value is None else format(value, spec)


def _with_spread(row: dict, key: str, spec: str, unit: str = "") -> str:
  """The cell of `key`: its value, and ± its standard deviation over seeds where it has one."""
  cell = _number(row.get(key), spec) + (unit if key in row else "")
  if key in row.get("std", {}):
    cell += f" ± {row['std'][key]:{spec.lstrip('+')}}{unit}"
  return cell


def markdown(table: list[dict], baseline: str, study_dir: str) -> str:
  sources = sorted({s for row in table for s in row.get("validation_loss", {})})
  header = (["variant"] + [f"{s} loss" for s in sources] +
            ["average", "forgetting", "adaptation", "tokens", "FLOPs", "update FLOPs / "
             f"{baseline}", f"gap to {baseline}", "replay"])
  lines = [f"# Study {study_dir}", "",
           f"Final validation loss per domain; forgetting and adaptation over the last stage "
           f"(mean over its old / new sources); a variant's update is what it trains after its "
           f"first stage (a one-stage variant's whole run), as a share of everything the "
           f"baseline {baseline!r} trains.", ""]
  seeds = max((len(row.get("seeds", [])) for row in table), default=0)
  if seeds:
    lines += [f"Means over {seeds} seeds ± their standard deviation; each seed is compared "
              f"with the {baseline!r} run of the same seed.", ""]
  lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for row in table:
    if row["status"] != "done":
      cells = [row["variant"]] + ["unfinished"] + [""] * (len(header) - 2)
    else:
      losses = row["validation_loss"]
      cells = ([row["variant"]] + [_number(losses.get(s), ".4f") for s in sources] + [
          _with_spread(row, "average_loss", ".4f"),
          _with_spread(row, "average_forgetting", "+.4f"),
          _with_spread(row, "average_adaptation", "+.4f"),
          f"{row['tokens']:,}", f"{row['flops']:.3g}",
          _number(row.get("update_flops_vs_baseline"), ".2f"),
          _with_spread(row, "gap_to_baseline_pct", "+.2f", "%"),
          f"{row['replay']:.0%}"])
    lines.append("| " + " | ".join(cells) + " |")
  starts = [row["start_validation_loss"] for row in table if "start_validation_loss" in row]
  if starts:
    lines += ["", "Forgetting and adaptation of one-stage variants are measured from the model "
              "they continue, whose validation loss was " + ", ".join(
                  f"{s} {loss:.4f}" for s, loss in sorted(starts[0].items())) + "."]
  described = [row for row in table if row["description"]]
  if described:
    lines += [""] + [f"- **{row['variant']}**: {row['description']}" for row in described]
  return "\n".join(lines) + "\n"


def _curves(variant) -> dict[str, list[tuple[int, float]]]:
  """The variant's validation curves along the path to its final model, per source."""
  curves: dict[str, list[tuple[int, float]]] = {}
  for run in variant.path:
    _, eval_records = metrics_writer.read_records(run.directory)
    for record in eval_records:
      if run.start_step <= record["step"] <= run.end_step:
        for key, value in record.items():
          if key.startswith("eval/"):
            curves.setdefault(key.split("/")[1], []).append((record["step"], value))
  return {source: sorted(set(points)) for source, points in curves.items()}


def _across_seeds_curves(per_seed: list[dict[str, list[tuple[int, float]]]]
                         ) -> dict[str, list[tuple[int, float, float]]]:
  """A variant's curves over its seeds: (step, mean, standard deviation or 0 for one seed)
  at each step every seed evaluated."""
  curves = {}
  for source in per_seed[0]:
    losses = [dict(seed_curves.get(source, [])) for seed_curves in per_seed]
    steps = sorted(set.intersection(*(set(seed_losses) for seed_losses in losses)))
    curves[source] = [(step, _mean(seed_losses[step] for seed_losses in losses),
                       statistics.stdev(seed_losses[step] for seed_losses in losses)
                       if len(losses) > 1 else 0.0) for step in steps]
  return curves


def write(study_dir: str, variants, baseline: str) -> list[dict]:
  table = rows(variants, baseline, study_dir)
  directory = epath.Path(study_dir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "study.json").write_text(json.dumps(
      {"baseline": baseline, "variants": table}, indent=1))
  (directory / "study.md").write_text(markdown(table, baseline, study_dir))
  seeds = _seeds_by_name(variants)
  done = [row for row in table if row["status"] == "done"]
  if done:
    plots.plot_study({row["variant"]: _across_seeds_curves(
                          [_curves(variant) for variant in seeds[row["variant"]]])
                      for row in done},
                     {row["variant"]: (row["replay"], row["average_forgetting"],
                                       row.get("std", {}).get("average_forgetting", 0.0))
                      for row in done if row.get("average_forgetting") is not None},
                     str(directory / "study.png"))
  return table
