"""The decoder-only Transformer (Flax NNX), in the Pythia (GPT-NeoX) and Llama families.

Owns the forward pass: token ids in, float32 logits out. Rows may hold several packed
documents: `segment_ids` keep attention inside a document and `positions` (restarting at
every document) drive rotary embeddings. Numerics follow the Hugging Face implementations the
weights come from (`hf_convert.py`): LayerNorm's two-pass variance, Llama 3.1's rotary
scaling, and by default the output head in float32 whatever the compute dtype
(`output_head.py`). Shapes use suffixes: B batch, T time, D model dim, N query heads,
K key/value heads, H head dim, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cpt_jax import attention
from cpt_jax import layer_norm
from cpt_jax import model_config
from cpt_jax import output_head
from cpt_jax.model_config import ModelConfig

_INIT_STDDEV = 0.02
# What a rematerialised block keeps for the backward pass (model_config.REMAT_POLICIES).
# "dots" keeps the outputs of matmuls with weights (no batch dimensions), not attention's
# batched score and value products, whose (B, N, T, T) activations dominate memory.
_REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                   "full": jax.checkpoint_policies.nothing_saveable}


def _rows(x_BxTxD: jax.Array) -> jax.Array:
  """The (B*T, D) view of activations, for the matmuls with weights. On a (B, T, D) input,
  XLA:CPU computes the weight gradient from a transposed copy of the whole output gradient
  (64 MB for the output head at 16 x 256 x 4096); on the 2-D view it contracts in place.
  Elsewhere the reshape is free. See benchmarks/vs_transformers.py."""
  return x_BxTxD.reshape(-1, x_BxTxD.shape[-1])


class _Linear(nnx.Linear):
  """nnx.Linear (same parameters and products) applied to `_rows` of its input, with its bias
  gradient summed in float32 (`_add_bias`)."""

  def __call__(self, x):
    rows_NxD, kernel_DxF = self.promote_dtype((_rows(x), self.kernel[...]), dtype=self.dtype)
    y_NxF = jnp.dot(rows_NxD, kernel_DxF, precision=self.precision)
    if self.bias is not None:
      y_NxF = _add_bias(y_NxF, self.bias[...])
    return y_NxF.reshape(*x.shape[:-1], -1)


@jax.custom_vjp
def _add_bias(y_NxF: jax.Array, bias_F: jax.Array) -> jax.Array:
  """y + bias in the dtype of y. Differentiated by JAX, the bias gradient is a sum over all
  N rows in that dtype: in bfloat16 on an H200, two levels of bfloat16 additions (XLA's
  split reduction) where torch accumulates in float32 and rounds once. Here it is a product
  with a row of ones, accumulated in float32: pythia-410m at 32 x 2048 on one H200 ran
  175,376 tokens/s so, 171,692 with a float32 reduce (jnp.sum(dtype=float32)) and 176,254
  with the bfloat16 sums of autodiff."""
  return y_NxF + bias_F.astype(y_NxF.dtype)


def _add_bias_forward(y_NxF, bias_F):
  return _add_bias(y_NxF, bias_F), None


def _add_bias_backward(_, dy_NxF):
  ones_N = jnp.ones(dy_NxF.shape[:1], dy_NxF.dtype)
  return dy_NxF, jnp.dot(ones_N, dy_NxF, preferred_element_type=jnp.float32)


_add_bias.defvjp(_add_bias_forward, _add_bias_backward)


class _Embed(nnx.Embed):
  """nnx.Embed (same parameters) looking tokens up in the float32 table, then casting the
  rows to the compute dtype. nnx.Embed casts the table first: its gradient, a scatter-add of
  every token's row, then accumulated in bfloat16 (thousands of additions into a frequent
  token's row) and took 7% of pythia-410m's step on an H200."""

  def __call__(self, tokens):
    return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)


def _linear(config: ModelConfig, in_dim: int, out_dim: int, *, rngs: nnx.Rngs,
            stddev: float = _INIT_STDDEV, bias: bool = False) -> nnx.Linear:
  """A projection, with a bias where the family has them (or `bias` asks for one)."""
  return _Linear(in_dim, out_dim, use_bias=config.use_bias or bias,
                 dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.float32,
                 kernel_init=nnx.initializers.normal(stddev), rngs=rngs)


def _norm(config: ModelConfig, *, rngs: nnx.Rngs, dim: int | None = None) -> nnx.Module:
  """The family's norm over the model's width, or over `dim` (the q and k norms)."""
  dtype, dim = jnp.dtype(config.compute_dtype), dim or config.model_dim
  if config.family == "pythia":  # Two-pass variance, as torch computes it.
    return layer_norm.LayerNorm(dim, epsilon=config.norm_eps, dtype=dtype,
                                param_dtype=jnp.float32, rngs=rngs)
  return nnx.RMSNorm(dim, epsilon=config.norm_eps, dtype=dtype, param_dtype=jnp.float32,
                     rngs=rngs)


def rotary_inverse_frequencies(config: ModelConfig) -> jax.Array:
  """Each rotated pair's angular frequency; Llama 3.1's scaling slows the low frequencies
  (long wavelengths) by `rope_scaling_factor` and blends the middle band smoothly."""
  dims = config.rotary_dims
  inv_freq = 1.0 / config.rotary_base ** (jnp.arange(0, dims, 2, dtype=jnp.float32) / dims)
  if config.rope_scaling != "llama3":
    return inv_freq
  factor, context = config.rope_scaling_factor, config.rope_original_context
  low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
  wavelength = 2 * jnp.pi / inv_freq
  scaled = jnp.where(wavelength > context / low, inv_freq / factor, inv_freq)
  smooth = (context / wavelength - low) / (high - low)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  middle = (wavelength >= context / high) & (wavelength <= context / low)
  return jnp.where(middle, blended, scaled)


def apply_rotary(x_BxTxNxH: jax.Array, positions_BxT: jax.Array,
                 inv_freq_R: jax.Array) -> jax.Array:
  """GPT-NeoX rotary embedding (rotate-half layout) on the first 2R dims of each head, in
  float32 and rounded once: `_rotate_first_group` over the whole head where 2R divides it,
  except on XLA:CPU, which runs that 10% slower over the tiny model's step than a slice of
  the rotated dims joined to the rest."""
  rotary_dims = 2 * inv_freq_R.shape[0]
  if rotary_dims == 0:
    return x_BxTxNxH
  if x_BxTxNxH.shape[-1] % rotary_dims or jax.default_backend() == "cpu":
    rotated = _rotate_first_group(x_BxTxNxH[..., :rotary_dims], positions_BxT, inv_freq_R)
    return jnp.concatenate([rotated, x_BxTxNxH[..., rotary_dims:]], -1)
  return _rotate_first_group(x_BxTxNxH, positions_BxT, inv_freq_R)


def _rotate_first_group(x_BxTxNxH, positions_BxT, inv_freq_R):
  """Rotary embedding of the first 2R dims of each head, without concatenations: viewing the
  head as G groups of (2, R), dim i of the first group pairs with the same dim of its other
  half, a reversal of the pair axis, so the whole embedding is one elementwise pass. On an
  H200, forward and backward of pythia-410m's q and k at 32 x 2048 took 0.57 ms a layer
  against 0.78 with concatenations (rotate-half, then the rotated dims next to the rest)."""
  rotary_dims = 2 * inv_freq_R.shape[0]
  *leading, head_dim = x_BxTxNxH.shape
  groups = head_dim // rotary_dims
  angles_BxTxR = positions_BxT[..., None].astype(jnp.float32) * inv_freq_R
  # Per group and half: cos and sign * sin in the first group, 1 and 0 in the others.
  first_group_Gx1x1 = (jnp.arange(groups) == 0)[:, None, None]
  cos_BxTx1xGx1xR = jnp.where(first_group_Gx1x1, jnp.cos(angles_BxTxR)[:, :, None, None, None],
                              1.0)
  # rotate_half(x) = (-second half, first half): the pair reversed, its first half negated.
  sin_BxTx1xGx2xR = jnp.where(first_group_Gx1x1, jnp.sin(angles_BxTxR)[:, :, None, None, None] *
                              jnp.array([[-1.0], [1.0]]), 0.0)
  x_BxTxNxGx2xR = x_BxTxNxH.astype(jnp.float32).reshape(*leading, groups, 2, rotary_dims // 2)
  rotated = (x_BxTxNxGx2xR * cos_BxTx1xGx1xR +
             jnp.flip(x_BxTxNxGx2xR, axis=-2) * sin_BxTx1xGx2xR)
  return rotated.reshape(x_BxTxNxH.shape).astype(x_BxTxNxH.dtype)


class Attention(nnx.Module):
  """Multi-head attention with grouped-query K/V, fused QKV projection and rotary positions
  (after RMSNorms of q and k where `qk_norm` asks for them)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    heads = config.num_heads + 2 * config.num_kv_heads
    self.qkv = _linear(config, config.model_dim, heads * config.head_dim, rngs=rngs,
                       bias=config.qkv_bias)
    # GPT-2's scaled init for projections that write into the residual stream.
    self.out = _linear(config, config.num_heads * config.head_dim, config.model_dim, rngs=rngs,
                       stddev=_INIT_STDDEV / (2 * config.num_layers) ** 0.5)
    if config.qk_norm:  # Over each head's dims, or over all heads' dims of q and of k.
      heads = (1, 1) if config.qk_norm == "head" else (config.num_heads, config.num_kv_heads)
      self.q_norm = _norm(config, rngs=rngs, dim=heads[0] * config.head_dim)
      self.k_norm = _norm(config, rngs=rngs, dim=heads[1] * config.head_dim)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT):
    c = self.config
    batch, length, _ = x_BxTxD.shape
    qkv = self.qkv(x_BxTxD).reshape(batch, length, c.num_heads + 2 * c.num_kv_heads, c.head_dim)
    q_BxTxNxH = qkv[:, :, :c.num_heads]
    k_BxTxKxH = qkv[:, :, c.num_heads:c.num_heads + c.num_kv_heads]
    v_BxTxKxH = qkv[:, :, c.num_heads + c.num_kv_heads:]
    if c.qk_norm == "head":
      q_BxTxNxH, k_BxTxKxH = self.q_norm(q_BxTxNxH), self.k_norm(k_BxTxKxH)
    elif c.qk_norm == "projection":
      q_BxTxNxH = self.q_norm(q_BxTxNxH.reshape(batch, length, -1)).reshape(q_BxTxNxH.shape)
      k_BxTxKxH = self.k_norm(k_BxTxKxH.reshape(batch, length, -1)).reshape(k_BxTxKxH.shape)
    inv_freq_R = rotary_inverse_frequencies(c)
    q_BxTxNxH = apply_rotary(q_BxTxNxH, positions_BxT, inv_freq_R)
    k_BxTxKxH = apply_rotary(k_BxTxKxH, positions_BxT, inv_freq_R)
    y_BxTxNxH = attention.attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                                 c.attention)
    return self.out(y_BxTxNxH.reshape(batch, length, c.num_heads * c.head_dim))


