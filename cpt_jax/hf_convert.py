"""Hugging Face <-> cpt_jax: the configs and tensor layouts of GPT-NeoX (Pythia), Llama, and
the Llama family's variants, each expressed by the fields of `ModelConfig` it sets:
Qwen2 (biases on q, k and v: `qkv_bias`), Qwen3 (an RMSNorm on each q and k head:
`qk_norm="head"`), OLMo 2 (RMSNorms over all of q and of k, and norms on each sublayer's
output instead of its input: `qk_norm="projection"`, `post_norm`) and Mistral (an attention
window: `sliding_window`; a Mistral without one is a Llama, and is exported as one).

Owns the correspondence only, as pure functions over arrays (jax.numpy, so shapes can be
checked with `jax.eval_shape` before any tensor is read); reading and writing model
directories is `hf_checkpoint.py`'s. Checked against transformers' own modeling code:

- torch Linear weights are (out, in); Flax kernels are (in, out): transposed both ways.
- GPT-NeoX fuses q, k and v per head: `query_key_value` is (heads, 3, head_dim) x dim, while
  cpt_jax's `qkv` kernel holds [all q heads | all k heads | all v heads].
- Llama's (Qwen's, Mistral's) q/k/v projections are separate (k and v with
  `num_key_value_heads`); HF's weights are already in the rotate-half rotary layout cpt_jax
  uses.
- Pythia's output head is `embed_out` on disk (transformers 5 calls it `lm_head` in memory).

Anything the converter cannot express exactly (another architecture, activation, rotary
scaling, biases where cpt_jax has none) is refused with a `ValueError` naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cpt_jax import model as model_lib
from cpt_jax.model_config import ModelConfig
from cpt_jax.config_error import ConfigError

_MODEL_TYPES = {"gpt_neox": "pythia", "llama": "llama", "qwen2": "llama", "qwen3": "llama",
                "olmo2": "llama", "mistral": "llama"}
_ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "olmo2": "Olmo2ForCausalLM", "mistral": "MistralForCausalLM"}


def hf_model_type(config: ModelConfig) -> str:
  """The HF model_type that expresses `config` exactly."""
  if config.family == "pythia":
    return "gpt_neox"
  if config.sliding_window:
    return "mistral"
  if config.qk_norm:
    return {"head": "qwen3", "projection": "olmo2"}[config.qk_norm]
  return "qwen2" if config.qkv_bias else "llama"


@dataclasses.dataclass(frozen=True)
class Correspondence:
  """One cpt_jax parameter and the HF tensors it is made of."""
  path: str  # "blocks.0.attention.qkv.kernel"
  hf_names: tuple[str, ...]
  to_cpt: Callable[..., jax.Array]  # HF tensors (in hf_names order) -> the parameter.
  to_hf: Callable[[jax.Array], tuple[jax.Array, ...]]  # The parameter -> HF tensors.


def _same(name: str, path: str) -> Correspondence:
  return Correspondence(path, (name,), lambda x: x, lambda x: (x,))


def _linear(name: str, path: str) -> Correspondence:
  """torch (out, in) <-> Flax (in, out)."""
  return Correspondence(path, (name,), lambda w: w.T, lambda k: (k.T,))


def _fused_neox_qkv(name: str, path: str, heads: int, head_dim: int) -> Correspondence:
  """HF rows (heads, 3, head_dim) <-> cpt_jax columns [q heads | k heads | v heads]."""

  def to_cpt(w):
    per_head = w.reshape(heads, 3, head_dim, *w.shape[1:])
    q, k, v = (per_head[:, i].reshape(heads * head_dim, *w.shape[1:]) for i in range(3))
    return jnp.concatenate([q, k, v], axis=0).T

  def to_hf(x):
    q, k, v = jnp.split(x.T, 3, axis=0)
    parts = [part.reshape(heads, head_dim, *part.shape[1:]) for part in (q, k, v)]
    return (jnp.stack(parts, axis=1).reshape(3 * heads * head_dim, *x.T.shape[1:]),)

  return Correspondence(path, (name,), to_cpt, to_hf)


def _split_llama_qkv(prefix: str, path: str, config: ModelConfig,
                    tensor: str = "weight") -> Correspondence:
  """q_proj, k_proj and v_proj's weights (out, in), or biases (out,) <-> the fused qkv
  kernel (in, q + k + v), or bias."""
  q_rows = config.num_heads * config.head_dim
  kv_rows = config.num_kv_heads * config.head_dim

  def to_hf(fused):
    q, k, v = jnp.split(fused.T, [q_rows, q_rows + kv_rows], axis=0)
    return q, k, v

  return Correspondence(path, tuple(f"{prefix}.{p}_proj.{tensor}" for p in "qkv"),
                        lambda q, k, v: jnp.concatenate([q, k, v], axis=0).T, to_hf)


def correspondences(config: ModelConfig) -> list[Correspondence]:
  """Every parameter of `config`'s model with its HF tensors, in the model's order."""
  result = []
  if config.family == "pythia":
    result.append(_same("gpt_neox.embed_in.weight", "embed.embedding"))
    for i in range(config.num_layers):
      hf, cpt = f"gpt_neox.layers.{i}", f"blocks.{i}"
      for hf_norm, cpt_norm in (("input_layernorm", "attention_norm"),
                                ("post_attention_layernorm", "mlp_norm")):
        result += [_same(f"{hf}.{hf_norm}.weight", f"{cpt}.{cpt_norm}.scale"),
                   _same(f"{hf}.{hf_norm}.bias", f"{cpt}.{cpt_norm}.bias")]
      qkv = f"{hf}.attention.query_key_value"
      result += [
          _fused_neox_qkv(f"{qkv}.weight", f"{cpt}.attention.qkv.kernel", config.num_heads,
                          config.head_dim),
          _fused_neox_qkv(f"{qkv}.bias", f"{cpt}.attention.qkv.bias", config.num_heads,
                          config.head_dim)]
      for hf_linear, cpt_linear in (("attention.dense", "attention.out"),
                                    ("mlp.dense_h_to_4h", "mlp.up"),
                                    ("mlp.dense_4h_to_h", "mlp.down")):
        result += [_linear(f"{hf}.{hf_linear}.weight", f"{cpt}.{cpt_linear}.kernel"),
                   _same(f"{hf}.{hf_linear}.bias", f"{cpt}.{cpt_linear}.bias")]
    result += [_same("gpt_neox.final_layer_norm.weight", "final_norm.scale"),
               _same("gpt_neox.final_layer_norm.bias", "final_norm.bias"),
               _linear("embed_out.weight", "unembed.kernel")]
    return result
  result.append(_same("model.embed_tokens.weight", "embed.embedding"))
  # Where each block's two norms sit: on the sublayers' inputs, or (OLMo 2) their outputs.
  hf_norms = (("post_attention_layernorm", "post_feedforward_layernorm") if config.post_norm
              else ("input_layernorm", "post_attention_layernorm"))
  for i in range(config.num_layers):
    hf, cpt = f"model.layers.{i}", f"blocks.{i}"
    result += [
        _same(f"{hf}.{hf_norms[0]}.weight", f"{cpt}.attention_norm.scale"),
        _same(f"{hf}.{hf_norms[1]}.weight", f"{cpt}.mlp_norm.scale"),
        _split_llama_qkv(f"{hf}.self_attn", f"{cpt}.attention.qkv.kernel", config),
        *([_split_llama_qkv(f"{hf}.self_attn", f"{cpt}.attention.qkv.bias", config, "bias")]
          if config.qkv_bias else []),
        *([_same(f"{hf}.self_attn.{norm}.weight", f"{cpt}.attention.{norm}.scale")
           for norm in ("q_norm", "k_norm")] if config.qk_norm else []),
        _linear(f"{hf}.self_attn.o_proj.weight", f"{cpt}.attention.out.kernel"),
        _linear(f"{hf}.mlp.gate_proj.weight", f"{cpt}.mlp.gate.kernel"),
        _linear(f"{hf}.mlp.up_proj.weight", f"{cpt}.mlp.up.kernel"),
        _linear(f"{hf}.mlp.down_proj.weight", f"{cpt}.mlp.down.kernel")]
  result.append(_same("model.norm.weight", "final_norm.scale"))
  if not config.tie_embeddings:
    result.append(_linear("lm_head.weight", "unembed.kernel"))
  return result


# Names older and newer transformers write for the same tensor.
HF_ALIASES = {"embed_out.weight": ("lm_head.weight",)}


def _rope(hf: dict) -> dict:
  """Rotary settings from transformers 5's `rope_parameters` or the older flat fields."""
  rope = dict(hf.get("rope_parameters") or {})
  legacy = hf.get("rope_scaling") or {}
  rope.setdefault("rope_type", legacy.get("rope_type", legacy.get("type", "default")))
  for key, value in legacy.items():
    rope.setdefault(key, value)
  rope.setdefault("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
  rope.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor",
                                                  hf.get("rotary_pct", None)))
  return rope


