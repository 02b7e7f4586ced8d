"""Resolving the paths a user gives: local paths become absolute, URLs stay as they are.

Orbax refuses relative checkpoint paths (in a background thread, with async saving), and a
run that resumes from another working directory must find the same files. So every local
path a command takes (run directories, checkpoint references, the token cache, tokenizer and
source files) is made absolute once, at the library's entry points (`train`, `prepare`,
`anneal`), with `~` expanded. `gs://` and other URLs are left alone, once a client that
reaches them is known to be installed.
"""

from __future__ import annotations

import copy
import importlib.util
import os

from etils import epath
import ml_collections

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax.config_error import ConfigError


def is_url(path: str) -> bool:
  return "://" in path


def gcs_client_installed() -> bool:
  """etils.epath reaches gs:// through gcsfs or TensorFlow; without either it fails at the
  first file it opens, deep in a run."""
  return any(importlib.util.find_spec(client) for client in ("gcsfs", "tensorflow"))


def resolve(path: str) -> str:
  """'' stays ''; 'gs://b/x' stays; 'runs/a' and '~/a' become absolute local paths."""
  if not path:
    return path
  if is_url(path):
    if path.startswith("gs://") and not gcs_client_installed():
      raise ConfigError(f"{path}: gs:// paths need gcsfs, which is not installed: "
                        "pip install -e '.[gcs]'")
    return path
  return os.path.abspath(os.path.expanduser(path))


def make_directory(path: str, flag: str) -> None:
  """Creates directory `path` (and its parents) for the command's `flag`; a file in the way
  is one line naming the flag."""
  try:
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise ConfigError(f"{flag}={path!r}: it, or a directory above it, is a file; expected a "
                      "directory") from None


def resolve_reference(reference: str) -> str:
  """'RUN_DIR[:STEP]' with RUN_DIR resolved."""
  if not reference:
    return reference
  run_dir, step = checkpoint_lib.parse_reference(reference)
  return resolve(run_dir) + ("" if step is None else f":{step}")


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every path field resolved (idempotent)."""
  config = copy.deepcopy(config)
  data = config.data
  data.token_cache_dir = resolve(data.token_cache_dir)
  data.tokenizer.path = resolve(data.tokenizer.path)
  for source in data.sources.values():
    for field in ("glob", "validation_glob", "data_dir"):
      source[field] = resolve(source[field])
  config.init.from_checkpoint = resolve_reference(config.init.from_checkpoint)
  return config
