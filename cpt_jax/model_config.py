"""Model hyper-parameters: the `ModelConfig` record, named presets, and FLOPs per token.

Owns the shape of a model, not its code (`model.py`) nor its parameters. Presets reproduce
published architectures exactly: the Pythia ones match the parameter counts of the GPT-NeoX
checkpoints with the padded vocabulary of 50304.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import ml_collections
from ml_collections import config_dict

from cpt_jax.config_error import ConfigError

Family = Literal["pythia", "llama"]
FAMILIES = ("pythia", "llama")
COMPUTE_DTYPES = ("float32", "bfloat16")
ROPE_SCALINGS = ("", "llama3")
QK_NORMS = ("", "head", "projection")  # ModelConfig.qk_norm says what each is.
REMAT_POLICIES = ("none", "dots", "full")
ATTENTIONS = ("auto", "xla", "chunked", "cudnn", "splash")  # attention.py says what each is.
HEAD_MATMUL_DTYPES = ("float32", "compute")  # output_head.py says what each is.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only Transformer. `family` picks the block design:

  - "pythia" (GPT-NeoX): LayerNorm with bias, parallel attention + MLP residual (sequential
    with `sequential_residual`), GELU MLP, biases everywhere, rotary on `rotary_pct` (default
    0.25) of each head's dims, untied embeddings.
  - "llama": RMSNorm, sequential residual, SwiGLU MLP, no biases, rotary on all dims by
    default, grouped-query attention (`num_kv_heads` < `num_heads`), optionally tied
    embeddings, optionally Llama 3.1's rotary scaling (`rope_scaling="llama3"`), optionally
    biases on the query, key and value projections (`qkv_bias`: Qwen2's design),
    optionally Mistral's attention window (`sliding_window`), optionally RMSNorms on the
    queries and keys before rotary (`qk_norm`: Qwen3's per head, OLMo 2's over all heads),
    optionally norms on each sublayer's output rather than its input (`post_norm`: OLMo 2).
  """

  family: Family = "pythia"
  vocab_size: int = 4096
  num_layers: int = 4
  model_dim: int = 128
  num_heads: int = 4
  num_kv_heads: int = 4
  mlp_dim: int = 512
  max_seq_len: int = 256
  rotary_pct: float | None = None  # Share of each head's dims rotated; None: the family's.
  rotary_base: float = 10000.0
  tie_embeddings: bool = False
  norm_eps: float = 1e-5
  compute_dtype: str = "float32"
  # Activations the backward pass recomputes instead of keeping, per block: "none"; "dots":
  # keep the projections' outputs, recompute attention and elementwise ops; "full": keep only
  # each block's input.
  remat: str = "none"
  attention: str = "auto"  # The kernel (attention.py): auto, xla, chunked, cudnn or splash.
  # Tokens per piece of the output head and loss; 0: all at once. A piece's gradients are
  # taken with its forward pass, so (piece, vocab) logits are live rather than (batch x seq,
  # vocab), with nothing recomputed: for large vocabularies (Llama 3's 128k).
  loss_chunk_tokens: int = 0
  # The output head's matmul operands: "float32", or "compute" (compute_dtype operands,
  # float32 accumulation and logits, as torch.autocast runs transformers' head: about twice
  # as fast on GPUs under bfloat16). The loss is float32 either way (output_head.py).
  head_matmul_dtype: str = "float32"
  attention_head_dim: int = 0  # Dims per head; 0: model_dim // num_heads (Llama's head_dim).
  sequential_residual: bool = False  # pythia: GPT-NeoX's use_parallel_residual=False.
  qkv_bias: bool = False  # llama: biases on the q, k and v projections (Qwen2, Qwen2.5).
  # llama: RMSNorms on q and k before rotary. "": none; "head": over each head's dims (Qwen3);
  # "projection": over all heads' dims of q, and of k (OLMo 2).
  qk_norm: str = ""
  # llama: each block normalises its attention's and MLP's outputs, before their residual adds,
  # instead of their inputs (OLMo 2).
  post_norm: bool = False
  # llama: Mistral's attention window, the keys a query sees counting itself; 0: the whole
  # context. cpt_jax attends over whole sequences, so a run's may be at most this long, where
  # the window never applies; it is kept so that an export attends as the import did.
  sliding_window: int = 0
  rope_scaling: str = ""  # "" or "llama3" (Llama 3.1+: the four rope_* fields below).
  rope_scaling_factor: float = 8.0  # llama3: how much longer the context became.
  rope_low_freq_factor: float = 1.0  # llama3: wavelengths beyond context / this are scaled.
  rope_high_freq_factor: float = 4.0  # llama3: wavelengths below context / this are kept.
  rope_original_context: int = 8192  # llama3: the context before scaling.

  @property
  def head_dim(self) -> int:
    return self.attention_head_dim or self.model_dim // self.num_heads

  @property
  def head_dtype(self) -> str:
    """The output head's matmul operand dtype (`head_matmul_dtype`)."""
    return self.compute_dtype if self.head_matmul_dtype == "compute" else "float32"

  @property
  def rotary_fraction(self) -> float:
    return family_rotary_fraction(self.family) if self.rotary_pct is None else self.rotary_pct

  @property
  def rotary_dims(self) -> int:
    """Rotated dims per head; even, since rotary pairs dims."""
    return int(self.head_dim * self.rotary_fraction) // 2 * 2

  @property
  def use_bias(self) -> bool:
    return self.family == "pythia"

  def check_sequence_length(self, length: int, field: str) -> None:
    """Refuses sequences longer than the context, or than Mistral's window (see
    `sliding_window`)."""
    if length > self.max_seq_len:
      raise ConfigError(f"{field}={length}: exceeds the model's context "
                        f"model.max_seq_len={self.max_seq_len}")
    if self.sliding_window and length > self.sliding_window:
      raise ConfigError(f"{field}={length}: exceeds the model's attention window "
                        f"model.sliding_window={self.sliding_window} (cpt_jax attends over "
                        "whole sequences: they may be at most that long)")

  def validate(self) -> "ModelConfig":
    def fail(field, expected):
      raise ConfigError(f"model.{field}={getattr(self, field)!r}: expected {expected}")

    if self.family not in FAMILIES:
      fail("family", f"one of {FAMILIES}")
    for field in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads",
                  "mlp_dim", "max_seq_len"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        fail(field, "a positive integer")
    if not self.attention_head_dim and self.model_dim % self.num_heads:
      fail("num_heads", f"a divisor of model_dim={self.model_dim}")
    if not isinstance(self.attention_head_dim, int) or self.attention_head_dim < 0:
      fail("attention_head_dim", "an integer >= 0 (0: model_dim // num_heads)")
    if self.num_heads % self.num_kv_heads:
      fail("num_kv_heads", f"a divisor of num_heads={self.num_heads}")
    if not 0.0 <= self.rotary_fraction <= 1.0:
      fail("rotary_pct", "a fraction in [0, 1]")
    if self.rope_scaling not in ROPE_SCALINGS:
      fail("rope_scaling", f"one of {ROPE_SCALINGS}")
    if self.qkv_bias and self.family != "llama":
      fail("qkv_bias", "False outside the llama family (pythia has every bias)")
    if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
      fail("sliding_window", "an integer >= 0 (0: the whole context)")
    if self.sliding_window and (self.family != "llama" or self.qkv_bias):
      fail("sliding_window", "0 outside the llama family without qkv_bias (Mistral's design)")
    # The llama family's options combine as the Hugging Face architectures they come from do,
    # so that every model can be exported.
    if self.qk_norm not in QK_NORMS:
      fail("qk_norm", f"one of {QK_NORMS}")
    if self.qk_norm and (self.family != "llama" or self.qkv_bias or self.sliding_window):
      fail("qk_norm", "'' outside the llama family without qkv_bias or sliding_window (Qwen3's "
                      "and OLMo 2's designs)")
    if self.post_norm != (self.qk_norm == "projection"):
      fail("post_norm", f"{not self.post_norm}: OLMo 2's design has both post_norm and "
                        "qk_norm='projection', and no other has either")
    if self.sequential_residual and self.family != "pythia":
      fail("sequential_residual", "False outside the pythia family (Llama is sequential)")
    if self.remat not in REMAT_POLICIES:
      fail("remat", f"one of {REMAT_POLICIES}")
    if not isinstance(self.loss_chunk_tokens, int) or self.loss_chunk_tokens < 0:
      fail("loss_chunk_tokens", "an integer >= 0 (0: the whole batch at once)")
    if self.head_matmul_dtype not in HEAD_MATMUL_DTYPES:
      fail("head_matmul_dtype", f"one of {HEAD_MATMUL_DTYPES}")
    if self.attention not in ATTENTIONS:
      fail("attention", f"one of {ATTENTIONS}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      fail("compute_dtype", f"one of {COMPUTE_DTYPES}")
    if self.tie_embeddings and self.family == "pythia":
      fail("tie_embeddings", "False for the pythia family (GPT-NeoX unties them)")
    return self


def family_rotary_fraction(family: str) -> float:
  """The share of each head's dims rotated where `rotary_pct` is None: GPT-NeoX's 0.25 for
  Pythia, all of them for Llama."""
  return 0.25 if family == "pythia" else 1.0


def _pythia(vocab_size=50304, max_seq_len=2048, **shape) -> ModelConfig:
  return ModelConfig(family="pythia", vocab_size=vocab_size, max_seq_len=max_seq_len,
                     mlp_dim=4 * shape["model_dim"], num_kv_heads=shape["num_heads"], **shape)


PRESETS: dict[str, ModelConfig] = {
    # ~1.8M parameters with a 4k vocabulary: trains in minutes on a laptop CPU.
    "tiny": _pythia(vocab_size=4096, max_seq_len=256, num_layers=4, model_dim=128, num_heads=4),
    "pythia-70m": _pythia(num_layers=6, model_dim=512, num_heads=8),
    "pythia-160m": _pythia(num_layers=12, model_dim=768, num_heads=12),
    "pythia-410m": _pythia(num_layers=24, model_dim=1024, num_heads=16),
    "pythia-1b": _pythia(num_layers=16, model_dim=2048, num_heads=8),
    # A small Llama: GQA with 2 query heads per KV head, SwiGLU width ~8/3 d, tied embeddings.
    "llama-small": ModelConfig(family="llama", vocab_size=32000, num_layers=8, model_dim=512,
                               num_heads=8, num_kv_heads=4, mlp_dim=1408, max_seq_len=2048,
                               tie_embeddings=True, norm_eps=1e-6),
}


def preset(name: str) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"model preset {name!r} is unknown; expected one of {sorted(PRESETS)}")
  return PRESETS[name]


