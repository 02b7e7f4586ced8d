"""The output head's matmul: (N, D) features x (D, V) weights -> (N, V) float32 logits.

`model.head_matmul_dtype` picks its operands. "float32" (the default): float32 operands, as
exact as float32 compute gives them whatever the compute dtype. "compute": operands in the
compute dtype, products accumulated and logits returned in float32, and the logits' gradient
rounded to the compute dtype on its way back, as torch.autocast computes transformers' head
(whose logits are even bfloat16). On GPUs a bfloat16 matmul runs about twice as fast as a
float32 one (TF32), and at a 50k vocabulary the head holds a tenth of a step's FLOPs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def matmul(a: jax.Array, b: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """a @ b with `dtype` operands and float32 accumulation and result."""
  return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def logits(x_NxD: jax.Array, kernel_DxV: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """(N, V) float32 logits from `dtype` operands (module docstring)."""
  x_NxD, kernel_DxV = x_NxD.astype(jnp.float32), kernel_DxV.astype(jnp.float32)
  if jnp.dtype(dtype) == jnp.float32:
    return x_NxD @ kernel_DxV
  return _low_precision_logits(x_NxD, kernel_DxV, jnp.dtype(dtype))


# Differentiated by JAX alone, the two backward matmuls would take the float32 gradient with
# a bfloat16 operand, and run in float32: half the speed this head is for.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_logits(x_NxD, kernel_DxV, dtype):
  return matmul(x_NxD, kernel_DxV, dtype)


def _forward(x_NxD, kernel_DxV, dtype):
  # Residuals in `dtype`: half the bytes of the float32 operands.
  x_NxD, kernel_DxV = x_NxD.astype(dtype), kernel_DxV.astype(dtype)
  return matmul(x_NxD, kernel_DxV, dtype), (x_NxD, kernel_DxV)


def _backward(dtype, residuals, dlogits_NxV):
  x_NxD, kernel_DxV = residuals  # In `dtype`; the primal's operands are float32 (`logits`).
  return matmul(dlogits_NxV, kernel_DxV.T, dtype), matmul(x_NxD.T, dlogits_NxV, dtype)


_low_precision_logits.defvjp(_forward, _backward)
