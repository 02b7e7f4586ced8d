"""Orbax checkpoints of a run: params, optimizer state, metadata and the data iterator.

Owns the on-disk layout (`RUN_DIR/checkpoints/<step>/{params,opt_state,metadata,data}`),
async saving, retention, and finding a restorable step. Items are separate so a new stage
(or another run) can restore params alone. Arrays are saved once, whatever the device count:
the train state is replicated, not stacked per device. Orbax commits a step atomically (it
writes to a temporary directory and renames), so a partial save is never listed; a committed
step that fails to read falls back to the previous one with a warning naming both.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

from etils import epath
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from cpt_jax import train_step as train_step_lib

ITEMS = ("params", "opt_state", "metadata", "data")


class CheckpointError(RuntimeError):
  """A save failed (disk full, unwritable directory): the previous checkpoint is intact."""


def directory(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def parse_reference(reference: str) -> tuple[str, int | None]:
  """'RUN_DIR' or 'RUN_DIR:STEP' -> (RUN_DIR, STEP or None for the latest)."""
  run_dir, separator, step = reference.rpartition(":")
  if separator and step.isdigit() and "://" not in step:
    return run_dir, int(step)
  return reference, None


class Checkpointer:

  def __init__(self, workdir: str, config: ml_collections.ConfigDict | None = None,
               read_only: bool = False):
    config = config or ml_collections.ConfigDict(
        {"keep": 3, "keep_every": 0, "async_save": False})
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep, keep_period=config.keep_every or None,
        enable_async_checkpointing=config.async_save, read_only=read_only, create=not read_only)
    self._path = directory(workdir)
    try:
      self._manager = ocp.CheckpointManager(self._path, item_names=ITEMS, options=options)
    except OSError as error:
      raise CheckpointError(f"cannot create checkpoint directory {self._path}: {error}") from None

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: train_step_lib.TrainState, metadata: dict,
           data_iterator: grain.DatasetIterator | None) -> None:
    """Starts a save; with async saving it returns once arrays are copied to the host. A step
    already saved (e.g. a preemption right after a periodic save) is left as it is."""
    if step in self.steps():
      return
    items = {"params": ocp.args.StandardSave(state.params),
             "opt_state": ocp.args.StandardSave(state.opt_state),
             "metadata": ocp.args.JsonSave(metadata)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as error:
      raise CheckpointError(f"saving step {step} to {self._path} failed: {error}; the "
                            f"previous checkpoint (step {self._previous(step)}) is intact") from None

  def _previous(self, step: int):
    earlier = [s for s in self.steps() if s < step]
    return earlier[-1] if earlier else None

  def wait(self) -> None:
    """Blocks until background writes finish; raises CheckpointError if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:
      raise CheckpointError(f"a background checkpoint write to {self._path} failed: {error}; "
                            "earlier checkpoints are intact") from None

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

  def restore_data(self, step: int, data_iterator: grain.DatasetIterator) -> None:
    """Positions `data_iterator` where it was when `step` was saved."""
    self._manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(data_iterator)))

  def latest_restorable(self) -> int | None:
    """The newest step whose metadata reads back (the cheap check for `info`-like uses)."""
    for step in sorted(self.steps(), reverse=True):
      try:
        self.read_metadata(step)
        return step
      except Exception:  # Corrupt files raise many exception types.
        continue
    return None

  def restore_latest(self, abstract_state: train_step_lib.TrainState, *,
                     with_optimizer: bool = True):
    """(step, arrays, metadata) of the newest step that restores completely; a newer one that
    fails (corrupt or truncated) is skipped with a warning naming both. None if no step."""
    failed, reason = [], ""
    for step in sorted(self.steps(), reverse=True):
      try:
        arrays, metadata = self.restore(step, abstract_state, with_optimizer=with_optimizer)
      except Exception as error:  # Corrupt files raise many exception types.
        reason = (str(error).splitlines() or [type(error).__name__])[0][:300]
        logging.warning("checkpoint step %d in %s does not restore: %s", step, self._path, reason)
        failed.append(step)
        continue
      if failed:
        print(f"warning: checkpoint step {failed[0]} in {self._path} is corrupt or truncated; "
              f"falling back to step {step}")
        self._set_aside(failed)
      return step, arrays, metadata
    if failed:
      raise CheckpointError(f"no checkpoint in {self._path} restores into this config (tried "
                            f"steps {failed}; last error: {reason})")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unrestorable steps to `checkpoints.corrupt/` (kept for inspection), so training
    can write those steps again."""
    aside = epath.Path(self._path.rstrip("/") + ".corrupt")
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      (epath.Path(self._path) / str(step)).rename(aside / str(step))
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def abstract_like(state: train_step_lib.TrainState, shardings) -> train_step_lib.TrainState:
  """Shape/dtype/sharding stand-ins for restoring into `state`'s structure; `shardings` is
  one sharding for every leaf or a tree of them (restoring re-lays arrays out to fit)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      shardings)
