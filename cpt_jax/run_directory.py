"""A run directory's identity: its resolved config and its tokenizer.

Owns `RUN_DIR/config.json` (compared at every resume), `RUN_DIR/data_splits.json` (which
documents each source holds out for validation) and `RUN_DIR/tokenizer.json` (or `.model`):
written with a run's first checkpoint (a start that fails earlier leaves none of them), then
reused by every resume and every later stage. A resume whose config differs in a field that
matters, or whose tokenizer differs, is refused with the differences listed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

from etils import epath
import ml_collections

from cpt_jax import corpora
from cpt_jax import model_config
from cpt_jax import token_cache
from cpt_jax import tokenizer as tokenizer_lib
from cpt_jax.config_error import ConfigError

CONFIG_FILE = "config.json"
# config.model fields that say how the model is computed, not what it is: a run started
# from another run's checkpoint keeps its own.
COMPUTE_FIELDS = ("compute_dtype", "head_matmul_dtype", "remat", "attention",
                  "loss_chunk_tokens")
# Of those, the ones that change the program but not the function it computes (beyond
# float rounding): a resumed run may change them.
_EXECUTION_FIELDS = ("remat", "attention", "loss_chunk_tokens")
_MODEL_DEFAULTS = dataclasses.asdict(model_config.ModelConfig())
_RUN_CONFIG_KEYS = frozenset({"model", "data", "stages"})  # Every run's config.json has them.


class ConfigMismatchError(ConfigError):
  pass


def _flatten(value, prefix: str = "") -> dict[str, object]:
  if isinstance(value, dict):
    items = {}
    for key, child in value.items():
      items.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return items
  if isinstance(value, (list, tuple)):
    items = {}
    for index, child in enumerate(value):
      items.update(_flatten(child, f"{prefix}[{index}]"))
    return items
  return {prefix: value}


def config_as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def fields_that_matter(config_json: dict, stages_done: int) -> dict[str, object]:
  """Model shape, tokenizer, data sources and layout, optimizer, schedules, and the stages up
  to and including the current one: changing these mid-run silently changes the experiment."""
  selected = {key: config_json.get(key) for key in ("model", "optimizer", "schedule", "seed")}
  # A model field added to cpt_jax after the run was stored is taken at its default, which
  # is what the code did before the field existed.
  model = {**_MODEL_DEFAULTS, **(selected["model"] or {})}
  if model["rotary_pct"] is None:  # The family's; runs stored before it was left so hold it.
    model["rotary_pct"] = model_config.family_rotary_fraction(model["family"])
  selected["model"] = {key: value for key, value in model.items()
                       if key not in _EXECUTION_FIELDS}
  data = config_json.get("data", {})
  selected["data"] = {key: data.get(key) for key in ("tokenizer", "seq_len", "global_batch_size",
                                                     "shuffle_seed", "sources")}
  selected["stages"] = config_json.get("stages", [])[:stages_done + 1]
  return _flatten(selected)


def stored_config(workdir: str) -> dict | None:
  """The run's config.json, or None if it has none; a garbled one is named, and so is one
  that is not a cpt-jax run's (a Hugging Face model directory's, say)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as error:
    raise ConfigError(f"{path}: not valid JSON ({str(error)[:100]}); it records the run's "
                      "config: restore it, or start the run in another --workdir") from None
  if not is_run_config(stored):
    if isinstance(stored, dict) and "model_type" in stored:
      raise ConfigError(
          f"{path}: a Hugging Face {stored['model_type']} model's config, not a cpt-jax run's; "
          f"expected a run directory (`cpt-jax import-hf --from={workdir} --workdir=RUN_DIR` "
          "makes one of the model)")
    missing = _RUN_CONFIG_KEYS - (stored.keys() if isinstance(stored, dict) else set())
    raise ConfigError(f"{path}: not a cpt-jax run's config (no {', '.join(sorted(missing))} "
                      "fields); expected a run directory, or a new one")
  return stored


