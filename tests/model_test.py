"""Tests for cpt_jax/model.py and cpt_jax/model_config.py."""

import dataclasses
import re

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from cpt_jax import base_config
from cpt_jax import experiment_config
from cpt_jax import hf_convert
from cpt_jax import model as model_lib
from cpt_jax import model_config

SMALL_PYTHIA = dataclasses.replace(model_config.preset("tiny"), vocab_size=97, num_layers=2,
                                   model_dim=32, num_heads=4, num_kv_heads=4, mlp_dim=64)
SMALL_LLAMA = dataclasses.replace(model_config.preset("llama-small"), vocab_size=97,
                                  num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                                  mlp_dim=48, max_seq_len=64)


def _model(config):
  return model_lib.Transformer(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("config", [SMALL_PYTHIA, SMALL_LLAMA], ids=["pythia", "llama"])
def test_changing_a_later_token_never_changes_earlier_logits(config):
  model = _model(config)
  tokens = jax.random.randint(jax.random.key(1), (1, 12), 0, config.vocab_size)
  logits = model(tokens)
  for t in range(11):
    changed = tokens.at[0, t + 1].set((tokens[0, t + 1] + 1) % config.vocab_size)
    changed_logits = model(changed)
    np.testing.assert_allclose(changed_logits[0, :t + 1], logits[0, :t + 1], atol=1e-6)
    assert not np.allclose(changed_logits[0, t + 1:], logits[0, t + 1:])


@pytest.mark.parametrize("config", [SMALL_PYTHIA, SMALL_LLAMA], ids=["pythia", "llama"])
def test_two_packed_documents_give_the_logits_of_each_alone(config):
  model = _model(config)
  first = jax.random.randint(jax.random.key(2), (1, 7), 0, config.vocab_size)
  second = jax.random.randint(jax.random.key(3), (1, 5), 0, config.vocab_size)
  packed = jnp.concatenate([first, second], axis=1)
  positions = jnp.concatenate([jnp.arange(7), jnp.arange(5)])[None]
  segments = jnp.array([[1] * 7 + [2] * 5])
  packed_logits = model(packed, positions, segments)
  np.testing.assert_allclose(packed_logits[:, :7], model(first), atol=1e-5)
  np.testing.assert_allclose(packed_logits[:, 7:], model(second), atol=1e-5)
  # Without the segment mask the second document would see the first.
  unmasked = model(packed, positions, jnp.ones_like(segments))
  assert not np.allclose(unmasked[:, 7:], model(second), atol=1e-3)


def _inv_freq(rotary_dims, head_dim=16):
  config = model_config.ModelConfig(model_dim=head_dim, num_heads=1, num_kv_heads=1,
                                    rotary_pct=rotary_dims / head_dim)
  return model_lib.rotary_inverse_frequencies(config)


def test_llama3_rope_scaling_slows_only_the_long_wavelengths():
  base = model_config.ModelConfig(family="llama", model_dim=128, num_heads=1, num_kv_heads=1,
                                  rotary_base=500000.0)
  plain = model_lib.rotary_inverse_frequencies(base)
  scaled = model_lib.rotary_inverse_frequencies(dataclasses.replace(
      base, rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_context=8192))
  wavelength = 2 * np.pi / np.asarray(plain)
  short, long = wavelength < 8192 / 4, wavelength > 8192 / 1
  np.testing.assert_array_equal(scaled[short], plain[short])
  np.testing.assert_allclose(scaled[long], plain[long] / 8, rtol=1e-6)
  middle = ~short & ~long
  assert middle.any() and np.all((scaled[middle] < plain[middle]) &
                                 (scaled[middle] > plain[middle] / 8))


def test_rotary_depends_only_on_relative_position():
  q = jax.random.normal(jax.random.key(4), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(5), (1, 1, 1, 16))

  def score(q_pos, k_pos):
    rq = model_lib.apply_rotary(q, jnp.array([[q_pos]]), _inv_freq(16))
    rk = model_lib.apply_rotary(k, jnp.array([[k_pos]]), _inv_freq(16))
    return float(jnp.sum(rq * rk))

  assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
  assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_partial_rotary_leaves_the_remaining_dims_untouched():
  x = jax.random.normal(jax.random.key(6), (1, 3, 2, 16))
  rotated = model_lib.apply_rotary(x, jnp.array([[0, 4, 9]]), _inv_freq(4))
  np.testing.assert_array_equal(rotated[..., 4:], x[..., 4:])
  assert not np.allclose(rotated[0, 1:, :, :4], x[0, 1:, :, :4])


def _rotate_half_reference(x, positions, inv_freq):
  """Hugging Face's GPT-NeoX rotary embedding: rotate-half, then the rest joined to it."""
  rotary_dims = 2 * len(inv_freq)
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  angles = jnp.concatenate([angles, angles], -1)[:, :, None, :]
  rotated = x[..., :rotary_dims].astype(jnp.float32)
  first, second = jnp.split(rotated, 2, axis=-1)
  rotated = rotated * jnp.cos(angles) + jnp.concatenate([-second, first], -1) * jnp.sin(angles)
  return jnp.concatenate([rotated.astype(x.dtype), x[..., rotary_dims:]], -1)


# _rotate_first_group: what apply_rotary runs off XLA:CPU where the 2R rotated dims divide
# the head (at 12 and 8 apply_rotary rotates a slice).
@pytest.mark.parametrize("rotary,head_dim,rotary_dims", [
    (model_lib.apply_rotary, 16, 16), (model_lib.apply_rotary, 16, 4),
    (model_lib.apply_rotary, 12, 8), (model_lib._rotate_first_group, 16, 16),
    (model_lib._rotate_first_group, 16, 4)])
def test_rotary_equals_the_rotate_half_reference(rotary, head_dim, rotary_dims):
  x = jax.random.normal(jax.random.key(7), (2, 5, 3, head_dim))
  positions = np.array([[0, 1, 2, 0, 1], [7, 300, 4095, 9, 2]])
  inv_freq = _inv_freq(rotary_dims, head_dim)
  expected = _rotate_half_reference(x, jnp.asarray(positions), inv_freq)
  np.testing.assert_allclose(rotary(x, positions, inv_freq), expected, rtol=1e-6, atol=1e-6)
  # bfloat16 inputs are rotated in float32 and rounded once.
  x_bf16 = x.astype(jnp.bfloat16)
  np.testing.assert_array_equal(
      rotary(x_bf16, positions, inv_freq),
      rotary(x_bf16.astype(jnp.float32), positions, inv_freq).astype(jnp.bfloat16))


def test_rotating_the_first_group_is_one_elementwise_pass():
  def concatenations(rotary):
    x = jnp.ones((2, 5, 3, 16), jnp.bfloat16)
    rotated_sum = lambda x: jnp.sum(rotary(x, jnp.zeros((2, 5), jnp.int32), _inv_freq(4)
                                           ).astype(jnp.float32) ** 2)
    return jax.jit(jax.value_and_grad(rotated_sum)).lower(x).as_text().count("concatenate")

  assert concatenations(model_lib._rotate_first_group) == 0
  assert concatenations(_rotate_half_reference) > 0


def test_bfloat16_compute_keeps_float32_params_and_logits():
  config = dataclasses.replace(SMALL_PYTHIA, compute_dtype="bfloat16")
  model = _model(config)
  params = nnx.state(model, nnx.Param)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  logits = model(jnp.zeros((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, _model(SMALL_PYTHIA)(jnp.zeros((1, 4), jnp.int32)),
                             atol=0.05)


@pytest.mark.parametrize("head", ["float32", "compute"])
def test_the_head_runs_its_matmuls_forward_and_backward_in_its_dtype(head):
  """Three matmuls touch the vocabulary (97 here): the logits, and the gradients of the
  features and of the head. Under bfloat16 compute they take float32 operands by default and
  bfloat16 ones with head_matmul_dtype="compute"; their results and the logits stay float32."""
  config = dataclasses.replace(SMALL_PYTHIA, compute_dtype="bfloat16", head_matmul_dtype=head)
  graphdef, params = nnx.split(_model(config), nnx.Param)
  tokens = jnp.arange(12)[None] % 97
  loss = lambda p: jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, p)(tokens))[..., 3])
  program = jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
  head_dots = re.findall(r"dot_general.*: \((tensor<[^)]*97[^)]*)\) -> (tensor<[^>]*>)",
                         program)
  operand_dtype = {"float32": "f32", "compute": "bf16"}[head]
  assert len(head_dots) == 3, program
  for operands, result in head_dots:
    dtypes = [shape.rsplit("x", 1)[-1] for shape in re.findall(r"<([^>]*)>", operands)]
    assert dtypes == [operand_dtype] * 2 and result.endswith("xf32>")
  # The same logits, to bfloat16's precision.
  float32_head = dataclasses.replace(config, head_matmul_dtype="float32")
  np.testing.assert_allclose(nnx.merge(graphdef, params)(tokens),
                             nnx.merge(nnx.graphdef(_model(float32_head)), params)(tokens),
                             atol=0.02)


