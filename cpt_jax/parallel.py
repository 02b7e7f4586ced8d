"""Choosing the parallel mode from the config: `pmap` data parallelism or `fsdp` sharding.

Both executors run the same pure step and offer the trainer exactly `Executor`. Checkpoints
hold plain global arrays, so a run saved in one mode restores in the other.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import ml_collections

from cpt_jax import data_parallel
from cpt_jax import sharded
from cpt_jax.config_error import ConfigError


class Executor(Protocol):
  """What the trainer uses of a parallel mode."""

  def place(self, tree: Any) -> Any:
    """Host or restored arrays -> laid out on the devices as the step expects."""

  def for_checkpoint(self, tree: Any) -> Any:
    """The state as global arrays, as Orbax saves them."""

  def train_step(self, state: Any, model_batch: dict) -> tuple[Any, dict]:
    """This process's rows of the global batch -> (new state, metrics)."""

  def eval_step(self, params: Any, model_batch: dict) -> tuple[Any, Any]:
    """-> (loss sum, token count) over the global batch."""

  def lower_train_step(self, state: Any, model_batch: dict) -> jax.stages.Lowered:
    """`train_step` lowered for a state (arrays or `jax.ShapeDtypeStruct`s) and this
    process's rows, without running it: what `step_memory` compiles."""


def check_batch_split(config: ml_collections.ConfigDict) -> None:
  """The global batch splits evenly over all devices and, under pmap, each device's rows
  into `optimizer.microbatches` (FSDP splits the global batch); else a ConfigError."""
  batch, devices = config.data.global_batch_size, jax.device_count()
  if batch % devices:
    raise ConfigError(f"data.global_batch_size={batch}: expected a multiple of the {devices} "
                      "devices")
  microbatches = config.optimizer.microbatches
  if config.parallel != "fsdp" and (batch // devices) % microbatches:
    raise ConfigError(f"optimizer.microbatches={microbatches}: must divide each device's rows "
                      f"under parallel=pmap ({batch // devices}: data.global_batch_size={batch} "
                      f"over {devices} devices)")


def state_shardings(config: ml_collections.ConfigDict, tree):
  """Where each leaf of a train-state-shaped tree lives in `config.parallel`'s mode."""
  if config.parallel == "fsdp":
    return sharded.state_shardings(sharded.make_mesh(config.fsdp_devices), tree)
  return data_parallel.state_shardings(tree)


def make_executor(config: ml_collections.ConfigDict, graphdef, optimizer,
                  schedule) -> Executor:
  if config.parallel == "fsdp":
    return sharded.Sharded(graphdef, optimizer, schedule,
                           microbatches=config.optimizer.microbatches,
                           fsdp_devices=config.fsdp_devices)
  return data_parallel.DataParallel(graphdef, optimizer, schedule,
                                    microbatches=config.optimizer.microbatches)
