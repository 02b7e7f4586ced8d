"""The Hugging Face Hub: models as `import-hf` sources (`hf://ORG/NAME[@REVISION]`), and
datasets' files as `text_files` globs (`hf://datasets/ORG/NAME[@REVISION]/PATTERN`).

The reference is Hugging Face's own URL form (huggingface_hub's HfFileSystem), with the
revision a branch, tag or commit: Pythia's intermediate steps are branches, as in
`hf://EleutherAI/pythia-410m@step143000`. Only the files import reads are fetched, into the
standard Hugging Face cache (HF_HOME, HF_HUB_CACHE), whose snapshot directory then imports
like any local one:

- config.json, tokenizer.json and tokenizer_config.json;
- one set of weights, the first present of: safetensors shards and their index, one
  model.safetensors, PyTorch shards and their index, one pytorch_model.bin. Repositories
  often hold both formats; fetching both would double the download.

A dataset glob lists the files PATTERN matches (fnmatch: `*` also spans directories) at the
commit its revision names, and each file is fetched into the same cache when it is first read
(a host of a multi-host `prepare` fetches only its share); files already cached are not
fetched again. The revision may be a branch, tag or commit, URL-encoded where it holds a slash
(`@refs%2Fconvert%2Fparquet`, the Parquet files the Hub converts every dataset to). Pin a
commit for a reproducible corpus: a token cache is keyed by the glob, not by what `main`
resolved to.

With HF_HUB_OFFLINE=1, or where the Hub cannot be reached, what the cache holds is used.
Gated models (Llama) and datasets need a token: `hf auth login`, or HF_TOKEN.
"""

from __future__ import annotations

import fnmatch
import json
import os
import urllib.parse

from cpt_jax.config_error import ConfigError

PREFIX = "hf://"
DATASETS_PREFIX = "hf://datasets/"
_WEIGHTS = (("model.safetensors.index.json", "model.safetensors"),
            ("pytorch_model.bin.index.json", "pytorch_model.bin"))
_OPTIONAL = ("tokenizer.json", "tokenizer_config.json")  # Import names what it misses.


def is_reference(path: str) -> bool:
  return path.startswith(PREFIX)


def parse(reference: str) -> tuple[str, str | None]:
  """'hf://ORG/NAME@REV' -> ('ORG/NAME', 'REV'); the revision is None where not given."""
  repo_id, _, revision = reference[len(PREFIX):].partition("@")
  parts = repo_id.split("/")
  if len(parts) != 2 or not all(parts) or (revision == "" and "@" in reference):
    raise ConfigError(f"--from={reference}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
  return repo_id, revision or None


class _Repository:
  """Fetches one repository's files at one revision into the cache."""

  def __init__(self, reference: str):
    self.reference = reference
    self.repo_id, self.revision = parse(reference)

  def fetch(self, name: str, required: bool = True) -> str | None:
    """The cached file's path; None for a file the repository lacks (or, offline, one the
    cache lacks) unless `required`."""
    import huggingface_hub
    from huggingface_hub import utils as hub_errors
    try:
      return huggingface_hub.hf_hub_download(self.repo_id, name, revision=self.revision)
    except hub_errors.LocalEntryNotFoundError:
      if required:
        raise ConfigError(f"--from={self.reference}: {name} is not in the local Hugging Face "
                          f"cache and the Hub cannot be reached") from None
      return None
    except hub_errors.EntryNotFoundError:
      if required:
        raise ConfigError(f"--from={self.reference}: the repository has no {name}") from None
      return None
    except hub_errors.RevisionNotFoundError:
      raise ConfigError(f"--from={self.reference}: the repository has no revision "
                        f"{self.revision!r}") from None
    except hub_errors.RepositoryNotFoundError:  # Also gated and private ones without access.
      raise ConfigError(f"--from={self.reference}: no such model on the Hub, or one this "
                        f"login may not read (gated models: `hf auth login` or HF_TOKEN)") from None
    except OSError as error:  # Connection and HTTP errors, a full disk.
      raise ConfigError(f"--from={self.reference}: fetching {name} failed "
                        f"({str(error).splitlines()[0][:160]})") from None


def snapshot(reference: str) -> str:
  """The local snapshot directory of `reference`, holding what import reads."""
  repository = _Repository(reference)
  directory = os.path.dirname(repository.fetch("config.json"))
  for name in _OPTIONAL:
    repository.fetch(name, required=False)
  for index_name, single_name in _WEIGHTS:
    index = repository.fetch(index_name, required=False)
    if index:
      try:
        with open(index) as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
      except (OSError, ValueError, KeyError, AttributeError) as error:
        raise ConfigError(f"--from={reference}: {index_name} is no weight index "
                          f"({type(error).__name__}: {str(error)[:120]})") from None
      for shard in shards:
        repository.fetch(shard)
      return directory
    if repository.fetch(single_name, required=False):
      return directory
  raise ConfigError(f"--from={reference}: the repository has no weights; expected one of "
                    f"{[name for pair in _WEIGHTS for name in pair]}")


def is_dataset_glob(pattern: str) -> bool:
  """Also true of the files such a glob lists (`hf://datasets/ORG/NAME@COMMIT/FILE`)."""
  return pattern.startswith(DATASETS_PREFIX)


def parse_dataset_glob(pattern: str, where: str) -> tuple[str, str | None, str]:
  """'hf://datasets/ORG/NAME@REV/PATTERN' -> ('ORG/NAME', 'REV' or None, 'PATTERN')."""
  parts = pattern[len(DATASETS_PREFIX):].split("/", 2)
  if len(parts) != 3 or not all(parts):
    raise ConfigError(f"{where}={pattern!r}: expected hf://datasets/ORG/NAME[@REVISION]/PATTERN")
  organization, name_revision, file_pattern = parts
  name, _, revision = name_revision.partition("@")
  return f"{organization}/{name}", urllib.parse.unquote(revision) or None, file_pattern


def _saved_listing(repo_id: str, commit: str) -> str:
  """Where a dataset's listing at `commit` is kept, beside its files in the cache: offline, a
  snapshot directory holds only the files fetched so far, which may be a host's share."""
  from huggingface_hub import constants
  return os.path.join(constants.HF_HUB_CACHE, f"datasets--{repo_id.replace('/', '--')}",
                      "cpt_jax_listings", f"{commit}.json")


def _listed_on_the_hub(repo_id: str, revision: str | None) -> tuple[str, list[str]]:
  """(the commit `revision` resolves to, every file of the dataset there), the listing kept."""
  import huggingface_hub
  api = huggingface_hub.HfApi()
  commit = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
  names = api.list_repo_files(repo_id, repo_type="dataset", revision=commit)
  path = _saved_listing(repo_id, commit)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.{os.getpid()}", "w") as f:
      json.dump(sorted(names), f)
    os.replace(f"{path}.{os.getpid()}", path)  # Whole or not at all: hosts may share a cache.
  except OSError:  # A read-only cache: offline runs will list what it holds.
    pass
  return commit, names


def _listed_in_the_cache(repo_id: str, revision: str | None) -> tuple[str, list[str]]:
  """The same offline: the listing kept when the Hub was last asked, else the files the
  cache's snapshot holds (all of them where a whole snapshot was downloaded)."""
  import huggingface_hub
  directory = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                                local_files_only=True)
  commit = os.path.basename(directory)
  try:
    with open(_saved_listing(repo_id, commit)) as f:
      return commit, json.load(f)
  except (OSError, ValueError):
    return commit, [os.path.relpath(os.path.join(parent, name), directory)
                    for parent, _, files in os.walk(directory) for name in files]


