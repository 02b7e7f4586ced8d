"""Data parallelism with `jax.pmap`: the pure train step over this process's local devices.

The train state stays unstacked (`in_axes=None`, `out_axes=None`): every device holds the same
arrays and a checkpoint holds one copy of each. The batch is split on its leading axis, one
slice per device; gradients and metrics are summed across devices inside the step.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import orbax.checkpoint.utils as ocp_utils
from flax import nnx

from cpt_jax import train_step as train_step_lib

AXIS_NAME = "data"


def compile_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                       microbatches: int = 1):
  """The pmapped `(state, split batch, learning_rate)` step; the incoming state's buffers are
  donated to the new state."""
  step = train_step_lib.make_train_step(graphdef, optimizer, microbatches=microbatches,
                                        axis_name=AXIS_NAME)
  return jax.pmap(step, axis_name=AXIS_NAME, in_axes=(None, 0, None), out_axes=(None, None),
                  donate_argnums=(0,))


def compile_eval_step(graphdef: nnx.GraphDef):
  step = train_step_lib.make_eval_step(graphdef, axis_name=AXIS_NAME)
  return jax.pmap(step, axis_name=AXIS_NAME, in_axes=(None, 0), out_axes=None)


def split_for_devices(batch: dict, device_count: int | None = None) -> dict:
  """(B, ...) host arrays -> (devices, B / devices, ...) for pmap's mapped axis."""
  device_count = device_count or jax.local_device_count()

  def split(x):
    x = np.asarray(x)
    if x.shape[0] % device_count:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by the {device_count} local "
                       "devices; choose data.global_batch_size as a multiple of the device count")
    return x.reshape(device_count, x.shape[0] // device_count, *x.shape[1:])

  return {name: split(batch[name]) for name in train_step_lib.MODEL_INPUTS}


def replicated_sharding() -> jax.sharding.NamedSharding:
  """Every local device holds the whole array: the layout of pmap's unstacked state."""
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), (AXIS_NAME,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def global_replicated_sharding() -> jax.sharding.NamedSharding:
  """Every device of every process holds the whole array: how checkpoints see the state.
  With one process it is `replicated_sharding()`."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (AXIS_NAME,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def host_sharding() -> jax.sharding.Sharding:
  """Where import and export hold a whole model: one copy in the host's memory (a JAX CPU
  device), which outgrows an accelerator's and is not multiplied by the device count. Where
  the host is no JAX device (JAX_PLATFORMS without cpu) or processes share the arrays, every
  device holds it."""
  if jax.process_count() == 1:
    try:
      return jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    except RuntimeError:  # No CPU backend.
      pass
  return global_replicated_sharding()


def state_shardings(tree):
  replicated = global_replicated_sharding()
  return jax.tree.map(lambda _: replicated, tree)


def _to_process_local(x, local: jax.sharding.NamedSharding):
  """A replicated global array (e.g. restored) -> the host-local array pmap takes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted((shard.data for shard in x.addressable_shards),
                    key=lambda data: list(data.devices())[0].id)
    return jax.make_array_from_single_device_arrays(x.shape, local, shards)
  return jax.device_put(x, local)


class DataParallel:
  """The trainer's view of pmap: where the state lives and how a host batch is stepped.

  The state is replicated over a one-axis mesh of this process's devices, the layout pmap
  returns for `out_axes=None`, so a restored checkpoint needs no re-layout."""

  def __init__(self, graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, *, microbatches: int = 1):
    # Takes batches already split per device (`split_for_devices`).
    self.pmapped_train_step = compile_train_step(graphdef, optimizer, microbatches=microbatches)
    self._learning_rate = train_step_lib.learning_rate_at(schedule)
    self._eval_step = compile_eval_step(graphdef)
    self._local_sharding = replicated_sharding()  # What pmap takes and returns.

  def place(self, tree):
    """Host, single-device or restored global arrays -> replicated on every local device."""
    return jax.tree.map(lambda x: _to_process_local(x, self._local_sharding), tree)

  def for_checkpoint(self, tree):
    """pmap's state is host-local; with several processes Orbax needs global arrays."""
    if jax.process_count() == 1:
      return tree
    return jax.tree.map(ocp_utils.fully_replicated_host_local_array_to_global_array, tree)

  def train_step(self, state: train_step_lib.TrainState, model_batch: dict):
    return self.pmapped_train_step(state, split_for_devices(model_batch),
                                   self._learning_rate(state.step))

  def eval_step(self, params, model_batch: dict):
    return self._eval_step(params, split_for_devices(model_batch))

  def lower_train_step(self, state, model_batch: dict) -> jax.stages.Lowered:
    """The step for a state and host batch of these shapes, lowered; nothing runs."""
    return self.pmapped_train_step.lower(state, split_for_devices(model_batch),
                                         train_step_lib.LEARNING_RATE)
