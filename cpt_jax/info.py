"""`cpt-jax info`: what a config will train, before anything is launched, or what a run holds.

Owns the human-readable description: parameter counts, FLOPs per token and the stage plan;
with `--memory`, the compiled step's memory per device (`step_memory.py`) against capacity;
with `--from`, a run's model and checkpoints, and where one checkpoint stands.
"""

from __future__ import annotations

import collections

import jax
import ml_collections

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import input_pipeline
from cpt_jax import metrics_writer
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import paths
from cpt_jax import resume
from cpt_jax import run_directory
from cpt_jax import run_plan
from cpt_jax import step_memory
from cpt_jax.config_error import ConfigError


def _schedule_summary(schedule: ml_collections.ConfigDict | None) -> str:
  if schedule is None:
    return "run-wide schedule"
  fields = ", ".join(f"{key}={value}" for key, value in schedule.items() if key != "name")
  return f"{schedule.name}({fields})"


def _design_notes(model: model_config.ModelConfig) -> str:
  """What sets a model apart from its family's plain design (Qwen2's biases, Qwen3's and
  OLMo 2's norms, Mistral's window, wider heads, Llama 3.1's rotary, ...), or ""."""
  notes = [(f"head dim {model.head_dim}", model.attention_head_dim),
           ("q/k/v biases", model.qkv_bias),
           ("q/k norms " + ("per head" if model.qk_norm == "head" else "over all heads"),
            model.qk_norm),
           ("norms after sublayers", model.post_norm),
           (f"attention window {model.sliding_window}", model.sliding_window),
           (f"rope scaling {model.rope_scaling}", model.rope_scaling),
           ("tied embeddings", model.tie_embeddings),
           ("sequential residual", model.sequential_residual)]
  return "".join(f", {note}" for note, applies in notes if applies)


def _model_lines(model: model_config.ModelConfig, seq_len: int) -> tuple[list[str], float]:
  total, non_embedding = model_lib.parameter_counts(model)
  flops = model_lib.training_flops_per_token(model, seq_len)
  return [f"parameters: {total} (non-embedding {non_embedding})",
          f"model: {model.family}, {model.num_layers} layers, dim {model.model_dim}, "
          f"{model.num_heads} heads ({model.num_kv_heads} kv), mlp {model.mlp_dim}, "
          f"vocab {model.vocab_size}, {model.compute_dtype}{_design_notes(model)}"], flops


def describe_run(reference: str) -> str:
  """A run directory's model and checkpoints (an imported Hugging Face model included); for
  RUN_DIR:STEP also where that checkpoint stands: its stage, the tokens of each source this
  run trained on up to it, and its validation losses where the run evaluated that step."""
  run_dir, step = checkpoint_lib.parse_reference(paths.resolve_reference(reference))
  config = run_directory.source_experiment(run_dir)
  lines, flops = _model_lines(model_config.from_config_dict(config.model), config.data.seq_len)
  checkpointer = checkpoint_lib.Checkpointer(run_dir, read_only=True)
  steps = checkpointer.steps()
  lines += [f"flops per token: {flops:.4g} (training, seq_len {config.data.seq_len})",
            f"tokenizer: {config.data.tokenizer.kind}, "
            f"end of document {config.data.tokenizer.eos_token!r}",
            f"checkpoints: {steps or 'none'}"]
  origin = checkpointer.read_metadata(steps[0]) if steps else {}
  if "imported_from" in origin:
    commit = origin.get("imported_commit")
    lines.append(f"imported from: {origin['imported_from']}" + (f" (commit {commit})"
                                                                if commit else ""))
  elif config.init.from_checkpoint:
    init = config.init
    lines.append(f"started from: {init.from_checkpoint} (optimizer state {init.optimizer_state}"
                 f", step {init.step}, data {init.data})")
    if steps:  # What its stages can forget (report.py).
      learnt = resume.learnt_before(run_dir)
      lines.append("sources learnt before this run: " + (
          (", ".join(sorted(learnt)) or "none") if learnt is not None else
          "unknown (an imported model in its past, or checkpoints older than that record): "
          "forgetting counts every source"))
    positions = origin.get(resume.POSITIONS_KEY)
    if positions:  # Where a replay_position="continue" stage of this run picks its rows up.
      lines.append("rows of each source served before its first stage: " + ", ".join(
          f"{name} {rows:,}" for name, rows in sorted(positions.items())))
  if step is not None:
    lines += _checkpoint_lines(config, run_dir, checkpointer.existing_step(
        step, f"--from={reference}"), checkpointer)
  return "\n".join(lines)


def _checkpoint_lines(config, run_dir: str, step: int, checkpointer) -> list[str]:
  metadata = checkpointer.read_metadata(step)
  plans = run_plan.plan(config, start_step=metadata["step_offset"])
  tokens = {name: rows * config.data.seq_len
            for name, rows in input_pipeline.rows_served(config.data, plans, step).items()}
  lines = [f"step {step}: stage {metadata['stage_name']!r} ({metadata['stage'] + 1} of "
           f"{len(plans)}), {sum(tokens.values()):,} tokens trained in this run ("
           + ", ".join(f"{name} {count:,}" for name, count in tokens.items()) + ")"]
  losses = metrics_writer.losses_at(metrics_writer.read_records(run_dir)[1], step)
  if losses:
    lines.append(f"validation loss at step {step}: "
                 + ", ".join(f"{name} {loss:.4f}" for name, loss in sorted(losses.items())))
  return lines


