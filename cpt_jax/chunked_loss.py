"""The output head and the cross-entropy in pieces of tokens (`model.loss_chunk_tokens`).

At once, the head's (tokens, vocab) logits and their gradient are the largest arrays of a
step for large vocabularies: 1 GiB each in float32 for one 2048-token row of Llama 3's 128k.
In pieces, a piece's logits are made, used and dropped; differentiated, each piece's
gradients are taken in the same pass (a custom VJP), so nothing is recomputed either.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cpt_jax import cross_entropy
from cpt_jax import output_head


def _pieces(chunk: int, *arrays: jax.Array) -> list[jax.Array]:
  """(N, ...) arrays as (N / chunk, chunk, ...), zero-padded: padded tokens weigh 0."""
  padding = -arrays[0].shape[0] % chunk
  return [jnp.pad(a, [(0, padding)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:])
          for a in arrays]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def loss_sum(x_NxD: jax.Array, kernel_DxV: jax.Array, targets_N: jax.Array,
             weights_N: jax.Array, chunk: int, head_dtype: str) -> jax.Array:
  """The head (its matmuls with `head_dtype` operands: output_head.py) and the weighted
  cross-entropy sum, `chunk` tokens at a time, so that no more than a piece's (chunk, V)
  logits are ever live. Differentiated, each piece's gradients are taken in the same pass
  (below): nothing is recomputed and no logits are kept."""

  def accumulate(total, piece):
    x_CxD, targets_C, weights_C = piece
    logits_CxV = output_head.matmul(x_CxD, kernel_DxV, head_dtype)
    losses_C = cross_entropy.losses(logits_CxV, targets_C)
    return total + jnp.sum(losses_C * weights_C), None

  total, _ = jax.lax.scan(accumulate, jnp.zeros((), jnp.float32),
                          _pieces(chunk, x_NxD, targets_N, weights_N))
  return total


def _loss_sum_forward(x_NxD, kernel_DxV, targets_N, weights_N, chunk, head_dtype):
  """The loss sum, with the gradients of the sum kept as residuals: (N, D) for the features,
  (D, V) for the head, (N,) for the weights, where the unchunked loss keeps (N, V) logits."""

  def accumulate(carry, piece):
    total, dkernel_DxV = carry
    x_CxD, targets_C, weights_C = piece
    logits_CxV = output_head.matmul(x_CxD, kernel_DxV, head_dtype)
    losses_C, statistics = cross_entropy.losses_and_softmax_statistics(logits_CxV, targets_C)
    dlogits_CxV = cross_entropy.logits_gradient(logits_CxV, statistics, targets_C, weights_C)
    dkernel_DxV += output_head.matmul(x_CxD.T, dlogits_CxV, head_dtype)
    carry = (total + jnp.sum(losses_C * weights_C), dkernel_DxV)
    return carry, (output_head.matmul(dlogits_CxV, kernel_DxV.T, head_dtype), losses_C)

  count = x_NxD.shape[0]
  (total, dkernel_DxV), (dx, losses) = jax.lax.scan(
      accumulate, (jnp.zeros((), jnp.float32), jnp.zeros_like(kernel_DxV)),
      _pieces(chunk, x_NxD, targets_N, weights_N))
  dx_NxD = dx.reshape(-1, x_NxD.shape[1])[:count]
  return total, (dx_NxD, dkernel_DxV, losses.reshape(-1)[:count])


def _loss_sum_backward(chunk, head_dtype, residuals, cotangent):
  del chunk, head_dtype
  dx_NxD, dkernel_DxV, losses_N = residuals
  return cotangent * dx_NxD, cotangent * dkernel_DxV, None, cotangent * losses_N


loss_sum.defvjp(_loss_sum_forward, _loss_sum_backward)
