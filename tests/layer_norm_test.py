"""layer_norm.LayerNorm: nnx.LayerNorm's numerics (float32 scale and bias, as under torch's
autocast), its gradients by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpt_jax import layer_norm


def _with_parameters(norm):  # Non-trivial scale and bias.
  norm.scale[...] = 1 + 0.1 * jax.random.normal(jax.random.key(1), (32,))
  norm.bias[...] = 0.1 * jax.random.normal(jax.random.key(2), (32,))
  return norm


def _ours(dtype):
  return _with_parameters(layer_norm.LayerNorm(
      32, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))


def _flax_float32():
  return _with_parameters(nnx.LayerNorm(32, epsilon=1e-5, dtype=jnp.float32,
                                        param_dtype=jnp.float32, use_fast_variance=False,
                                        rngs=nnx.Rngs(0)))


def _x(dtype):  # Rows with an offset, as a residual stream has: the variance's second pass.
  return (3 + jax.random.normal(jax.random.key(3), (2, 7, 32))).astype(dtype)


def test_float32_outputs_equal_flax_layer_norm():
  np.testing.assert_array_equal(_ours(jnp.float32)(_x(jnp.float32)),
                                _flax_float32()(_x(jnp.float32)))


def test_bfloat16_outputs_are_the_float32_norm_rounded_once():
  # nnx.LayerNorm would round the scale and bias to bfloat16 first.
  x = _x(jnp.bfloat16)
  y = _ours(jnp.bfloat16)(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, _flax_float32()(x.astype(jnp.float32)).astype(jnp.bfloat16))


def _gradients(norm, x, dy):
  graphdef, params = nnx.split(norm)

  def output_dot_dy(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x).astype(jnp.float32) * dy)
  return jax.grad(output_dot_dy, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_gradients_equal_autodiff_of_flax_layer_norm_in_float32(dtype, rtol):
  # bfloat16 values, so that a bfloat16 output's cotangent is dy itself.
  dy = jax.random.normal(jax.random.key(4), (2, 7, 32)).astype(jnp.bfloat16).astype(jnp.float32)
  x = _x(dtype)
  params, dx = _gradients(_ours(dtype), x, dy)
  expected_params, expected_dx = _gradients(_flax_float32(), x.astype(jnp.float32), dy)
  assert dx.dtype == dtype
  np.testing.assert_allclose(np.asarray(dx, np.float32), expected_dx,
                             rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(expected_dx))))
  for name in ("scale", "bias"):  # Summed over rows in float32 whatever the compute dtype.
    assert params[name][...].dtype == jnp.float32
    np.testing.assert_allclose(params[name][...], expected_params[name][...], rtol=1e-5,
                               atol=1e-5)
