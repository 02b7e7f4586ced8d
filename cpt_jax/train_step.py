"""The pure training step `(state, batch) -> (state, metrics)` and the state it updates.

One function serves every parallel mode: under `jax.pmap` it is given the mapped axis name
and reduces across devices itself; under `jax.jit` over a mesh (FSDP) it gets no axis name
and XLA inserts the collectives. Side effects (devices, logging, I/O) live elsewhere.

A batch is a dict of (B, T) arrays: `inputs`, `targets`, `positions`, `segment_ids` (ints)
and `loss_mask` (1 where `targets` is a real next token of the same document).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cpt_jax import chunked_loss
from cpt_jax import cross_entropy
from cpt_jax.model import Transformer
from cpt_jax.model_config import ModelConfig

MODEL_INPUTS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")
LEARNING_RATE = jax.ShapeDtypeStruct((), jnp.float32)  # The step's third argument.
# A tree's l2 norm: optax >= 0.2.5 calls it tree_norm and deprecates its older names (0.2.4,
# the floor, has only tree_l2_norm).
_tree_norm = getattr(optax.tree_utils, "tree_norm", None) or optax.tree_utils.tree_l2_norm


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far; the schedule's input.
  params: nnx.State  # float32 model parameters.
  opt_state: optax.OptState  # Optimizer moments (and clipping/decay state).


def init_state(config: ModelConfig, optimizer: optax.GradientTransformation,
               seed: int) -> tuple[nnx.GraphDef, TrainState]:
  """A fresh model's graph definition and its initial training state."""
  model = Transformer(config, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params))
  return graphdef, state


def abstract_state(config: ModelConfig, optimizer: optax.GradientTransformation
                   ) -> tuple[nnx.GraphDef, TrainState]:
  """`init_state`'s graph definition and the shapes and dtypes of its state, with no
  parameter allocated: what compiling the step for a model too large for this host needs."""
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                     opt_state=jax.eval_shape(optimizer.init, params))
  return graphdef, state


def loss_sums(graphdef: nnx.GraphDef, params: nnx.State,
              batch: dict) -> tuple[jax.Array, jax.Array]:
  """(sum of masked next-token cross-entropies, number of masked-in tokens)."""
  model = nnx.merge(graphdef, params)
  weights_BxT = batch["loss_mask"].astype(jnp.float32)
  chunk = model.config.loss_chunk_tokens
  if chunk:
    x_BxTxD = model.features(batch["inputs"], batch["positions"], batch["segment_ids"])
    x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
    return (chunked_loss.loss_sum(x_NxD, model.head_kernel(), batch["targets"].reshape(-1),
                                  weights_BxT.reshape(-1), chunk, model.config.head_dtype),
            jnp.sum(weights_BxT))
  logits_BxTxV = model(batch["inputs"], batch["positions"], batch["segment_ids"])
  losses_BxT = cross_entropy.losses(logits_BxTxV, batch["targets"])
  return jnp.sum(losses_BxT * weights_BxT), jnp.sum(weights_BxT)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                    microbatches: int = 1, axis_name: str | None = None
                    ) -> Callable[[TrainState, dict, jax.Array], Any]:
  """Builds the pure step `(state, batch, learning_rate) -> (state, metrics)`.

  The learning rate is an argument rather than a schedule traced into the step, so one
  compiled program serves every schedule: runs and study variants that differ only in their
  schedule or stage lengths share it through XLA's compilation cache.

  The loss is the mean over every masked-in token of the global batch: each device (and each
  microbatch) contributes its token sum divided by the global token count, and those pieces
  are summed, so padding never skews the average."""

  def reduce(x):
    return jax.lax.psum(x, axis_name) if axis_name else x

  def grads_of(params, batch, token_count):
    def scaled_loss(p):
      loss_sum, _ = loss_sums(graphdef, p, batch)
      return loss_sum / token_count
    return jax.value_and_grad(scaled_loss)(params)

  def train_step(state: TrainState, batch: dict, learning_rate: jax.Array):
    batch = {name: batch[name] for name in MODEL_INPUTS}
    token_count = jnp.maximum(reduce(jnp.sum(batch["loss_mask"].astype(jnp.float32))), 1.0)
    if microbatches == 1:
      loss, grads = grads_of(state.params, batch, token_count)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:]), batch)

      def accumulate(carry, microbatch):
        loss, grads = grads_of(state.params, microbatch, token_count)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro)
    loss, grads = reduce(loss), reduce(grads)

    learning_rate = jnp.asarray(learning_rate, jnp.float32)
    direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda d: -learning_rate * d, direction)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    # The l2 norms show the re-warming spike at a stage boundary (Ibrahim et al., fig. 3).
    metrics = {"loss": loss, "grad_norm": _tree_norm(grads),
               "update_norm": _tree_norm(updates), "param_norm": _tree_norm(params),
               "learning_rate": learning_rate, "tokens": token_count}
    return new_state, metrics

  return train_step


def learning_rate_at(schedule: optax.Schedule) -> Callable[[jax.Array], jax.Array]:
  """The schedule compiled on its own: the state's step -> the float32 learning rate the
  step takes. It runs where the step counter lives, so no step waits on the host."""
  return jax.jit(lambda step: jnp.asarray(schedule(step), jnp.float32))


def with_schedule(train_step: Callable, schedule: optax.Schedule) -> Callable:
  """`(state, batch) -> (state, metrics)` with the learning rate at `state.step`: the step
  and its schedule as one function (tests, notebooks)."""
  return lambda state, batch: train_step(state, batch, schedule(state.step))


def make_eval_step(graphdef: nnx.GraphDef, *, axis_name: str | None = None):
  """Pure evaluation: (params, batch) -> (loss sum, token count), reduced over `axis_name`."""

  def eval_step(params, batch):
    loss_sum, count = loss_sums(graphdef, params, batch)
    if axis_name:
      loss_sum, count = jax.lax.psum((loss_sum, count), axis_name)
    return loss_sum, count

  return eval_step
