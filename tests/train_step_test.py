"""Tests for cpt_jax/train_step.py, chunked_loss.py, optimizer.py and data_parallel.py."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cpt_jax import data_parallel
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import train_step as train_step_lib

CONFIG = dataclasses.replace(model_config.preset("tiny"), vocab_size=101, num_layers=2,
                             model_dim=32, num_heads=4, num_kv_heads=4, mlp_dim=64)


def _batch(seed, batch_size=16, length=24, vocab=101):
  rng = np.random.default_rng(seed)
  segments = np.cumsum(rng.random((batch_size, length)) < 0.1, axis=1) + 1
  positions = np.zeros_like(segments)
  for row in range(batch_size):
    for t in range(1, length):
      same_document = segments[row, t] == segments[row, t - 1]
      positions[row, t] = positions[row, t - 1] + 1 if same_document else 0
  return {
      "inputs": rng.integers(0, vocab, (batch_size, length)).astype(np.int32),
      "targets": rng.integers(0, vocab, (batch_size, length)).astype(np.int32),
      "positions": positions.astype(np.int32),
      "segment_ids": segments.astype(np.int32),
      # Uneven masking across devices: the global mean must still be exact.
      "loss_mask": (rng.random((batch_size, length)) < np.linspace(0.2, 1, batch_size)[:, None]
                    ).astype(np.float32),
  }


def _setup(learning_rate=1e-4, **optimizer_overrides):
  optimizer_config = optimizer_lib.default_config()
  optimizer_config.update(optimizer_overrides)
  optimizer = optimizer_lib.make(optimizer_config)
  graphdef, state = train_step_lib.init_state(CONFIG, optimizer, seed=0)
  return graphdef, state, optimizer, optax.constant_schedule(learning_rate)


def _jitted_step(graphdef, optimizer, schedule, **kwargs):
  """The step with its learning rate taken from `schedule`, compiled as one function."""
  return jax.jit(train_step_lib.with_schedule(
      train_step_lib.make_train_step(graphdef, optimizer, **kwargs), schedule))


def _max_difference(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


def test_pmapped_step_on_8_devices_equals_a_single_device_step():
  assert jax.local_device_count() == 8
  graphdef, state, optimizer, schedule = _setup()
  single = _jitted_step(graphdef, optimizer, schedule)
  pmapped = data_parallel.compile_train_step(graphdef, optimizer)
  single_state, pmap_state = state, jax.tree.map(jnp.copy, state)
  for seed in range(3):
    batch = _batch(seed)
    single_state, single_metrics = single(single_state, batch)
    pmap_state, pmap_metrics = pmapped(pmap_state, data_parallel.split_for_devices(batch),
                                       jnp.float32(1e-4))
    np.testing.assert_allclose(pmap_metrics["loss"], single_metrics["loss"], rtol=1e-5)
  assert _max_difference(pmap_state.params, single_state.params) < 1e-5
  assert _max_difference(pmap_state.params, state.params) > 1e-4  # the params did move
  assert int(pmap_state.step) == 3


def test_gradient_accumulation_equals_one_large_batch():
  graphdef, state, optimizer, schedule = _setup()
  whole = _jitted_step(graphdef, optimizer, schedule)
  accumulated = _jitted_step(graphdef, optimizer, schedule, microbatches=4)
  batch = _batch(7)
  whole_state, whole_metrics = whole(state, batch)
  accumulated_state, accumulated_metrics = accumulated(state, batch)
  np.testing.assert_allclose(accumulated_metrics["loss"], whole_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(accumulated_metrics["grad_norm"], whole_metrics["grad_norm"],
                             rtol=1e-4)
  assert _max_difference(accumulated_state.params, whole_state.params) < 1e-5


@pytest.mark.parametrize("tied,chunk,compute_head", [
    (False, 64, False), (True, 100, False), (False, 1000, False), (True, 64, True)])
def test_the_loss_in_pieces_equals_the_loss_at_once_and_so_do_its_gradients(
    tied, chunk, compute_head):
  """Pieces of 64 and 100 tokens split 16 x 24 tokens evenly and not (the last is padded);
  1000 is more than the batch. `compute_head`: bfloat16 compute, the head's matmuls too."""
  model = dataclasses.replace(CONFIG, family="llama" if tied else "pythia", tie_embeddings=tied)
  if compute_head:
    model = dataclasses.replace(model, compute_dtype="bfloat16", head_matmul_dtype="compute")
  graphdef, state = train_step_lib.init_state(model, optax.sgd(0.1), seed=0)
  in_pieces, _ = train_step_lib.init_state(
      dataclasses.replace(model, loss_chunk_tokens=chunk), optax.sgd(0.1), seed=0)
  batch = _batch(5)

  def loss(definition, params):
    loss_sum, count = train_step_lib.loss_sums(definition, params, batch)
    return loss_sum / count

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  whole, whole_grads = value_and_grad(graphdef, state.params)
  pieces, pieces_grads = value_and_grad(in_pieces, state.params)
  np.testing.assert_allclose(pieces, whole, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(loss, static_argnums=0)(in_pieces, state.params), whole,
                             rtol=1e-6)  # Not differentiated: the plain scan.
  for whole_leaf, pieces_leaf in zip(jax.tree.leaves(whole_grads), jax.tree.leaves(pieces_grads)):
    scale = float(jnp.max(jnp.abs(whole_leaf)))
    # In bfloat16 the two round the logits' gradient before and after its 1/count scaling.
    tolerance = 2e-2 if compute_head else 1e-5
    assert scale > 0 and float(jnp.max(jnp.abs(pieces_leaf - whole_leaf))) <= tolerance * scale


