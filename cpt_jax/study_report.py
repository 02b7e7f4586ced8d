"""A study's comparison table: STUDY_DIR/study.md, study.json and study.png.

Owns turning the variants' run directories into one row each, read back from the runs'
metrics.jsonl only: the final validation loss per domain (the result run's evaluation at its
last step) and their average; forgetting (how much each source that is not the last stage's
new data rose during that stage) and adaptation (how much each new source fell), both from
the previous stage's result to the last one's; the tokens and FLOPs the variant's model took,
and those of its update (the runs after its first stage; a one-stage variant's whole run)
as a share of the baseline's; and the gap of its average loss to the baseline's, in %.
"""

from __future__ import annotations

import json
import os

from etils import epath

from cpt_jax import metrics_writer
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import plots


def _final_losses(run) -> dict[str, float] | None:
  """The run's validation losses at its last step, or None if it has none yet."""
  _, eval_records = metrics_writer.read_records(run.directory)
  for record in eval_records:
    if record["step"] == run.end_step:
      return {key.split("/")[1]: value for key, value in record.items()
              if key.startswith("eval/")}
  return None


def _mean(values) -> float | None:
  values = list(values)
  return sum(values) / len(values) if values else None


def variant_row(variant, study_dir: str) -> dict:
  """One variant's numbers; `status` is "unfinished" (and no numbers) until all its runs
  have a final evaluation. `runs` lists its run directories in training order and
  `stage_results` the one whose final evaluation is each stage's result (relative paths)."""
  results = [_final_losses(run) if run.is_done() else None for run in variant.results]
  last = variant.config.stages[-1]
  row = {"variant": variant.name, "description": variant.description,
         "runs": [os.path.relpath(run.directory, study_dir) for run in variant.runs],
         "stage_results": [os.path.relpath(run.directory, study_dir) for run in variant.results],
         "replay": sum(weight for weight in last.replay.values())}
  if any(result is None for result in results):
    return {**row, "status": "unfinished"}
  final = results[-1]
  row.update(status="done", validation_loss=final, average_loss=_mean(final.values()))
  if len(results) > 1:
    new = {source for source, weight in last.mixture.items() if weight > 0}
    before = results[-2]
    row["forgetting"] = {s: final[s] - before[s] for s in sorted(final) if s not in new}
    row["adaptation"] = {s: before[s] - final[s] for s in sorted(final) if s in new}
    row["average_forgetting"] = _mean(row["forgetting"].values())
    row["average_adaptation"] = _mean(row["adaptation"].values())
  per_token = model_lib.training_flops_per_token(
      model_config.from_config_dict(variant.config.model), variant.config.data.seq_len)
  row["tokens"] = sum(run.tokens for run in variant.path)
  row["update_tokens"] = sum(run.tokens for run in variant.update_runs)
  row["flops"] = row["tokens"] * per_token
  row["update_flops"] = row["update_tokens"] * per_token
  return row


def rows(variants, baseline: str, study_dir: str) -> list[dict]:
  """Every variant's row, compared with the baseline's where both are done."""
  table = [variant_row(variant, study_dir) for variant in variants]
  base = next(row for row in table if row["variant"] == baseline)
  for row in table:
    if row["status"] == "done" and base["status"] == "done":
      row["update_flops_vs_baseline"] = row["update_flops"] / base["flops"]
      row["gap_to_baseline_pct"] = 100 * (row["average_loss"] / base["average_loss"] - 1)
  return table


def _number(value, spec: str) -> str:
  return "—" if value is None else format(value, spec)


def markdown(table: list[dict], baseline: str, study_dir: str) -> str:
  sources = sorted({s for row in table for s in row.get("validation_loss", {})})
  header = (["variant"] + [f"{s} loss" for s in sources] +
            ["average", "forgetting", "adaptation", "tokens", "FLOPs", "update FLOPs / "
             f"{baseline}", f"gap to {baseline}", "replay"])
  lines = [f"# Study {study_dir}", "",
           f"Final validation loss per domain; forgetting and adaptation over the last stage "
           f"(mean over its old / new sources); the update is what a variant trains after its "
           f"first stage, against retraining everything ({baseline!r}).", "",
           "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for row in table:
    if row["status"] != "done":
      cells = [row["variant"]] + ["unfinished"] + [""] * (len(header) - 2)
    else:
      losses = row["validation_loss"]
      cells = ([row["variant"]] + [_number(losses.get(s), ".4f") for s in sources] + [
          _number(row["average_loss"], ".4f"),
          _number(row.get("average_forgetting"), "+.4f"),
          _number(row.get("average_adaptation"), "+.4f"),
          f"{row['tokens']:,}", f"{row['flops']:.3g}",
          _number(row.get("update_flops_vs_baseline"), ".2f"),
          _number(row.get("gap_to_baseline_pct"), "+.2f") + ("%" if "gap_to_baseline_pct"
                                                               in row else ""),
          f"{row['replay']:.0%}"])
    lines.append("| " + " | ".join(cells) + " |")
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


def write(study_dir: str, variants, baseline: str) -> list[dict]:
  table = rows(variants, baseline, study_dir)
  directory = epath.Path(study_dir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "study.json").write_text(json.dumps(
      {"baseline": baseline, "variants": table}, indent=1))
  (directory / "study.md").write_text(markdown(table, baseline, study_dir))
  done = [(variant, row) for variant, row in zip(variants, table) if row["status"] == "done"]
  if done:
    plots.plot_study({variant.name: _curves(variant) for variant, _ in done},
                     {row["variant"]: (row["replay"], row["average_forgetting"])
                      for _, row in done if row.get("average_forgetting") is not None},
                     str(directory / "study.png"))
  return table
