"""AdamW without its learning rate: clipping, Adam moments and decoupled weight decay.

The learning rate is applied by the train step from the run's own step counter
(`train_step.py`), not from optax's internal count, so that resetting the optimizer state
at a new stage never silently restarts the schedule.
"""

from __future__ import annotations

import ml_collections
import optax
from jax.tree_util import DictKey, GetAttrKey, tree_map_with_path

from cpt_jax.config_error import ConfigError

_FIELDS = ("b1", "b2", "eps", "weight_decay", "decay_norms", "decay_biases",
           "decay_embeddings", "grad_clip_norm", "microbatches")


def default_config() -> ml_collections.ConfigDict:
  """The `config.optimizer` block, with the seed paper's AdamW settings."""
  config = ml_collections.ConfigDict()
  config.b1 = 0.9  # Adam's first-moment decay.
  config.b2 = 0.95  # Adam's second-moment decay.
  config.eps = 1e-8  # Adam's denominator epsilon.
  config.weight_decay = 0.1  # Decoupled weight decay, multiplied by the learning rate.
  config.decay_norms = False  # Apply weight decay to normalization scales and shifts.
  config.decay_biases = False  # Apply weight decay to biases.
  config.decay_embeddings = False  # Apply weight decay to input and output embeddings.
  config.grad_clip_norm = 1.0  # Global-norm gradient clipping; 0 disables it.
  config.microbatches = 1  # Gradient accumulation: each batch is split into this many scans.
  return config


def _names(path) -> list[str]:
  return [str(k.key if isinstance(k, DictKey) else k.name if isinstance(k, GetAttrKey) else k)
          for k in path]


def parameter_kind(path) -> str:
  """'embedding', 'norm', 'bias' or 'weight', from a parameter's path in the model state."""
  names = _names(path)
  if any(name in ("embed", "unembed") for name in names):
    return "embedding"
  if any(name.endswith("norm") for name in names):
    return "norm"
  if "bias" in names:
    return "bias"
  return "weight"


def weight_decay_mask(params, config: ml_collections.ConfigDict):
  decayed = {"weight": True, "norm": config.decay_norms, "bias": config.decay_biases,
             "embedding": config.decay_embeddings}
  return tree_map_with_path(lambda path, _: decayed[parameter_kind(path)], params)


def validate(config: ml_collections.ConfigDict) -> None:
  unknown = sorted(set(config.keys()) - set(_FIELDS))
  if unknown:
    raise ConfigError(f"config.optimizer has unknown fields {unknown}; expected {list(_FIELDS)}")
  for field in ("b1", "b2"):
    if not 0.0 <= config[field] < 1.0:
      raise ConfigError(f"optimizer.{field}={config[field]}: expected a value in [0, 1)")
  for field in ("eps", "weight_decay", "grad_clip_norm"):
    if config[field] < 0:
      raise ConfigError(f"optimizer.{field}={config[field]}: expected a value >= 0")
  if not isinstance(config.microbatches, int) or config.microbatches < 1:
    raise ConfigError(f"optimizer.microbatches={config.microbatches}: expected an integer >= 1")


def make(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Gradient -> update direction; the train step scales it by -learning_rate."""
  validate(config)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps))
  if config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(
        config.weight_decay, mask=lambda params: weight_decay_mask(params, config)))
  return optax.chain(*parts)