def test_loss_ignores_masked_tokens():
  graphdef, state, optimizer, schedule = _setup()
  step = _jitted_step(graphdef, optimizer, schedule)
  batch = _batch(3)
  scrambled = dict(batch, targets=np.where(batch["loss_mask"] > 0, batch["targets"],
                                           (batch["targets"] + 5) % 101))
  _, metrics = step(state, batch)
  _, scrambled_metrics = step(state, scrambled)
  assert float(metrics["loss"]) == pytest.approx(float(scrambled_metrics["loss"]), rel=1e-6)
  assert float(metrics["tokens"]) == batch["loss_mask"].sum()


def test_loss_falls_on_a_memorizable_batch():
  graphdef, state, optimizer, schedule = _setup(learning_rate=3e-3)
  step = _jitted_step(graphdef, optimizer, schedule)
  batch = _batch(4)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[0] > 4.0
  assert losses[-1] < 0.5 * losses[0]


def test_learning_rate_comes_from_the_state_step():
  graphdef, state, optimizer, _ = _setup()
  executor = data_parallel.DataParallel(graphdef, optimizer, lambda step: 1e-3 * (step + 1))
  state = executor.place(state.replace(step=jnp.asarray(9, jnp.int32)))
  state, metrics = executor.train_step(state, _batch(0))
  assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
  state, metrics = executor.train_step(state, _batch(1))
  assert float(metrics["learning_rate"]) == pytest.approx(1.1e-2)
  assert int(state.step) == 11


def test_one_compiled_step_serves_every_schedule():
  """Runs that differ only in their schedule share the step's compiled program."""
  graphdef, state, optimizer, _ = _setup()
  batch = data_parallel.split_for_devices(_batch(0))
  programs = set()
  for schedule in (optax.constant_schedule(1e-4), optax.cosine_decay_schedule(3e-4, 77)):
    executor = data_parallel.DataParallel(graphdef, optimizer, schedule)
    programs.add(executor.pmapped_train_step.lower(state, batch, jnp.float32(0)).as_text())
  assert len(programs) == 1


def test_gradient_norm_is_reported_before_clipping():
  graphdef, state, optimizer, schedule = _setup(grad_clip_norm=1e-3)
  step = _jitted_step(graphdef, optimizer, schedule)
  _, metrics = step(state, _batch(1))
  assert float(metrics["grad_norm"]) > 1e-2


def _l2_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(tree))))


