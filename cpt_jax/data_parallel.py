"""Data parallelism with `jax.pmap`: the pure train step over this process's local devices.

The train state stays unstacked (`in_axes=None`, `out_axes=None`): every device holds the same
arrays and a checkpoint holds one copy of each. The batch is split on its leading axis, one
slice per device; gradients and metrics are summed across devices inside the step.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from cpt_jax import train_step as train_step_lib

AXIS_NAME = "data"


def compile_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                       schedule: optax.Schedule, *, microbatches: int = 1):
  """The pmapped step; the incoming state's buffers are donated to the new state."""
  step = train_step_lib.make_train_step(graphdef, optimizer, schedule, microbatches=microbatches,
                                        axis_name=AXIS_NAME)
  return jax.pmap(step, axis_name=AXIS_NAME, in_axes=(None, 0), out_axes=(None, None),
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