def preset_config_dict(name: str, **overrides) -> ml_collections.ConfigDict:
  """A preset as the `config.model` block of an experiment config (every field declared)."""
  fields = dataclasses.asdict(dataclasses.replace(preset(name), **overrides))
  if fields["rotary_pct"] is None:
    # The family's share, so that `--config.model.family=llama` on a Pythia preset rotates
    # every dim, as Llama does (and its export needs); typed, so that an override parses.
    fields["rotary_pct"] = config_dict.placeholder(float)
  return ml_collections.ConfigDict(fields)


def from_config_dict(model: ml_collections.ConfigDict) -> ModelConfig:
  """The validated `ModelConfig` of an experiment's `config.model` block."""
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(model.keys()) - known)
  if unknown:
    raise ConfigError(f"config.model has unknown fields {unknown}; expected fields {sorted(known)}")
  fields = model.to_dict()
  if isinstance(fields.get("remat"), bool):  # Before remat policies: True meant "full".
    fields["remat"] = "full" if fields["remat"] else "none"
  return ModelConfig(**fields).validate()


def flops_per_token(config: ModelConfig, seq_len: int, non_embedding_params: int) -> int:
  """Training FLOPs per token (forward + backward), PaLM's convention used for MFU.

  6 per weight of every matmul (the non-embedding weights plus the output projection, which
  is a matmul even when tied; the input lookup is not), plus 12 * layers * dim * seq_len
  for the attention scores and values (counted over the full square, as PaLM does).
  """
  matmul_weights = non_embedding_params + config.model_dim * config.vocab_size
  attention_width = config.num_heads * config.head_dim
  return 6 * matmul_weights + 12 * config.num_layers * attention_width * seq_len