def test_the_embedding_gradient_accumulates_in_float32_under_bfloat16_compute():
  """4096 lookups of one token: its row's gradient is their cotangents' sum, which bfloat16
  (8 bits of mantissa) would round at every addition."""
  embed = _model(dataclasses.replace(SMALL_PYTHIA, compute_dtype="bfloat16")).embed
  cotangent = jax.random.normal(jax.random.key(0), (4096, 32)).astype(jnp.bfloat16)
  tokens = jnp.full((4096,), 5)
  row_gradient = nnx.grad(lambda embed: jnp.sum(
      (embed(tokens) * cotangent).astype(jnp.float32)))(embed).embedding[...][5]
  np.testing.assert_allclose(row_gradient, jnp.sum(cotangent.astype(jnp.float32), axis=0),
                             rtol=1e-5, atol=1e-4)
  assert embed(tokens).dtype == jnp.bfloat16


@pytest.mark.parametrize("policy", ["dots", "full"])
@pytest.mark.parametrize("family", ["llama", "pythia"])  # Pythia's biases: custom gradients.
def test_remat_policies_give_the_same_logits_and_gradients(policy, family):
  tokens = jnp.arange(10)[None] % 97
  config = SMALL_LLAMA if family == "llama" else SMALL_PYTHIA

  def loss_and_grads(config):
    graphdef, params = nnx.split(_model(config), nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)
    return jax.value_and_grad(loss)(params)

  plain, remat = loss_and_grads(config), loss_and_grads(
      dataclasses.replace(config, remat=policy))
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), remat[1], plain[1])


