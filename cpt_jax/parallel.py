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
