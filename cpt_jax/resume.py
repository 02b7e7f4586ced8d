"""Where a run starts, decided once: its own checkpoint, another run's, or nothing.

The order matters:
1. This run's newest checkpoint that restores completely: a resume. Arrays, step and step
   offset come from it; the data iterator restores its saved state, or, on another process
   count (Grain keeps one state per process), seeks to the batch index, since the global
   batches do not depend on the count.
2. Else `init.from_checkpoint`: another run's parameters (its Adam moments only with
   `init.optimizer_state="keep"`), its step counter with `init.step="continue"`, and its exact
   data stream with `init.data="continue"` (on any process count). Either way the run learns
   how far the source served each source's stream, so a `replay_position="continue"` stage
   goes on from there, as it would have in one run.
3. Else a fresh start at step 0 with initialized parameters.
The trainer reads the returned `StartPoint`; `position_data` places a stage's iterator.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import grain

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import input_pipeline
from cpt_jax import run_directory
from cpt_jax import run_plan
from cpt_jax.config_error import ConfigError

DataStart = Literal["fresh", "restore", "seek", "continue_source", "seek_source"]
# Checkpoint metadata: where the run's streams began (`StartPoint.positions_before_run`).
POSITIONS_KEY = "stream_positions_before_run"
# Checkpoint metadata: the sources its model had learnt before its run began
# (`StartPoint.learnt_before_run`); null where that is unknown.
LEARNT_KEY = "sources_learnt_before_run"


@dataclasses.dataclass(frozen=True)
class StartPoint:
  arrays: dict | None  # {"params", "opt_state"} to start from; None: freshly initialized.
  step: int  # The global step the run continues from.
  step_offset: int  # The global step at which this run's first stage begins.
  metadata: dict | None  # The restored checkpoint's metadata (this run's or the source's).
  source: str  # Where the arrays come from: "resume", "init" or "fresh".
  data: DataStart  # How the iterator of the stage holding `step` is positioned.
  data_checkpointer: checkpoint_lib.Checkpointer | None = None  # Holds the iterator state...
  data_step: int | None = None  # ...of this step ("restore", "continue_source").
  # The furthest row of each source served before this run's first stage, by the run it
  # started from: where a replay_position="continue" source picks up. {} for a fresh run.
  positions_before_run: dict[str, int] = dataclasses.field(default_factory=dict)
  source_batch: int | None = None  # "seek_source": the batch of the source's stage to go to.
  # The sources the model had been trained on before this run's first stage, by the runs it
  # descends from: what its stages can forget. None: unknown, where a model in its past was
  # trained outside cpt-jax (an import).
  learnt_before_run: frozenset[str] | None = frozenset()


def data_start(source: str, saved_process_count: int | None, process_count: int,
               continue_source_data: bool) -> DataStart:
  """The rule for the data position, apart from any I/O. Grain keeps one iterator state per
  process, so on another process count the iterator seeks to the batch index instead (the
  global batches do not depend on the count)."""
  same_processes = saved_process_count == process_count
  if source == "resume":
    return "restore" if same_processes else "seek"
  if source == "init" and continue_source_data:
    return "continue_source" if same_processes else "seek_source"
  return "fresh"


# What decides a stage's batches besides its mixture (input_pipeline, packing).
_STREAM_FIELDS = ("seq_len", "global_batch_size", "shuffle_seed")


def _check_continues(config, source, stage: run_plan.StagePlan) -> None:
  """init.data="continue" trains on the source stage's batches: this run's first stage must
  be that stage's data, or the stream would go on silently as another one."""
  first = run_plan.plan(config)[0]
  changed = [f"data.{field} {source.data.get(field)!r} -> {config.data.get(field)!r}"
             for field in _STREAM_FIELDS if source.data.get(field) != config.data.get(field)]
  for field in ("mixture", "replay_position"):
    if getattr(first, field) != getattr(stage, field):
      changed.append(f"{field} {getattr(stage, field)!r} -> {getattr(first, field)!r}")
  if changed:
    raise ConfigError(f"init.data='continue' goes on with the data stream of the source's "
                      f"stage {stage.name!r}, but stages[0] differs from it: "
                      f"{'; '.join(changed)}; use init.data=fresh to train on other data")


def _source_streams(config, metadata: dict) -> tuple[dict[str, int], int | None]:
  """Where a run started from another run's checkpoint (`metadata`: that checkpoint's) finds
  its data: (positions_before_run, source_batch). Continuing the source's data stream, its
  first stage is the source's stage, so it begins where that stage began and goes on from the
  stage's batch at the checkpoint; otherwise its stages come after everything served."""
  if "imported_from" in metadata:  # Trained elsewhere: no stream of cpt_jax's to continue.
    return {}, None
  source = run_directory.experiment_from_json(metadata["config"])
  plans = run_plan.plan(source, start_step=metadata["step_offset"])
  before = metadata.get(POSITIONS_KEY, {})
  if config.init.data == "continue":
    stage = plans[metadata["stage"]]
    _check_continues(config, source, stage)
    return (input_pipeline.stream_positions(source.data, plans, stage.index, before),
            metadata["step"] - stage.start_step)
  return input_pipeline.stream_positions_at(source.data, plans, metadata["step"], before), None