def test_remat_policies_keep_fewer_activations_for_the_backward_pass(capsys):
  tokens = jnp.arange(4 * 64).reshape(4, 64) % 97

  def saved_floats(remat):
    graphdef, params = nnx.split(_model(dataclasses.replace(SMALL_LLAMA, remat=remat)), nnx.Param)
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens)), params)
    shapes = re.findall(r"^f32\[([\d,]*)\]", capsys.readouterr().out, re.M)
    return sum(int(np.prod([int(d) for d in shape.split(",") if d])) for shape in shapes)

  none, dots, full = (saved_floats(policy) for policy in ("none", "dots", "full"))
  assert none > dots > full


def test_remat_of_a_stored_config_before_policies_reads_as_a_policy():
  for old, policy in ((True, "full"), (False, "none")):
    stored = ml_collections.ConfigDict({**dataclasses.asdict(SMALL_PYTHIA), "remat": old})
    assert model_config.from_config_dict(stored).remat == policy


def test_linear_on_rows_equals_flax_linear_with_its_gradients():
  rows_linear = model_lib._Linear(8, 5, rngs=nnx.Rngs(0))
  flax_linear = nnx.Linear(8, 5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 4, 8))
  weights = jax.random.normal(jax.random.key(2), (3, 4, 5))

  def grads(layer):
    return nnx.grad(lambda layer, x: jnp.sum(layer(x) * weights), argnums=(0, 1))(layer, x)

  np.testing.assert_allclose(rows_linear(x), flax_linear(x), rtol=1e-6, atol=1e-6)
  (d_layer, d_x), (ref_d_layer, ref_d_x) = grads(rows_linear), grads(flax_linear)
  np.testing.assert_allclose(d_x, ref_d_x, rtol=1e-6, atol=1e-6)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(getattr(d_layer, name)[...], getattr(ref_d_layer, name)[...],
                               rtol=1e-5, atol=1e-6)  # Sums in another order.


def test_a_bfloat16_projection_sums_its_bias_gradient_in_float32():
  """Every sum in the gradient program is float32: summed in bfloat16, as JAX differentiates
  nnx.Linear's bias, the 65k rows of a GPU step rounded at every addition."""
  layer = model_lib._Linear(8, 5, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                            rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 4, 8)).astype(jnp.bfloat16)
  gradient = lambda layer: nnx.grad(lambda layer: jnp.sum(layer(x).astype(jnp.float32)))(layer)
  summed_dtypes = {str(equation.outvars[0].aval.dtype)
                   for equation in jax.make_jaxpr(gradient)(layer).eqns
                   if equation.primitive.name == "reduce_sum"}
  assert summed_dtypes == {"float32"}
  np.testing.assert_array_equal(gradient(layer).bias[...], np.full(5, 12.0))
  assert layer(x).dtype == jnp.bfloat16
  # The sum is a product with ones (model._add_bias), which the check above does not see:
  # over 4096 rows, bfloat16 accumulation would miss the float32 sum by about 0.1.
  rows = jax.random.normal(jax.random.key(2), (4096, 8)).astype(jnp.bfloat16)
  cotangent = jax.random.normal(jax.random.key(3), (4096, 5)).astype(jnp.bfloat16)
  bias_gradient = nnx.grad(lambda layer: jnp.sum(
      layer(rows).astype(jnp.float32) * cotangent.astype(jnp.float32)))(layer).bias[...]
  np.testing.assert_allclose(bias_gradient, jnp.sum(cotangent.astype(jnp.float32), axis=0),
                             rtol=1e-5, atol=1e-4)