def _require(hf: dict, key: str, expected, default, where: str) -> None:
  if hf.get(key, default) != expected:
    raise ConfigError(f"{where}: {key}={hf.get(key, default)!r} is not supported (cpt_jax "
                      f"implements {expected!r})")


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
  """The ModelConfig of an HF `config.json` (as a dict); unsupported options are refused."""
  model_type = hf.get("model_type")
  if model_type not in _MODEL_TYPES:
    raise ConfigError(f"{where}: model_type={model_type!r} is not supported; expected one of "
                      f"{sorted(_MODEL_TYPES)} (GPT-NeoX / Pythia, Llama, Mistral, Qwen2, Qwen3, "
                      "OLMo 2)")
  family = _MODEL_TYPES[model_type]
  if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
    raise ConfigError(f"{where}: use_sliding_window=True is not supported (cpt_jax attends over "
                      "the whole context)")
  rope = _rope(hf)
  try:
    fields = dict(family=family, vocab_size=hf["vocab_size"],
                  num_layers=hf["num_hidden_layers"], model_dim=hf["hidden_size"],
                  num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
                  max_seq_len=hf.get("max_position_embeddings", 2048),
                  rotary_base=float(rope["rope_theta"]))
  except KeyError as error:
    raise ConfigError(f"{where}: no {error.args[0]!r}; expected a {model_type} config") from None
  if family == "pythia":
    _require(hf, "hidden_act", "gelu", "gelu", where)
    _require(hf, "attention_bias", True, True, where)
    _require(hf, "tie_word_embeddings", False, False, where)
    if rope["rope_type"] != "default":
      raise ConfigError(f"{where}: rope_type={rope['rope_type']!r} is not supported for "
                        "gpt_neox; expected 'default'")
    fraction = rope["partial_rotary_factor"]
    fields.update(num_kv_heads=hf["num_attention_heads"], norm_eps=hf.get("layer_norm_eps", 1e-5),
                  rotary_pct=0.25 if fraction is None else float(fraction),
                  sequential_residual=not hf.get("use_parallel_residual", True))
  else:
    _require(hf, "hidden_act", "silu", "silu", where)
    _require(hf, "attention_bias", False, False, where)
    _require(hf, "mlp_bias", False, False, where)
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    fields.update(num_kv_heads=hf.get("num_key_value_heads") or heads,
                  norm_eps=hf.get("rms_norm_eps", 1e-6), rotary_pct=1.0,
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                  attention_head_dim=0 if head_dim * heads == hf["hidden_size"] else head_dim,
                  qkv_bias=model_type == "qwen2", post_norm=model_type == "olmo2",
                  qk_norm={"qwen3": "head", "olmo2": "projection"}.get(model_type, ""),
                  sliding_window=(model_type == "mistral" and hf.get("sliding_window")) or 0)
    if rope["rope_type"] == "llama3":
      fields.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                    rope_low_freq_factor=float(rope["low_freq_factor"]),
                    rope_high_freq_factor=float(rope["high_freq_factor"]),
                    rope_original_context=int(rope["original_max_position_embeddings"]))
    elif rope["rope_type"] != "default":
      raise ConfigError(f"{where}: rope_type={rope['rope_type']!r} is not supported; expected "
                        "none or 'llama3'")
  return ModelConfig(**fields).validate()