def dataset_files(pattern: str, where: str) -> list[str]:
  """The files `hf://datasets/ORG/NAME[@REVISION]/PATTERN` matches, as references
  `hf://datasets/ORG/NAME@COMMIT/FILE` pinned to the commit the revision names now, sorted;
  nothing is fetched (`fetch_dataset_file` does, file by file, when a file is read). Listed on
  the Hub, or, offline, in the cache. `where` names the config field."""
  from huggingface_hub import constants
  from huggingface_hub import utils as hub_errors
  repo_id, revision, file_pattern = parse_dataset_glob(pattern, where)
  try:
    if constants.HF_HUB_OFFLINE:
      commit, names = _listed_in_the_cache(repo_id, revision)
    else:
      try:
        commit, names = _listed_on_the_hub(repo_id, revision)
      except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError):
        raise
      except Exception as error:  # No connection (httpx, requests): what the cache holds.
        try:
          commit, names = _listed_in_the_cache(repo_id, revision)
        except hub_errors.LocalEntryNotFoundError:
          raise ConfigError(f"{where}={pattern!r}: the Hub cannot be reached ("
                            f"{str(error).splitlines()[0][:160]}) and the local Hugging Face "
                            "cache does not hold it") from None
  except hub_errors.LocalEntryNotFoundError:
    raise ConfigError(f"{where}={pattern!r}: not in the local Hugging Face cache and the Hub "
                      "cannot be reached") from None
  except hub_errors.RevisionNotFoundError:
    raise ConfigError(f"{where}={pattern!r}: the dataset has no revision {revision!r}") from None
  except hub_errors.RepositoryNotFoundError:  # Also gated and private ones without access.
    raise ConfigError(f"{where}={pattern!r}: no such dataset on the Hub, or one this login may "
                      "not read (gated datasets: `hf auth login` or HF_TOKEN)") from None
  return [f"{DATASETS_PREFIX}{repo_id}@{commit}/{name}"
          for name in sorted(fnmatch.filter(names, file_pattern))]


def fetch_dataset_file(reference: str, where: str) -> tuple[str, str]:
  """(local path, its snapshot directory) of `hf://datasets/ORG/NAME@COMMIT/FILE`, fetched
  into the Hugging Face cache unless it is there."""
  import huggingface_hub
  from huggingface_hub import utils as hub_errors
  repo_id, commit, name = parse_dataset_glob(reference, where)
  try:
    path = huggingface_hub.hf_hub_download(repo_id, name, repo_type="dataset", revision=commit)
  except hub_errors.LocalEntryNotFoundError:
    raise ConfigError(f"{reference} (matched by {where}): not in the local Hugging Face cache "
                      "and the Hub cannot be reached") from None
  except OSError as error:  # Connection and HTTP errors, a full disk.
    raise ConfigError(f"{reference} (matched by {where}): fetching it failed "
                      f"({str(error).splitlines()[0][:160]})") from None
  return path, path[:-len(name)].rstrip("/")
