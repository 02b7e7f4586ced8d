"""Choosing the parallel mode from the config: `pmap` data parallelism or `fsdp` sharding.

Both executors offer the same interface to the trainer: `place(tree)`, `state_shardings(tree)`,
`for_checkpoint(tree)`, `train_step(state, model_batch)` and `eval_step(params, model_batch)`
over the same pure step.
Checkpoints hold plain global arrays, so a run saved in one mode restores in the other.
"""

from __future__ import annotations

import ml_collections

from cpt_jax import data_parallel
from cpt_jax import sharded


def state_shardings(config: ml_collections.ConfigDict, tree):
  """Where each leaf of a train-state-shaped tree lives in `config.parallel`'s mode."""
  if config.parallel == "fsdp":
    return sharded.state_shardings(sharded.make_mesh(config.fsdp_devices), tree)
  return data_parallel.state_shardings(tree)


def make_executor(config: ml_collections.ConfigDict, graphdef, optimizer, schedule):
  if config.parallel == "fsdp":
    return sharded.Sharded(graphdef, optimizer, schedule,
                           microbatches=config.optimizer.microbatches,
                           fsdp_devices=config.fsdp_devices)
  return data_parallel.DataParallel(graphdef, optimizer, schedule,
                                    microbatches=config.optimizer.microbatches)