def is_run_config(stored) -> bool:
  """Whether `stored` (a parsed config.json) is a cpt-jax run's."""
  return isinstance(stored, dict) and _RUN_CONFIG_KEYS <= stored.keys()


def check_run_directory(workdir: str) -> None:
  """Refuses a `--workdir` that holds another program's config.json before a run writes its
  own over it: one that is new, a run's, or holds no config.json passes."""
  stored_config(workdir)


def source_config(run_dir: str) -> dict:
  """The config.json of a run another command reads (`--from`); one line if there is none."""
  stored = stored_config(run_dir)
  if stored is None:
    inside = _runs_inside(run_dir)  # A study's directory, or a directory of runs.
    hint = f" (runs inside it: {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})"
    if (epath.Path(run_dir) / "stages").is_dir():  # study.STAGES_DIR: a study's directory.
      hint += (f"; `cpt-jax info --config=STUDY_CONFIG --workdir={run_dir}` describes the "
               "study and which of its runs are done")
    raise ConfigError(f"--from={run_dir}: no config.json there; expected a cpt-jax run "
                      f"directory{hint if inside else ''}")
  return stored


def _runs_inside(directory: str) -> list[str]:
  """The names of the run directories right under `directory`, sorted."""
  path = epath.Path(directory)
  if not path.is_dir():
    return []
  return sorted(child.name for child in path.iterdir() if (child / CONFIG_FILE).exists())


def source_experiment(run_dir: str) -> ml_collections.ConfigDict:
  """The experiment config of a run another command reads (`--from`), as `train` took it."""
  return experiment_from_json(source_config(run_dir))


def experiment_from_json(stored: dict) -> ml_collections.ConfigDict:
  """An experiment config from its JSON form (config.json, a checkpoint's metadata)."""
  stored = dict(stored)
  stages = [ml_collections.ConfigDict(stage) for stage in stored.pop("stages")]
  config = ml_collections.ConfigDict(stored)
  config.stages = stages  # A list of dicts would stay plain dicts.
  return config


def check_config(workdir: str, config: ml_collections.ConfigDict, current_stage: int,
                 allow_change: bool) -> None:
  """On a resume, refuses changed fields that matter (listing them) unless `allow_change`.
  Every process of a run checks, so all of them stop on a mismatch. Nothing is written: the
  config is stored with the run's next checkpoint (`store_identity`)."""
  old = stored_config(workdir)
  if old is None:
    return
  before = fields_that_matter(old, current_stage)
  after = fields_that_matter(config_as_json(config), current_stage)
  changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
  if changed and not allow_change:
    diff = "; ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed)
    raise ConfigMismatchError(
        f"{epath.Path(workdir) / CONFIG_FILE} differs in fields that matter: {diff}. Use another "
        "--workdir, or pass --allow_config_change if the change is intended (e.g. a longer "
        "last stage)")


def store_identity(workdir: str, config: ml_collections.ConfigDict,
                   tokenizer: tokenizer_lib.Tokenizer) -> None:
  """Writes config.json, the tokenizer and data_splits.json: called with a run's first
  checkpoint, so a start that fails before it leaves nothing that refuses the next start."""
  _write_atomically(epath.Path(workdir) / CONFIG_FILE,
                    json.dumps(config_as_json(config), indent=1, sort_keys=True).encode())
  save_tokenizer(workdir, tokenizer)
  record = {name: _split_record(config.data, name) for name in sorted(config.data.sources)}
  _write_atomically(epath.Path(workdir) / "data_splits.json",
                    json.dumps(record, indent=1).encode())


