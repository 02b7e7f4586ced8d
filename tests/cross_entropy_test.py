"""cross_entropy.py: optax's losses, with a gradient that has no scatter."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cpt_jax import cross_entropy


def _logits_and_labels(shape=(3, 5), vocabulary=11):
  logits_key, labels_key = jax.random.split(jax.random.key(0))
  logits = 4 * jax.random.normal(logits_key, (*shape, vocabulary), jnp.float32)
  return logits, jax.random.randint(labels_key, shape, 0, vocabulary)


def test_losses_equal_optax():
  logits, labels = _logits_and_labels()
  np.testing.assert_array_equal(
      cross_entropy.losses(logits, labels),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def test_gradient_equals_autodiff_of_optax():
  logits, labels = _logits_and_labels()
  weights = jnp.linspace(0.0, 2.0, labels.size).reshape(labels.shape)  # Zero weights too.

  def weighted_sum(loss_fn):
    return jax.grad(lambda x: jnp.sum(loss_fn(x, labels) * weights))(logits)

  np.testing.assert_allclose(
      weighted_sum(cross_entropy.losses),
      weighted_sum(optax.softmax_cross_entropy_with_integer_labels), rtol=1e-5, atol=1e-7)


def test_gradient_is_elementwise_where_autodiff_scatters():
  logits, labels = _logits_and_labels()

  def gradient_program(loss_fn):
    return jax.jit(jax.grad(lambda x: jnp.sum(loss_fn(x, labels)))).lower(logits).as_text()

  assert "scatter" in gradient_program(optax.softmax_cross_entropy_with_integer_labels)
  assert "scatter" not in gradient_program(cross_entropy.losses)