def _as_trained(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` as `train` runs it: paths resolved, and a run that continues another (an
  imported model) with that run's architecture (`init.model="source"`). Where that run does
  not exist yet, nothing says what the model is: refused, rather than describing the config's
  own model block, which training would not use."""
  config = paths.resolve_config(config)
  init = config.init
  if init.from_checkpoint and init.model == "source":
    source, _ = checkpoint_lib.parse_reference(init.from_checkpoint)
    if run_directory.stored_config(source) is None:
      raise ConfigError(f"init.from_checkpoint={init.from_checkpoint!r}: no run there yet, and "
                        "the model's architecture comes from it (init.model=\"source\"): "
                        "import or train it first")
  return run_directory.with_source_model(config)


def describe(config: ml_collections.ConfigDict) -> str:
  config = _as_trained(config)
  model = model_config.from_config_dict(config.model)
  seq_len = config.data.seq_len
  model_lines, flops = _model_lines(model, seq_len)
  per_step = run_plan.tokens_per_step(config)
  plans = run_plan.plan(config)
  lines = [
      *model_lines,
      f"flops per token: {flops:.4g} (training, seq_len {seq_len}); "
      f"per step: {flops * per_step:.4g}",
      f"batch: {config.data.global_batch_size} x {seq_len} = {per_step} tokens per step; "
      f"parallel: {config.parallel}",
      f"plan: {len(plans)} stages, {plans[-1].end_step} steps, "
      f"{plans[-1].end_step * per_step:,} tokens",
  ]
  if config.get("schedule") is not None:
    lines.append(f"  schedule (run-wide): {_schedule_summary(config.schedule)}")
  for stage_plan, stage_config in zip(plans, config.stages):
    mixture = ", ".join(f"{source} {weight:.0%}" + (" (replay)" if source in
                                                    stage_plan.replayed_sources else "")
                        for source, weight in sorted(stage_plan.mixture.items()))
    lines.append(
        f"  stage {stage_plan.index} {stage_plan.name!r}: steps {stage_plan.start_step}-"
        f"{stage_plan.end_step}, {stage_plan.steps * per_step:,} tokens; {mixture}; "
        f"optimizer state {stage_plan.optimizer_state}")
    if stage_config.get("schedule") is not None:
      lines.append(f"    schedule: {_schedule_summary(stage_config.schedule)}")
  return "\n".join(lines)


def describe_study(study_config: ml_collections.ConfigDict, study_dir: str | None) -> str:
  """What a study trains, before it is launched: each variant's runs and the runs variants
  share, and the grid's steps, tokens and training FLOPs (each shared run counted once); with
  the study's directory, which runs are done."""
  from cpt_jax import study  # Deferred: a study pulls in the trainer.
  root = paths.resolve(study_dir) if study_dir else "STUDY_DIR"
  variants = study.plan(study_config, root)
  runs = {run.key: run for variant in variants for run in variant.runs}
  for run in runs.values():  # Later runs train their parent's model, a run of the study.
    if run.parent is None:
      _as_trained(run.config)  # Refuses a model still to be imported.
  sharing = collections.Counter(run.key for variant in variants for run in variant.runs)
  done = {key for key, run in runs.items() if study_dir and run.is_done()}
  seeds = study_config.get("num_seeds", 1)
  lines = [f"study: {len(study_config.variants)} variants x {seeds} seed{'s' * (seeds > 1)}, "
           f"baseline {study_config.baseline!r}: {len(runs)} runs, "
           f"{sum(run.end_step - run.start_step for run in runs.values()):,} steps, "
           f"{sum(run.tokens for run in runs.values()):,} tokens, "
           f"{sum(run.flops for run in runs.values()):.4g} training FLOPs (shared runs once)"
           + (f"; {len(done)} of {len(runs)} runs done in {root}" if study_dir else "")]
  for variant in variants:
    names = [run.directory[len(root) + 1:] + (f" (shared by {sharing[run.key]} variants)"
                                              if sharing[run.key] > 1 else "")
             for run in variant.runs]
    status = (f"; {sum(run.key in done for run in variant.runs)}/{len(variant.runs)} done"
              if study_dir else "")
    lines.append(f"  {variant.label}: {variant.description or 'no description'}{status}")
    lines.append(f"    {len(variant.runs)} run{'s' * (len(variant.runs) > 1)}, "
                 f"{sum(run.end_step - run.start_step for run in variant.runs):,} steps: "
                 + ", ".join(names))
  return "\n".join(lines)


def describe_memory(config: ml_collections.ConfigDict) -> str:
  """One line: the train step's bytes per device as XLA plans them here, and whether they fit
  the device (where they do not: how many rows per device would, and what to change)."""
  config = _as_trained(config)
  memory = step_memory.of_train_step(config)
  devices = f"{jax.local_devices()[0].device_kind} x {jax.local_device_count()}"
  line = f"train step memory ({config.parallel} on {devices}): {memory.describe()}"
  capacity = step_memory.device_capacity()
  if capacity is None:
    return f"{line}; the device reports no capacity (a CPU: the host's memory)"
  if memory.total <= step_memory.FITTING_SHARE * capacity:
    verdict = "fits"
  else:  # How many rows would at once, a number microbatches can split the rows into.
    asked = config.data.global_batch_size // jax.device_count()
    divisors = [rows for rows in range(1, asked + 1) if asked % rows == 0]
    rows, _ = step_memory.rows_that_fit(config, capacity, divisors)
    split = f" (optimizer.microbatches={asked // rows})" if rows else ""
    verdict = (f"does not fit: {rows} of its {asked} rows per device would at once{split}; "
               f"{step_memory.REMEDIES}")
  return (f"{line}; capacity {step_memory.in_units(capacity)} "
          f"({memory.total / capacity:.0%} of it): {verdict}")
