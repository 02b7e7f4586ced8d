"""Orbax checkpoints of a run: params, optimizer state, metadata and the data iterator.

Owns the on-disk layout (`RUN_DIR/checkpoints/<step>/{params,opt_state,metadata,data}`),
async saving, retention, and finding a restorable step. Items are separate so a new stage
(or another run) can restore params alone. Arrays are saved once, whatever the device count:
the train state is replicated, not stacked per device. Orbax commits a step atomically (it
writes to a temporary directory and renames), so a partial save is never listed; a committed
step that fails to read falls back to the previous one with a warning naming both.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import sys

from etils import epath
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from cpt_jax import data_parallel
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import train_step as train_step_lib
from cpt_jax.config_error import ConfigError

_log = logging.getLogger(__name__)

ITEMS = ("params", "opt_state", "metadata", "data")


def default_config() -> ml_collections.ConfigDict:
  """The `config.checkpoint` block."""
  config = ml_collections.ConfigDict()
  config.every = 200  # Save every this many steps (and at each stage's end).
  config.keep = 3  # Keep the latest this many checkpoints...
  config.keep_every = 0  # ...plus every multiple of this step forever (0 = none).
  config.async_save = True  # Write in the background; the loop waits only for D2H.
  return config


class CheckpointError(RuntimeError):
  """A save failed (disk full, unwritable directory): the previous checkpoint is intact."""


def _drop_unraisable(unraisable) -> None:
  """`sys.unraisablehook` while a possibly corrupt step is probed. A module-level function,
  never freed: a TensorStore thread may still be running it (reporting "Event loop is
  closed" from a failed read's leftover callback) when the previous hook is put back. A
  per-probe lambda was freed mid-call then: a segmentation fault (a core dump, Python
  3.13.0)."""
  del unraisable


@contextlib.contextmanager
def _quiet_logs():
  """Silences Orbax's and TensorStore's warnings while probing a possibly corrupt step, and
  the asyncio leftovers of a failed read ("Event loop is closed", printed when collected)."""
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  levels = [logger.level for logger in loggers]
  unraisable_hook = sys.unraisablehook
  for logger in loggers:
    logger.setLevel(logging.ERROR + 1)
  sys.unraisablehook = _drop_unraisable
  try:
    yield
  except BaseException:
    gc.collect()  # Collects a failed read's leftovers while their messages are silenced.
    raise
  finally:
    sys.unraisablehook = unraisable_hook
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def directory(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def parse_reference(reference: str) -> tuple[str, int | None]:
  """'RUN_DIR' or 'RUN_DIR:STEP' -> (RUN_DIR, STEP or None for the latest)."""
  run_dir, separator, step = reference.rpartition(":")
  if separator and step.isdigit() and "://" not in step:
    return run_dir, int(step)
  return reference, None


@functools.cache  # Once per process.
def _write_replicated_arrays_whole() -> None:
  """With one process, Orbax's jax.Array handler writes each array whole instead of as one
  slice per device. Replica-parallel writing spreads a replicated array's bytes over the
  processes that hold it; within one process it only cuts the same write into per-device
  pieces, each an eager slice (0.4 s of a tiny model's 0.6 s save with 8 devices). Orbax reads
  the handler from its global registry, so this sets it there; several processes keep the
  default."""
  if jax.process_count() == 1:
    default = ocp.type_handlers.get_type_handler(jax.Array)
    # Orbax's default handler keeps an array metadata store (it records random-key arrays).
    store = getattr(default, "_array_metadata_store", None)
    with _quiet_logs():  # Orbax warns about every override.
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                                    array_metadata_store=store), override=True)


class Checkpointer:

  def __init__(self, workdir: str, config: ml_collections.ConfigDict | None = None,
               read_only: bool = False):
    _write_replicated_arrays_whole()
    config = config or default_config()
    self._path = directory(workdir)
    self._read_only = read_only
    self._in_flight = None  # The step an async save is writing, until it is checked.
    with _quiet_logs():  # Read-only options warn about the options they turn off.
      options = ocp.CheckpointManagerOptions(
          max_to_keep=config.keep, keep_period=config.keep_every or None,
          enable_async_checkpointing=config.async_save, read_only=read_only,
          create=False)  # Made by the first save: a run refused at start-up writes nothing.
      self._manager = ocp.CheckpointManager(self._path, item_names=ITEMS, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: train_step_lib.TrainState, metadata: dict,
           data_iterator: grain.DatasetIterator | None) -> None:
    """Starts a save; with async saving it returns once arrays are copied to the host. A step
    already saved (e.g. a preemption right after a periodic save) is left as it is. The
    previous background save is finished (and its failure reported) first."""
    self.wait()
    if step in self.steps():
      return
    items = {"params": ocp.args.StandardSave(state.params),
             "opt_state": ocp.args.StandardSave(state.opt_state),
             "metadata": ocp.args.JsonSave(metadata)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      epath.Path(self._path).mkdir(parents=True, exist_ok=True)
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as error:
      raise CheckpointError(f"saving step {step} to {self._path} failed: "
                            f"{_first_line(error)}; {self._on_disk()}") from None
    self._in_flight = step

  def save_params(self, step: int, params, metadata: dict) -> None:
    """A step with parameters and metadata only (an imported model: no optimizer state, no
    data position), written synchronously."""
    epath.Path(self._path).mkdir(parents=True, exist_ok=True)
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(metadata)), force=True)
    self.wait()

  def _on_disk(self) -> str:
    """What really is on disk, for messages after a failed save."""
    self._manager.reload()
    steps = self.steps()
    return f"the last checkpoint on disk is step {steps[-1]}" if steps else "no checkpoint yet"

  def check_background_save(self) -> None:
    """Raises CheckpointError if the background save has failed; never blocks. Called at
    every step boundary, so a lost save stops the run within a step, not a save later."""
    if self._in_flight is not None and not self._manager.is_saving_in_progress():
      self.wait()  # Finished: returns at once, raising if it failed.

  def wait(self) -> None:
    """Blocks until background writes finish; raises CheckpointError naming the failed step."""
    step, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as error:
      raise CheckpointError(f"saving step {step} to {self._path} failed in the background: "
                            f"{_first_line(error)}; {self._on_disk()}") from None

  def read_metadata(self, step: int) -> dict:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored["metadata"])

  def restore(self, step: int, abstract_state: train_step_lib.TrainState, *,
              with_optimizer: bool = True) -> tuple[dict, dict]:
    """Restores the arrays of `step`: ({params, opt_state}, metadata). The data iterator has
    its own call, `restore_data`, made once the stage's pipeline exists."""
    items = {"params": ocp.args.StandardRestore(abstract_state.params),
             "metadata": ocp.args.JsonRestore()}
    if with_optimizer:
      items["opt_state"] = ocp.args.StandardRestore(abstract_state.opt_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    arrays = {key: restored[key] for key in ("params", "opt_state") if key in items}
    return arrays, dict(restored["metadata"])

  def existing_step(self, step: int | None, where: str) -> int:
    """`step`, or the newest restorable one if None; one line naming `where` if none."""
    if step is None:
      step = self.latest_restorable()
    if step is None or step not in self.steps():
      raise ConfigError(f"{where}: no such checkpoint (steps: {self.steps()})")
    return step

  def restore_params(self, step: int, model: model_config.ModelConfig, sharding=None):
    """The parameters of `step` alone (exporting, scoring), with `sharding` (default:
    replicated on the local devices)."""
    abstract = abstract_like(model_lib.abstract_params(model),
                             sharding or data_parallel.replicated_sharding())
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))
    return restored["params"]

  def restore_data(self, step: int, data_iterator: grain.DatasetIterator) -> None:
    """Positions `data_iterator` where it was when `step` was saved."""
    self._manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(data_iterator)))

  def latest_restorable(self) -> int | None:
    """The newest step whose metadata reads back (the cheap check for `info`-like uses)."""
    for step in sorted(self.steps(), reverse=True):
      try:
        with _quiet_logs():
          self.read_metadata(step)
        return step
      except Exception:  # Corrupt files raise many exception types.
        continue
    return None

  def restore_latest(self, abstract_state: train_step_lib.TrainState, *,
                     with_optimizer: bool = True, with_data: bool = False):
    """(step, arrays, metadata) of the newest step that restores completely (with `with_data`,
    its data-iterator state too); a newer one that fails (corrupt or truncated) is skipped
    with one warning naming both and, unless read-only, moved to `checkpoints.corrupt/`.
    None if there is no step."""
    failed, reason = [], ""
    for step in sorted(self.steps(), reverse=True):
      try:
        with _quiet_logs():  # A truncated step makes Orbax log thousands of lines.
          arrays, metadata = self.restore(step, abstract_state, with_optimizer=with_optimizer)
          if with_data:
            self._check_data_state(step, metadata)
      except Exception as error:  # Corrupt files raise many exception types.
        reason = _first_line(error)
        failed.append(step)
        continue
      if failed:
        _log.warning("checkpoint step %d in %s is corrupt or truncated (%s); falling back to "
                     "step %d", failed[0], self._path, reason, step)
        if not self._read_only:  # A run another run starts from is only read.
          self._set_aside(failed)
      return step, arrays, metadata
    if failed:
      raise CheckpointError(f"no checkpoint in {self._path} restores into this config (tried "
                            f"steps {failed}; last error: {reason})")
    return None

  def _check_data_state(self, step: int, metadata: dict) -> None:
    """Reads this process's data-iterator state of `step`, as `restore_data` will. Runs on
    another process count do not use it (they seek by batch index)."""
    if metadata.get("process_count") != jax.process_count():
      return
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    path = epath.Path(self._path) / str(step) / "data" / name
    try:
      state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
      raise ValueError(f"{path}: unreadable data-iterator state ({_first_line(error)})") from None
    if not isinstance(state, dict) or not {"batch", "streams"} <= set(state):
      raise ValueError(f"{path}: not a data-iterator state")  # Corrupt: the caller falls back.

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unrestorable steps to `checkpoints.corrupt/` (kept for inspection), so training
    can write those steps again."""
    aside = epath.Path(self._path.rstrip("/") + ".corrupt")
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = aside / str(step)
      if target.exists():  # Set aside before: keep the newer copy.
        target.rmtree()
      (epath.Path(self._path) / str(step)).rename(target)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree, shardings):
  """Shape/dtype/sharding stand-ins for restoring into `tree`'s structure (a train state, its
  params, or a checkpoint's array metadata: any leaves with a shape and dtype); `shardings` is
  one sharding for every leaf or a tree of them (restoring re-lays arrays out to fit)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)