def test_gelu_is_the_exact_gelu_across_its_range():
  x = jnp.linspace(-12.0, 12.0, 4001)
  np.testing.assert_allclose(model_lib._gelu(x), jax.nn.gelu(x, approximate=False),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: model_lib._gelu(x).sum())(x),
                             jax.grad(lambda x: jax.nn.gelu(x, approximate=False).sum())(x),
                             rtol=1e-5, atol=1e-6)


def test_gelu_in_bfloat16_is_the_float32_gelu_rounded_once():
  x = jnp.linspace(-6.0, 6.0, 4001).astype(jnp.bfloat16)
  cotangent = jnp.linspace(-2.0, 3.0, 4001).astype(jnp.bfloat16)
  rounded_once = lambda f: lambda x: f(x.astype(jnp.float32)).astype(jnp.bfloat16)
  np.testing.assert_array_equal(model_lib._gelu(x), rounded_once(model_lib._gelu)(x))
  gradient = lambda f: jax.vjp(f, x)[1](cotangent)[0]
  np.testing.assert_array_equal(gradient(model_lib._gelu),
                                gradient(rounded_once(model_lib._gelu)))


@pytest.mark.parametrize("name, total, non_embedding", [
    ("pythia-70m", 70_426_624, 18_915_328),
    ("pythia-160m", 162_322_944, 85_056_000),
    ("pythia-410m", 405_334_016, 302_311_424),
    ("pythia-1b", 1_011_781_632, 805_736_448),
])
def test_pythia_presets_have_the_published_parameter_counts(name, total, non_embedding):
  assert model_lib.parameter_counts(model_config.preset(name)) == (total, non_embedding)


def test_tiny_preset_fits_a_cpu():
  total, _ = model_lib.parameter_counts(model_config.preset("tiny"))
  assert 1_000_000 <= total <= 3_000_000


def test_tied_embeddings_have_no_output_matrix():
  tied, _ = model_lib.parameter_counts(SMALL_LLAMA)
  untied, _ = model_lib.parameter_counts(dataclasses.replace(SMALL_LLAMA, tie_embeddings=False))
  assert untied - tied == 97 * 32


@pytest.mark.parametrize("field, value, message", [
    ("num_heads", 5, "model.num_heads=5: expected a divisor of model_dim=32"),
    ("num_kv_heads", 3, "model.num_kv_heads=3"),
    ("family", "gpt", "model.family='gpt'"),
    ("compute_dtype", "float16", "model.compute_dtype"),
    ("remat", "some", "model.remat='some': expected one of"),
    ("attention", "flash", "model.attention='flash': expected one of"),
    ("vocab_size", 0, "model.vocab_size=0: expected a positive integer"),
    ("loss_chunk_tokens", -1, "model.loss_chunk_tokens=-1: expected an integer >= 0"),
    ("head_matmul_dtype", "bfloat16", "model.head_matmul_dtype='bfloat16': expected one of"),
    ("qkv_bias", True, "model.qkv_bias=True: expected False outside the llama family"),
])
def test_invalid_model_fields_are_named(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
    dataclasses.replace(SMALL_PYTHIA, **{field: value}).validate()


def test_a_pythia_preset_switched_to_llama_rotates_every_dim_and_exports():
  """Presets leave the rotated share to the family: `--config.model.family=llama` on the
  tiny preset is a Llama that HF's LlamaForCausalLM can express."""
  config = model_config.preset_config_dict("tiny")
  assert model_config.from_config_dict(config).rotary_fraction == 0.25
  config.family = "llama"
  llama = model_config.from_config_dict(config)
  assert llama.rotary_dims == llama.head_dim
  hf = hf_convert.hf_config_from_model(llama, bos_token_id=0, eos_token_id=0, dtype="float32")
  assert hf["model_type"] == "llama"


def test_the_rotated_share_of_a_preset_takes_a_command_line_override():
  config = experiment_config.override_from_command_line(base_config.base_config(),
                                                        ["--config.model.rotary_pct=0.5"])
  assert model_config.from_config_dict(config.model).rotary_fraction == 0.5


def test_unknown_preset_lists_the_known_ones():
  with pytest.raises(ValueError, match="pythia-410m"):
    model_config.preset("pythia-7b")


def test_flops_per_token_follows_the_palm_formula():
  config = model_config.preset("pythia-410m")
  _, non_embedding = model_lib.parameter_counts(config)
  expected = 6 * (302_311_424 + 1024 * 50304) + 12 * 24 * 1024 * 2048
  assert model_config.flops_per_token(config, 2048, non_embedding) == expected