def test_norms_are_the_l2_norms_of_the_new_parameters_and_the_update_without_deprecations():
  graphdef, state, optimizer, schedule = _setup(learning_rate=1e-2)
  step = _jitted_step(graphdef, optimizer, schedule)
  with warnings.catch_warnings():
    # A deprecated optax call warns when the step is traced; the step must not use one.
    warnings.simplefilter("error", DeprecationWarning)
    new_state, metrics = step(state, _batch(1))
  update = jax.tree.map(jnp.subtract, new_state.params, state.params)
  assert float(metrics["param_norm"]) == pytest.approx(_l2_norm(new_state.params), rel=1e-5)
  assert float(metrics["update_norm"]) == pytest.approx(_l2_norm(update), rel=1e-3)
  assert float(metrics["update_norm"]) > 0


def test_weight_decay_skips_norms_biases_and_embeddings_by_default():
  graphdef, state, *_ = _setup()
  config = optimizer_lib.default_config()
  mask = optimizer_lib.weight_decay_mask(state.params, config)
  flat = {jax.tree_util.keystr(path): decayed
          for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(name for name, on in flat.items() if on)
  assert decayed and all("kernel" in name and "norm" not in name and "embed" not in name
                         for name in decayed)
  assert any("qkv" in name for name in decayed) and any("down" in name for name in decayed)
  config.decay_biases = config.decay_norms = config.decay_embeddings = True
  assert all(jax.tree.leaves(optimizer_lib.weight_decay_mask(state.params, config)))


@pytest.mark.parametrize("qk_norm", ["head", "projection"])
def test_weight_decay_counts_the_query_and_key_norms_as_norms(qk_norm):
  model = model_config.ModelConfig(family="llama", qk_norm=qk_norm,
                                   post_norm=qk_norm == "projection")
  kinds = {jax.tree_util.keystr(path): optimizer_lib.parameter_kind(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(model_lib.abstract_params(model))[0]}
  qk_norms = [name for name in kinds if "q_norm" in name or "k_norm" in name]
  assert len(qk_norms) == 2 * model.num_layers
  assert {kinds[name] for name in qk_norms} == {"norm"}


def test_weight_decay_shrinks_only_the_masked_parameters():
  graphdef, state, optimizer, schedule = _setup(learning_rate=1e-2, weight_decay=0.5, b1=0.0)
  step = _jitted_step(graphdef, optimizer, schedule)
  zero_grad_batch = dict(_batch(0), loss_mask=np.zeros((16, 24), np.float32))
  new_state, _ = step(state, zero_grad_batch)
  kernel = state.params["blocks"][0]["mlp"]["up"]["kernel"][...]
  new_kernel = new_state.params["blocks"][0]["mlp"]["up"]["kernel"][...]
  np.testing.assert_allclose(new_kernel, kernel * (1 - 1e-2 * 0.5), rtol=1e-6)
  embedding = state.params["embed"]["embedding"][...]
  np.testing.assert_array_equal(new_state.params["embed"]["embedding"][...], embedding)


@pytest.mark.parametrize("field, value", [("b2", 1.0), ("eps", -1.0), ("microbatches", 0)])
def test_invalid_optimizer_fields_are_named(field, value):
  config = optimizer_lib.default_config()
  config[field] = value
  with pytest.raises(ValueError, match=f"optimizer.{field}"):
    optimizer_lib.make(config)


def test_batch_not_divisible_by_devices_is_refused():
  with pytest.raises(ValueError, match="global_batch_size"):
    data_parallel.split_for_devices(_batch(0, batch_size=12))


# The tiny model's first losses, pinned (nanodo's golden numbers). A change to the
# initialization, the model's numerics, the loss or AdamW moves them.
GOLDEN_LOSSES = [4.630450, 4.485361, 4.382107, 4.290583, 4.213830]


def test_first_losses_match_the_golden_numbers():
  optimizer = optimizer_lib.make(optimizer_lib.default_config())
  graphdef, state = train_step_lib.init_state(CONFIG, optimizer, seed=0)
  step = _jitted_step(graphdef, optimizer, optax.constant_schedule(3e-3))
  losses = []
  for _ in GOLDEN_LOSSES:
    state, metrics = step(state, _batch(0))
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(
      losses, GOLDEN_LOSSES, rtol=2e-5,
      err_msg="The tiny model's first losses changed: initialization, model numerics, loss or "
              "optimizer behave differently. If that is intended, update GOLDEN_LOSSES.")
