"""Tests for cpt_jax/sharded.py (FSDP) and cpt_jax/parallel.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cpt_jax import attention
from cpt_jax import data_parallel
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import sharded
from cpt_jax import train_step as train_step_lib

CONFIG = dataclasses.replace(model_config.preset("tiny"), vocab_size=128, num_layers=2,
                             model_dim=64, num_heads=4, num_kv_heads=4, mlp_dim=128)
LEARNING_RATE = 1e-3


def _batch(seed, batch_size=16, length=16):
  rng = np.random.default_rng(seed)
  return {"inputs": rng.integers(0, 128, (batch_size, length)).astype(np.int32),
          "targets": rng.integers(0, 128, (batch_size, length)).astype(np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (batch_size, 1)),
          "segment_ids": np.ones((batch_size, length), np.int32),
          "loss_mask": (rng.random((batch_size, length)) < 0.8).astype(np.float32)}


def _setup():
  optimizer = optimizer_lib.make(optimizer_lib.default_config())
  graphdef, state = train_step_lib.init_state(CONFIG, optimizer, seed=0)
  return graphdef, state, optimizer, optax.constant_schedule(LEARNING_RATE)


@pytest.mark.parametrize("fsdp_devices,loss_chunk_tokens", [(8, 0), (4, 0), (8, 48)])
def test_fsdp_steps_equal_pmap_steps(fsdp_devices, loss_chunk_tokens):
  """With loss_chunk_tokens, FSDP computes the loss in pieces (the head's kernel sharded)."""
  graphdef, state, optimizer, schedule = _setup()
  fsdp_graphdef, _ = train_step_lib.init_state(
      dataclasses.replace(CONFIG, loss_chunk_tokens=loss_chunk_tokens), optimizer, seed=0)
  pmap = data_parallel.DataParallel(graphdef, optimizer, schedule)
  fsdp = sharded.Sharded(fsdp_graphdef, optimizer, schedule, fsdp_devices=fsdp_devices)
  # device_put may alias its input: each mode gets its own copy, since steps donate buffers.
  pmap_state = pmap.place(jax.tree.map(jnp.copy, state))
  fsdp_state = fsdp.place(jax.tree.map(jnp.copy, state))
  for seed in range(4):
    batch = _batch(seed)
    pmap_state, pmap_metrics = pmap.train_step(pmap_state, batch)
    fsdp_state, fsdp_metrics = fsdp.train_step(fsdp_state, batch)
    for name in ("loss", "grad_norm", "update_norm", "param_norm"):
      np.testing.assert_allclose(fsdp_metrics[name], pmap_metrics[name], rtol=1e-5, err_msg=name)
  differences = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), fsdp_state.params,
                             pmap_state.params)
  # In units of the learning rate: Adam moves a parameter by about lr a step, but one whose
  # gradient is near its eps (1e-8) by a fraction of lr that the gradient's last bits decide, and
  # the two layouts sum gradients in different orders. Here one MLP weight moves 0.5 lr in the
  # first step and differs by 2.9e-6 on jax 0.10.2, 1.2e-5 on jax 0.12; a wrong update, ~lr.
  assert max(jax.tree.leaves(differences)) < 0.05 * LEARNING_RATE
  loss_sum, count = fsdp.eval_step(fsdp_state.params, _batch(9))
  pmap_sum, pmap_count = pmap.eval_step(pmap_state.params, _batch(9))
  np.testing.assert_allclose(float(loss_sum) / float(count), float(pmap_sum) / float(pmap_count),
                             rtol=1e-5)


def test_fsdp_with_the_splash_kernel_equals_pmap_with_xla_attention(monkeypatch):
  """The TPU kernel (Pallas's interpreter) inside the FSDP step, on each device's rows."""
  monkeypatch.setattr(attention, "_SPLASH_INTERPRET", True)
  rows_per_call = []
  splash = attention._splash

  def counting_splash(q, *rest):
    rows_per_call.append(q.shape[0])
    return splash(q, *rest)

  monkeypatch.setattr(attention, "_splash", counting_splash)
  optimizer = optimizer_lib.make(optimizer_lib.default_config())
  steps = {}
  for kernel in ("splash", "xla"):
    graphdef, state = train_step_lib.init_state(dataclasses.replace(CONFIG, attention=kernel),
                                                optimizer, seed=0)
    mode = sharded.Sharded if kernel == "splash" else data_parallel.DataParallel
    steps[kernel] = mode(graphdef, optimizer, optax.constant_schedule(LEARNING_RATE))
    steps[kernel].state = steps[kernel].place(state)
  for seed in range(2):
    batch = _batch(seed, length=128)
    batch["segment_ids"][:, 77:] = 2  # Two documents a row.
    losses = {}
    for kernel, executor in steps.items():
      executor.state, metrics = executor.train_step(executor.state, batch)
      losses[kernel] = metrics["loss"]
    np.testing.assert_allclose(losses["splash"], losses["xla"], rtol=1e-5)
  assert set(rows_per_call) == {16 // jax.device_count()}  # Each device's own rows.


def test_fsdp_shards_parameters_and_adam_moments():
  graphdef, state, optimizer, schedule = _setup()
  fsdp = sharded.Sharded(graphdef, optimizer, schedule)
  placed = fsdp.place(state)
  kernel = placed.params["blocks"][0]["mlp"]["up"]["kernel"][...]
  assert kernel.addressable_shards[0].data.size == kernel.size // 8
  moments = [leaf for leaf in jax.tree.leaves(placed.opt_state) if leaf.ndim == 2]
  assert moments and all(leaf.addressable_shards[0].data.size == leaf.size // 8
                         for leaf in moments)
  new_state, _ = fsdp.train_step(placed, _batch(0))
  new_kernel = new_state.params["blocks"][0]["mlp"]["up"]["kernel"][...]
  assert new_kernel.sharding == kernel.sharding  # The step keeps the layout.


def test_leaves_no_dimension_of_which_divides_are_replicated():
  mesh = sharded.make_mesh(8)
  assert sharded.leaf_sharding(mesh, jnp.zeros((3, 5))).spec == jax.sharding.PartitionSpec()
  assert sharded.leaf_sharding(mesh, jnp.zeros(())).spec == jax.sharding.PartitionSpec()
  assert sharded.leaf_sharding(mesh, jnp.zeros((16, 3))).spec == jax.sharding.PartitionSpec(
      "fsdp", None)


def test_fsdp_devices_must_divide_the_device_count():
  with pytest.raises(ValueError, match="fsdp_devices=3: expected a divisor of the 8 devices"):
    sharded.make_mesh(3)
