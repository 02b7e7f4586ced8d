"""Checking an experiment config once, early, with errors that name the field.

Owns cross-field rules (sequence length vs. the model's context, evaluation sources, the
parallel mode) and finding the config field an unknown override meant. Per-block rules live
with their blocks (`model_config`, `optimizer`, `run_plan`, `schedule_config`).
"""

from __future__ import annotations

import difflib
import importlib.util

import ml_collections
from absl import flags
from ml_collections import config_flags

from cpt_jax import base_config
from cpt_jax import corpora
from cpt_jax import model_config
from cpt_jax import optimizer
from cpt_jax import profiling
from cpt_jax import run_plan
from cpt_jax import schedule_config
from cpt_jax import token_cache
from cpt_jax import tokenizer as tokenizer_lib
from cpt_jax.config_error import ConfigError


def _check_int(field: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"{field}={value!r}: expected an integer >= {minimum}")


def require_experiment(config: ml_collections.ConfigDict) -> None:
  """A study config (`cpt-jax study`'s base and variants) is not an experiment: one line
  saying so, rather than a missing field's traceback."""
  if "model" in config and "data" in config:
    return
  if "variants" in config:
    raise ConfigError("the config is a study (base and variants): run it with `cpt-jax "
                      "study`, or give an experiment config (see configs/demo.py)")
  raise ConfigError("the config has no 'model' or 'data'; expected an experiment config "
                    "(see configs/demo.py)")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field."""
  require_experiment(config)
  model = model_config.from_config_dict(config.model)
  optimizer.validate(config.optimizer)
  data = config.data
  _check_int("data.seq_len", data.seq_len, 1)
  _check_int("data.global_batch_size", data.global_batch_size, 1)
  model.check_sequence_length(data.seq_len, "data.seq_len")
  if data.global_batch_size % config.optimizer.microbatches:
    raise ConfigError(f"optimizer.microbatches={config.optimizer.microbatches}: must divide "
                      f"data.global_batch_size={data.global_batch_size}")
  if data.tokenizer.kind not in tokenizer_lib.KINDS:
    raise ConfigError(f"data.tokenizer.kind={data.tokenizer.kind!r}: expected one of "
                      f"{tokenizer_lib.KINDS}")
  token_cache.check_cache_dir(data.token_cache_dir)
  if not data.sources:
    raise ConfigError("data.sources is empty; expected {name: corpora.source_config(...)}")
  for name, source in data.sources.items():
    corpora.check_kind(name, source)
  if data.tokenizer.kind == "bpe" and data.tokenizer.train_source and (
      data.tokenizer.train_source not in data.sources):
    raise ConfigError(f"data.tokenizer.train_source={data.tokenizer.train_source!r}: expected "
                      f"one of the sources {sorted(data.sources.keys())}")
  for name in config.eval.sources:
    if name not in data.sources:
      several = ("; several are given as --config.eval.sources=prose "
                 "--config.eval.sources=code" if "," in name else "")
      raise ConfigError(f"eval.sources names unknown source {name!r}; known sources: "
                        f"{sorted(data.sources.keys())}{several}")
  if config.parallel not in base_config.PARALLEL_MODES:
    raise ConfigError(f"parallel={config.parallel!r}: expected one of {base_config.PARALLEL_MODES}")
  for field in ("eval.every", "log.every", "checkpoint.every", "eval.max_batches",
                "checkpoint.keep", "eval.dense_every"):
    section, key = field.split(".")
    _check_int(field, config[section][key], 1)
  _check_int("checkpoint.keep_every", config.checkpoint.keep_every, 0)
  if not isinstance(config.eval.document_masking, bool):
    raise ConfigError(f"eval.document_masking={config.eval.document_masking!r}: expected true or "
                      "false")
  schedule_config.duration_steps(config.eval.dense_start, 1, "eval.dense_start")
  profiling.parse_steps(config.profile.steps)
  if config.log.wandb.project and importlib.util.find_spec("wandb") is None:
    raise ConfigError(f"log.wandb.project={config.log.wandb.project!r}: wandb is not installed; "
                      "pip install 'cpt_jax[wandb]'")
  for field, allowed in (("optimizer_state", run_plan.OPTIMIZER_STATE_POLICIES),
                         ("step", ("reset", "continue")),
                         ("data", ("fresh", "continue")), ("model", ("source", "config"))):
    if config.init[field] not in allowed:
      raise ConfigError(f"init.{field}={config.init[field]!r}: expected one of {allowed}")
  run_plan.plan(config)
  run_plan.learning_rate_schedule(config)


def evaluation_sources(config: ml_collections.ConfigDict) -> list[str]:
  return list(config.eval.sources) or sorted(config.data.sources.keys())


def unknown_override(config: ml_collections.ConfigDict, path: str) -> str | None:
  """For an override path like 'stages[1].schedul.peak', a message naming the first part
  that does not exist and the closest existing names; None if the path exists."""
  node, walked = config, "config"
  for part in path.replace("[", ".[").split("."):
    if not part:
      continue
    if part.startswith("["):
      index = int(part.strip("[]"))
      if not isinstance(node, (list, tuple)) or not -len(node) <= index < len(node):
        return f"{walked} has no element {part}"
      node, walked = node[index], walked + part
      continue
    keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=3)
      if close:
        hint = f"; did you mean {', '.join(walked + '.' + c for c in close)}?"
      elif keys:
        hint = f"; it has {sorted(keys)}"
      else:
        hint = f"; {walked} has no fields"
        if walked.endswith(".replay"):
          hint += " (a stage replays sources that earlier stages trained on)"
      return f"unknown config field {walked}.{part}{hint}"
    node, walked = node[part], f"{walked}.{part}"
  return None


def override_from_command_line(config: ml_collections.ConfigDict,
                               args: list[str]) -> ml_collections.ConfigDict:
  """`config` with `--config.PATH=VALUE` arguments applied as `train` applies them to a
  config file (ml-collections' parsers, typed by the field): for a config that comes from a
  run directory rather than a file (`cpt-jax anneal`). Changes `config` in place."""
  for arg in args:
    message = unknown_override(config, arg[len("--config."):].split("=")[0])
    if message:
      raise ConfigError(message)
  argv = ["cpt-jax", *args]
  values = flags.FlagValues()  # Private: the command line's own flags are parsed already.
  config_flags.DEFINE_config_dict("config", config, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except (flags.Error, AttributeError, KeyError, IndexError, TypeError) as error:
    raise ConfigError(f"bad --config override: {str(error).splitlines()[0]}") from None
  return values.config