def _split_record(data_config: ml_collections.ConfigDict, name: str) -> dict:
  """Which documents a source holds out. A prepared source names its cache's split, which
  `prepare` fixed, rather than reading the corpus again (at scale, terabytes)."""
  cache_dir = data_config.token_cache_dir
  if token_cache.exists(cache_dir, name, "validation"):
    source = data_config.sources[name]
    return {"kind": source.kind, "validation_fraction": source.validation_fraction,
            "prepared": token_cache.paths(cache_dir, name, "validation")[1],
            "validation_documents": token_cache.read_meta(cache_dir, name,
                                                          "validation")["documents"]}
  return corpora.split_record(name, data_config.sources[name])


def _write_atomically(path: epath.Path, content: bytes) -> None:
  """A temporary file, then a rename: readers never see half a file. Through etils.epath, so
  run directories may be gs:// paths."""
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.parent / f"{path.name}.tmp{os.getpid()}"  # Processes may write the same.
  temporary.write_bytes(content)
  temporary.replace(path)


def with_source_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """With `init.model="source"`, `config` with the architecture of the run it starts from
  (its COMPUTE_FIELDS kept): weights fix the shape, so a continued model (an
  imported Hugging Face one included) needs no restated architecture."""
  if not config.init.from_checkpoint or config.init.model != "source":
    return config
  from cpt_jax import checkpoint as checkpoint_lib  # Deferred: checkpoint pulls in the model.
  stored = stored_config(checkpoint_lib.parse_reference(config.init.from_checkpoint)[0])
  if stored is None:
    return config  # Not a run directory: the trainer names the problem.
  model = {**stored["model"], **{field: config.model[field] for field in COMPUTE_FIELDS}}
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model = ml_collections.ConfigDict(model)
  return config


def _first_stage_source(config: ml_collections.ConfigDict) -> str:
  return config.data.tokenizer.train_source or sorted(config.stages[0].mixture.keys())[0]


def tokenizer_for_run(config: ml_collections.ConfigDict, workdir: str, *,
                      reuse_saved: bool = True,
                      inherit_from: str = "") -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: its saved copy if `reuse_saved` (a run with checkpoints) and there
  is one; else the tokenizer of the run it starts from (`inherit_from`); else trained ("bpe")
  or loaded from data.tokenizer.path. Writing it is `store_identity`'s job."""
  settings = config.data.tokenizer
  file_name = tokenizer_lib.saved_file_name(settings.kind)
  saved = epath.Path(workdir) / file_name
  loaded_kind = "hf_json" if settings.kind == "bpe" else settings.kind
  if settings.kind == "bytes":
    return tokenizer_lib.bytes_tokenizer()
  if reuse_saved and saved.exists():
    return tokenizer_lib.load(loaded_kind, str(saved), settings.eos_token)
  if inherit_from and (epath.Path(inherit_from) / file_name).exists():
    source = stored_config(inherit_from) or {}  # Its end-of-document token comes along.
    eos = source.get("data", {}).get("tokenizer", {}).get("eos_token", settings.eos_token)
    return tokenizer_lib.load(loaded_kind, str(epath.Path(inherit_from) / file_name), eos)
  if settings.kind == "bpe":
    cache_dir = config.data.token_cache_dir
    if cache_dir and (epath.Path(cache_dir) / "tokenizer.json").exists():
      return tokenizer_lib.load("hf_json", str(epath.Path(cache_dir) / "tokenizer.json"),
                                settings.eos_token)
    source = _first_stage_source(config)
    texts = corpora.iter_documents(source, config.data.sources[source], "train")
    return tokenizer_lib.train_bpe(texts, settings.vocab_size, settings.train_megabytes)
  return tokenizer_lib.load(settings.kind, settings.path, settings.eos_token)


def save_tokenizer(directory: str, tokenizer: tokenizer_lib.Tokenizer) -> None:
  """The tokenizer's file in `directory` (a run's, or the token cache's); none for bytes."""
  if tokenizer.kind == "bytes":
    return
  _write_atomically(epath.Path(directory) / tokenizer_lib.saved_file_name(tokenizer.kind),
                    tokenizer.serialized)
