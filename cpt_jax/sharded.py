"""FSDP: the same pure train step under `jax.jit` over a device mesh, with parameters and
optimizer state sharded, for models that do not fit replicated.

The mesh has two axes: "fsdp" (parameters and Adam moments are split over it) and "data"
(the rest of the devices; parameters are replicated across it). The batch is split over both.
XLA inserts the all-gathers and reduce-scatters; the step itself is `train_step.py`'s, called
without an axis name. Batches are global arrays assembled from each process's local slice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cpt_jax import train_step as train_step_lib
from cpt_jax.config_error import ConfigError

MESH_AXES = ("data", "fsdp")


@functools.cache  # One mesh per layout: the trainer's restore and its executor share it.
def make_mesh(fsdp_devices: int = 0) -> Mesh:
  """All devices as (data, fsdp); `fsdp_devices=0` puts every device on the fsdp axis.
  Auto axis types: Flax's embedding lookups fail under jax 0.10's Explicit default."""
  devices = jax.devices()
  fsdp = fsdp_devices or len(devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ConfigError(f"fsdp_devices={fsdp_devices}: expected a divisor of the {len(devices)} "
                      "devices (0 = all)")
  grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def leaf_sharding(mesh: Mesh, leaf) -> NamedSharding:
  """Splits a leaf's largest dimension that the fsdp axis divides; replicates the others
  (scalars, and shapes no dimension of which divides)."""
  size = mesh.shape["fsdp"]
  shape = getattr(leaf, "shape", ())
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if size > 1 and shape[dim] % size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return NamedSharding(mesh, PartitionSpec(*spec))
  return NamedSharding(mesh, PartitionSpec())


def state_shardings(mesh: Mesh, tree):
  return jax.tree.map(lambda leaf: leaf_sharding(mesh, leaf), tree)


class Sharded:
  """The trainer's view of FSDP: the same interface as `data_parallel.DataParallel`."""

  def __init__(self, graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, *, microbatches: int = 1, fsdp_devices: int = 0):
    self.mesh = make_mesh(fsdp_devices)
    self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(MESH_AXES))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._step_fn = train_step_lib.make_train_step(graphdef, optimizer,
                                                   microbatches=microbatches)
    self._learning_rate = train_step_lib.learning_rate_at(schedule)
    self._eval_fn = train_step_lib.make_eval_step(graphdef)
    self._compiled_train = None
    self._compiled_eval = jax.jit(self._eval_fn, out_shardings=self._replicated)

  def place(self, tree):
    return jax.device_put(tree, state_shardings(self.mesh, tree))

  def for_checkpoint(self, tree):
    return tree  # Already global arrays.

  def _global(self, model_batch: dict) -> dict:
    """This process's rows -> one global array per input, split over (data, fsdp)."""
    return {name: jax.make_array_from_process_local_data(self._batch_sharding,
                                                         np.asarray(model_batch[name]))
            for name in train_step_lib.MODEL_INPUTS}

  def _jitted_train_step(self, state):
    if self._compiled_train is None:  # Output layout = input layout, so no step re-lays out.
      self._compiled_train = jax.jit(
          self._step_fn, donate_argnums=(0,),
          out_shardings=(state_shardings(self.mesh, state), self._replicated))
    return self._compiled_train

  def train_step(self, state: train_step_lib.TrainState, model_batch: dict):
    batch = self._global(model_batch)
    with jax.set_mesh(self.mesh):  # Traced under the mesh: kernels run per device (attention).
      return self._jitted_train_step(state)(state, batch, self._learning_rate(state.step))

  def lower_train_step(self, state, model_batch: dict) -> jax.stages.Lowered:
    """The step for a state and host batch of these shapes, lowered; nothing runs. The
    state's leaves may be abstract (`jax.ShapeDtypeStruct`): they are laid out as `place`
    lays out arrays."""
    placed = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=sharding), state, state_shardings(self.mesh, state))
    # Replicated on the mesh, as `_learning_rate` returns it: where the step counter lives.
    learning_rate = jax.ShapeDtypeStruct((), jnp.float32, sharding=self._replicated)
    with jax.set_mesh(self.mesh):
      return self._jitted_train_step(state).lower(placed, self._global(model_batch),
                                                  learning_rate)

  def eval_step(self, params, model_batch: dict):
    batch = self._global(model_batch)
    with jax.set_mesh(self.mesh):
      return self._compiled_eval(params, batch)
