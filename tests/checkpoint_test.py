"""Tests for cpt_jax/checkpoint.py."""

import dataclasses
import gc
import os
import sys
import time
import weakref

import grain
import ml_collections

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import run_helpers as helpers
from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import data_parallel
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import train_step as train_step_lib

CONFIG = dataclasses.replace(model_config.preset("tiny"), vocab_size=512, num_layers=2)


def _replicated_state():
  optimizer = optimizer_lib.make(optimizer_lib.default_config())
  _, state = train_step_lib.init_state(CONFIG, optimizer, seed=0)
  return jax.device_put(state, data_parallel.replicated_sharding())


class _CountingIterator(grain.DatasetIterator):

  def __init__(self):
    super().__init__()
    self._batch = 0

  def __next__(self):
    self._batch += 1
    return self._batch

  def get_state(self):
    return {"batch": self._batch, "streams": []}

  def set_state(self, state):
    self._batch = state["batch"]


class _CountingDataset(grain.IterDataset):

  def __iter__(self):
    return _CountingIterator()


def _tree_listing(root):
  return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getmtime(os.path.join(d, f)))
                for d, _, files in os.walk(root) for f in files)


def _bytes_under(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_a_checkpoint_holds_one_copy_of_each_array(tmp_path):
  state = _replicated_state()
  assert len(state.params["embed"]["embedding"][...].sharding.device_set) == 8
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(1, state, {"step": 1}, None)
  checkpointer.wait()
  param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))
  saved = _bytes_under(os.path.join(tmp_path, "checkpoints", "1", "params"))
  assert 0.5 * param_bytes < saved < 1.5 * param_bytes  # Not 8 copies.


def test_save_and_restore_round_trip_with_metadata(tmp_path):
  state = _replicated_state()
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(7, state, {"step": 7, "stage": 0}, None)
  checkpointer.wait()
  abstract = checkpoint_lib.abstract_like(state, data_parallel.replicated_sharding())
  step, arrays, metadata = checkpointer.restore_latest(abstract)
  assert step == 7 and metadata["stage"] == 0
  jax.tree.map(np.testing.assert_array_equal, arrays["params"], state.params)
  params_only, _ = checkpointer.restore(7, abstract, with_optimizer=False)
  assert set(params_only) == {"params"}


def test_failed_save_is_named_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  state = _replicated_state()
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(1, state, {"step": 1}, None)
  checkpointer.wait()

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r"saving step 2 .* No space left on device; the last checkpoint on "
                           r"disk is step 1$"):
    checkpointer.save(2, state, {"step": 2}, None)
  monkeypatch.undo()
  abstract = checkpoint_lib.abstract_like(state, data_parallel.replicated_sharding())
  step, arrays, _ = checkpointer.restore_latest(abstract)
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, arrays["params"], state.params)


def test_a_failed_background_save_is_noticed_at_the_next_step_boundary(tmp_path, monkeypatch):
  # A relative directory makes Orbax's background write fail (the trainer resolves paths).
  monkeypatch.chdir(tmp_path)
  settings = ml_collections.ConfigDict({"keep": 3, "keep_every": 0, "async_save": True})
  checkpointer = checkpoint_lib.Checkpointer("relative_run", settings)
  checkpointer.save(100, _replicated_state(), {"step": 100}, None)
  deadline = time.time() + 60
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r"saving step 100 to relative_run/checkpoints failed in the background: "
                           r".*should be absolute.*; no checkpoint yet$"):
    while time.time() < deadline:
      checkpointer.check_background_save()  # Never blocks: polled once per step.
      time.sleep(0.01)
  assert checkpointer.steps() == []


def _two_steps_the_latest_garbled(tmp_path):
  """(state, checkpointer) of a run directory with steps 1 and 2, step 2's arrays garbled."""
  state = _replicated_state()
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  for step in (1, 2):
    checkpointer.save(step, state, {"step": step}, None)
  checkpointer.wait()
  helpers.garble(tmp_path / "checkpoints" / "2" / "params")
  return state, checkpointer