def _learnt_before(metadata: dict) -> frozenset[str] | None:
  """The sources the model of a checkpoint (`metadata`) had learnt before its run began."""
  if "imported_from" in metadata:  # Trained elsewhere, on data not known here.
    return None
  if LEARNT_KEY in metadata:
    learnt = metadata[LEARNT_KEY]
    return None if learnt is None else frozenset(learnt)
  # A checkpoint written before the key: known for a run that started fresh.
  return None if metadata["config"]["init"]["from_checkpoint"] else frozenset()


def learnt_before(run_dir: str) -> frozenset[str] | None:
  """The sources the model of a run with checkpoints had learnt before the run began."""
  checkpointer = checkpoint_lib.Checkpointer(run_dir, read_only=True)
  return _learnt_before(checkpointer.read_metadata(checkpointer.steps()[-1]))


def _learnt_at(metadata: dict) -> frozenset[str] | None:
  """The sources the model of a checkpoint (`metadata`) has been trained on: those before
  its run, and those of the run's stages begun by the checkpoint's step."""
  before = _learnt_before(metadata)
  if before is None:
    return None
  source = run_directory.experiment_from_json(metadata["config"])
  plans = run_plan.plan(source, start_step=metadata["step_offset"])
  return run_plan.sources_learnt(before, [stage for stage in plans
                                          if stage.start_step < metadata["step"]])


def _check_imported(source: checkpoint_lib.Checkpointer, step: int | None, config) -> None:
  """An imported Hugging Face model has no optimizer state or data position to continue."""
  step = source.latest_restorable() if step is None else step
  if step is None or "imported_from" not in source.read_metadata(step):
    return
  if config.init.optimizer_state == "keep" or config.init.data == "continue":
    raise ConfigError(f"init.from_checkpoint={config.init.from_checkpoint!r} was imported "
                      "from Hugging Face: it has no optimizer state or data position; use "
                      "init.optimizer_state=reset and init.data=fresh")


def _restore_init(config, abstract, optimizer):
  """(step, arrays, metadata, checkpointer) of `init.from_checkpoint`."""
  reference = config.init.from_checkpoint
  run_dir, step = checkpoint_lib.parse_reference(reference)
  source = checkpoint_lib.Checkpointer(run_dir, read_only=True)
  if step is not None and step not in source.steps():
    raise ConfigError(f"init.from_checkpoint={reference!r}: no step {step} there "
                      f"(steps: {source.steps()})")
  _check_imported(source, step, config)
  keep = config.init.optimizer_state == "keep"
  if step is None:  # Skips corrupt steps; names the error if none restores.
    restored = source.restore_latest(abstract, with_optimizer=keep,
                                     with_data=config.init.data == "continue")
  else:
    try:
      restored = (step, *source.restore(step, abstract, with_optimizer=keep))
    except (ValueError, KeyError, TypeError) as error:
      raise ConfigError(f"{reference}: the checkpoint does not fit this config's model or "
                        f"optimizer ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]})") from None
  if restored is None:
    raise ConfigError(f"init.from_checkpoint={reference!r}: no checkpoint")
  step, arrays, metadata = restored
  if not keep:
    arrays["opt_state"] = optimizer.init(arrays["params"])
  return step, arrays, metadata, source


def start_point(config, checkpointer: checkpoint_lib.Checkpointer, abstract, optimizer,
                process_count: int) -> StartPoint:
  """Decides and restores where the run starts (see the module docstring for the order)."""
  restored = checkpointer.restore_latest(abstract, with_data=True)
  if restored is not None:
    step, arrays, metadata = restored
    return StartPoint(arrays, metadata["step"], metadata["step_offset"], metadata, "resume",
                      data_start("resume", metadata["process_count"], process_count, False),
                      checkpointer, step, metadata.get(POSITIONS_KEY, {}),
                      learnt_before_run=_learnt_before(metadata))
  if config.init.from_checkpoint:
    step, arrays, metadata, source = _restore_init(config, abstract, optimizer)
    offset = metadata["step"] if config.init.step == "continue" else 0
    continue_data = config.init.data == "continue"
    data = data_start("init", metadata.get("process_count"), process_count, continue_data)
    return StartPoint(arrays, offset, offset, metadata, "init", data, source, step,
                      *_source_streams(config, metadata), learnt_before_run=_learnt_at(metadata))
  return StartPoint(None, 0, 0, None, "fresh", "fresh")


def position_data(start: StartPoint, stage_start_step: int, step: int,
                  iterator: grain.DatasetIterator) -> None:
  """Places a stage's fresh iterator for global `step`. Only the stage the run started in
  uses the start point, and a resume at a stage's first step begins that stage afresh (its
  transition runs, as in an uninterrupted run)."""
  if step != start.step:
    return
  if start.data == "continue_source":
    start.data_checkpointer.restore_data(start.data_step, iterator)
  elif start.data == "seek_source":
    input_pipeline.skip_to_batch(iterator, start.source_batch)
  elif step == stage_start_step:
    return
  elif start.data == "restore":
    start.data_checkpointer.restore_data(start.data_step, iterator)
  elif start.data == "seek":
    input_pipeline.skip_to_batch(iterator, step - stage_start_step)