def _gelu(x: jax.Array) -> jax.Array:
  """Exact GELU as torch computes it: through erf, in float32 whatever the dtype of `x` (as
  torch's kernels compute a bfloat16 GELU), with one rounding back to it; in bfloat16 each of
  its operations rounded, the erf's argument too. On an H200 no slower: forward and backward
  25.0 ms of pythia-410m's step at 32 x 2048, against 26.2 in bfloat16. jax.nn.gelu's erfc
  form is as accurate but 3x slower on XLA:CPU (1.8 against 0.6 ms at 4096 x 512)."""
  x_float32 = x.astype(jnp.float32)
  return (x_float32 * 0.5 * (1 + jax.lax.erf(x_float32 * np.float32(np.sqrt(0.5))))
          ).astype(x.dtype)


class Mlp(nnx.Module):
  """GELU MLP (pythia) or SwiGLU MLP (llama)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.family = config.family
    out_stddev = _INIT_STDDEV / (2 * config.num_layers) ** 0.5
    self.up = _linear(config, config.model_dim, config.mlp_dim, rngs=rngs)
    if config.family == "llama":
      self.gate = _linear(config, config.model_dim, config.mlp_dim, rngs=rngs)
    self.down = _linear(config, config.mlp_dim, config.model_dim, rngs=rngs, stddev=out_stddev)

  def __call__(self, x_BxTxD):
    if self.family == "llama":
      return self.down(jax.nn.silu(self.gate(x_BxTxD)) * self.up(x_BxTxD))
    return self.down(_gelu(self.up(x_BxTxD)))


class Block(nnx.Module):
  """Pythia: x + attn(norm1 x) + mlp(norm2 x). Llama: h = x + attn(norm1 x); h + mlp(norm2 h).
  OLMo 2 (`post_norm`): h = x + norm1(attn x); h + norm2(mlp h)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.parallel_residual = config.family == "pythia" and not config.sequential_residual
    self.post_norm = config.post_norm
    self.attention_norm = _norm(config, rngs=rngs)
    self.attention = Attention(config, rngs=rngs)
    self.mlp_norm = _norm(config, rngs=rngs)
    self.mlp = Mlp(config, rngs=rngs)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT):
    if self.post_norm:
      h_BxTxD = x_BxTxD + self.attention_norm(self.attention(x_BxTxD, positions_BxT,
                                                             segment_ids_BxT))
      return h_BxTxD + self.mlp_norm(self.mlp(h_BxTxD))
    attended = self.attention(self.attention_norm(x_BxTxD), positions_BxT, segment_ids_BxT)
    if self.parallel_residual:
      return x_BxTxD + attended + self.mlp(self.mlp_norm(x_BxTxD))
    h_BxTxD = x_BxTxD + attended
    return h_BxTxD + self.mlp(self.mlp_norm(h_BxTxD))