def hf_config_from_model(config: ModelConfig, *, bos_token_id: int, eos_token_id: int,
                         dtype: str) -> dict:
  """An HF `config.json` for `config`, with the fields of transformers 5 and older ones."""
  hf_type = hf_model_type(config)
  base = {"architectures": [_ARCHITECTURES[hf_type]], "vocab_size": config.vocab_size,
          "hidden_size": config.model_dim, "num_hidden_layers": config.num_layers,
          "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim,
          "max_position_embeddings": config.max_seq_len, "bos_token_id": bos_token_id,
          "eos_token_id": eos_token_id, "tie_word_embeddings": config.tie_embeddings,
          "torch_dtype": dtype, "dtype": dtype, "initializer_range": 0.02, "use_cache": True}
  rope = {"rope_type": "default", "rope_theta": config.rotary_base}
  if config.family == "pythia":
    rope["partial_rotary_factor"] = config.rotary_fraction
    return {**base, "model_type": "gpt_neox", "hidden_act": "gelu", "attention_bias": True,
            "layer_norm_eps": config.norm_eps, "rotary_pct": config.rotary_fraction,
            "rotary_emb_base": config.rotary_base,
            "use_parallel_residual": not config.sequential_residual, "rope_parameters": rope}
  if config.rotary_dims != config.head_dim:
    raise ConfigError(f"model.rotary_pct={config.rotary_fraction}: Llama rotates every dim; HF's "
                      "LlamaForCausalLM cannot express partial rotary")
  rope_scaling = None
  if config.rope_scaling == "llama3":
    rope_scaling = {"rope_type": "llama3", "factor": config.rope_scaling_factor,
                    "low_freq_factor": config.rope_low_freq_factor,
                    "high_freq_factor": config.rope_high_freq_factor,
                    "original_max_position_embeddings": config.rope_original_context}
    rope = {**rope, **rope_scaling}
  common = {**base, "model_type": hf_type, "hidden_act": "silu",
            "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
            "rms_norm_eps": config.norm_eps, "rope_theta": config.rotary_base,
            "rope_scaling": rope_scaling, "rope_parameters": rope}
  whole_context = {"use_sliding_window": False, "sliding_window": None,
                   "max_window_layers": config.num_layers}
  if hf_type == "qwen2":
    return {**common, **whole_context}
  if hf_type == "qwen3":
    return {**common, **whole_context, "attention_bias": False}
  if hf_type == "olmo2":
    return {**common, "attention_bias": False}
  if hf_type == "mistral":
    return {**common, "sliding_window": config.sliding_window}
  return {**common, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}


def shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Each cpt_jax parameter's shape, by dotted path (from abstract shapes: no allocation)."""
  return {".".join(map(str, path)): tuple(leaf.shape)
          for path, leaf in nnx.to_flat_state(model_lib.abstract_params(config))}


def params_from_flat(config: ModelConfig, flat: dict[str, jax.Array]) -> nnx.State:
  """The model's parameter state from arrays by dotted path."""
  state = model_lib.abstract_params(config)
  pure = nnx.to_pure_dict(state)
  for path in shapes(config):
    node, keys = pure, path.split(".")
    for key in keys[:-1]:
      node = node[int(key) if key.isdigit() else key]
    node[keys[-1]] = flat[path]
  nnx.replace_by_pure_dict(state, pure)
  return state


def flat_from_params(params: nnx.State) -> dict[str, jax.Array]:
  return {".".join(map(str, path)): leaf[...] if isinstance(leaf, nnx.Variable) else leaf
          for path, leaf in nnx.to_flat_state(params)}

