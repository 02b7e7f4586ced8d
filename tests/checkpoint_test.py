"""Tests for cpt_jax/checkpoint.py."""

import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

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
                     match=r"saving step 2 .* No space left on device.*step 1\) is intact"):
    checkpointer.save(2, state, {"step": 2}, None)
  monkeypatch.undo()
  abstract = checkpoint_lib.abstract_like(state, data_parallel.replicated_sharding())
  step, arrays, _ = checkpointer.restore_latest(abstract)
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, arrays["params"], state.params)


def test_unwritable_checkpoint_directory_is_named(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(checkpoint_lib.CheckpointError, match="cannot create checkpoint directory"):
    checkpoint_lib.Checkpointer(str(blocker / "run"))


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