def test_a_read_only_source_falls_back_without_writing(tmp_path):
  state, checkpointer = _two_steps_the_latest_garbled(tmp_path)
  before = _tree_listing(tmp_path)
  abstract = checkpoint_lib.abstract_like(state, data_parallel.replicated_sharding())
  source = checkpoint_lib.Checkpointer(str(tmp_path), read_only=True)
  step, _, _ = source.restore_latest(abstract)
  assert step == 1 and _tree_listing(tmp_path) == before  # Nothing moved or written.
  step, _, _ = checkpointer.restore_latest(abstract)  # The run itself sets the step aside.
  assert step == 1 and os.listdir(tmp_path / "checkpoints.corrupt") == ["2"]


def test_the_hook_that_silences_a_probe_outlives_it(tmp_path, monkeypatch):
  """A TensorStore thread may still be calling the `sys.unraisablehook` that silences a
  probe of a corrupt step when the probe ends; it must not be freed then (a per-probe lambda
  was, and crashed a test worker on Python 3.13.0)."""
  hooks = []
  restore = checkpoint_lib.Checkpointer.restore

  def recording_restore(self, *args, **kwargs):
    hooks.append(weakref.ref(sys.unraisablehook))
    return restore(self, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore", recording_restore)
  state, checkpointer = _two_steps_the_latest_garbled(tmp_path)
  previous = sys.unraisablehook
  abstract = checkpoint_lib.abstract_like(state, data_parallel.replicated_sharding())
  step, _, _ = checkpointer.restore_latest(abstract)
  gc.collect()
  assert step == 1 and len(hooks) == 2  # Step 2 failed, step 1 restored: two probes.
  assert all(hook() is not None and hook() is not previous for hook in hooks)
  assert sys.unraisablehook is previous


def test_a_garbled_data_iterator_state_falls_back_to_the_previous_step(tmp_path):
  state = _replicated_state()
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  iterator = iter(_CountingDataset())
  for step in (1, 2):
    next(iterator)
    checkpointer.save(step, state, {"step": step, "process_count": 1}, iterator)
  checkpointer.wait()
  data_file = tmp_path / "checkpoints" / "2" / "data" / "process_0-of-1.json"
  data_file.write_text("{garbled")
  abstract = checkpoint_lib.abstract_like(state, data_parallel.replicated_sharding())
  step, _, _ = checkpointer.restore_latest(abstract, with_data=True)
  assert step == 1


def test_unwritable_checkpoint_directory_is_named(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  checkpointer = checkpoint_lib.Checkpointer(str(blocker / "run"))
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r"saving step 1 to .*a_file/run/checkpoints failed: .*; "
                           r"no checkpoint yet"):
    checkpointer.save(1, _replicated_state(), {"step": 1}, None)


def test_a_step_already_saved_is_not_saved_again(tmp_path):
  state = _replicated_state()
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(3, state, {"step": 3}, None)
  checkpointer.save(3, state, {"step": 3, "again": True}, None)
  checkpointer.wait()
  assert "again" not in checkpointer.read_metadata(3)


@pytest.mark.parametrize("reference, expected", [
    ("runs/a", ("runs/a", None)), ("runs/a:120", ("runs/a", 120)),
    ("gs://bucket/run", ("gs://bucket/run", None)), ("gs://bucket/run:5", ("gs://bucket/run", 5)),
])
def test_checkpoint_references(reference, expected):
  assert checkpoint_lib.parse_reference(reference) == expected


def test_keeps_the_latest_steps_plus_every_multiple_of_keep_every(tmp_path):
  import ml_collections
  state = _replicated_state()
  settings = ml_collections.ConfigDict({"keep": 2, "keep_every": 10, "async_save": True})
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), settings)
  for step in range(5, 55, 5):
    checkpointer.save(step, state, {"step": step}, None)
  checkpointer.wait()
  assert checkpointer.steps() == [10, 20, 30, 40, 45, 50]