class Transformer(nnx.Module):
  """Token ids (B, T) -> next-token logits (B, T, V) in float32."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype = jnp.dtype(config.compute_dtype)
    self.embed = _Embed(config.vocab_size, config.model_dim, dtype=dtype,
                        param_dtype=jnp.float32,
                        embedding_init=nnx.initializers.normal(_INIT_STDDEV), rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = _norm(config, rngs=rngs)
    if not config.tie_embeddings:  # Applied by output_head.logits, in float32 by default.
      self.unembed = nnx.Linear(config.model_dim, config.vocab_size, use_bias=False,
                                dtype=jnp.float32, param_dtype=jnp.float32,
                                kernel_init=nnx.initializers.normal(_INIT_STDDEV), rngs=rngs)

  def __call__(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None):
    x_BxTxD = self.features(tokens_BxT, positions_BxT, segment_ids_BxT)
    logits_NxV = output_head.logits(_rows(x_BxTxD), self.head_kernel(), self.config.head_dtype)
    return logits_NxV.reshape(*tokens_BxT.shape, -1)

  def head_kernel(self) -> jax.Array:
    """(D, V): the output head's weights, the embedding's transpose where they are tied."""
    if self.config.tie_embeddings:
      return self.embed.embedding[...].T
    return self.unembed.kernel[...]

  def features(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None) -> jax.Array:
    """(B, T, D) in float32: the final norm's output, which the output head reads."""
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones_like(tokens_BxT)
    x_BxTxD = self.embed(tokens_BxT)
    apply_block = lambda blk, x: blk(x, positions_BxT, segment_ids_BxT)
    if self.config.remat != "none":
      apply_block = nnx.remat(apply_block, policy=_REMAT_POLICIES[self.config.remat])
    for block in self.blocks:
      x_BxTxD = apply_block(block, x_BxTxD)
    return self.final_norm(x_BxTxD).astype(jnp.float32)


def abstract_params(config: ModelConfig) -> nnx.State:
  """The parameter state's shapes and dtypes, allocating nothing."""
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  return nnx.state(abstract, nnx.Param)


def parameter_counts(config: ModelConfig) -> tuple[int, int]:
  """(total, non-embedding) parameter counts, computed from abstract shapes (no allocation)."""
  total = sum(leaf.size for leaf in jax.tree.leaves(abstract_params(config)))
  embedding = config.vocab_size * config.model_dim * (1 if config.tie_embeddings else 2)
  return total, total - embedding


def training_flops_per_token(config: ModelConfig, seq_len: int) -> int:
  """Training FLOPs per token of this model at `seq_len` (`model_config.flops_per_token`)."""
  _, non_embedding = parameter_counts(config)
  return model_config.flops_per_token(config, seq_len, non_embedding)
