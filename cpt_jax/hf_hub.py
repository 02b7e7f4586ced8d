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

A dataset glob fetches the files PATTERN matches (fnmatch: `*` also spans directories) into
the same cache and reads them there, like local files; files already cached are not fetched
again. The revision may be a branch, tag or commit, URL-encoded where it holds a slash
(`@refs%2Fconvert%2Fparquet`, the Parquet files the Hub converts every dataset to). Pin a
commit for a reproducible corpus: a token cache is keyed by the glob, not by what `main`
resolved to.

With HF_HUB_OFFLINE=1, or where the Hub cannot be reached, what the cache holds is used.
Gated models (Llama) and datasets need a token: `hf auth login`, or HF_TOKEN.
"""

from __future__ import annotations

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
  return pattern.startswith(DATASETS_PREFIX)


def dataset_glob(pattern: str, where: str) -> str:
  """`hf://datasets/ORG/NAME[@REVISION]/PATTERN` as a local glob: PATTERN in the snapshot
  directory that the matching files were fetched into. `where` names the config field."""
  import huggingface_hub
  from huggingface_hub import utils as hub_errors
  parts = pattern[len(DATASETS_PREFIX):].split("/", 2)
  if len(parts) != 3 or not all(parts):
    raise ConfigError(f"{where}={pattern!r}: expected hf://datasets/ORG/NAME[@REVISION]/PATTERN")
  organization, name_revision, file_pattern = parts
  name, _, revision = name_revision.partition("@")
  repo_id = f"{organization}/{name}"
  try:
    directory = huggingface_hub.snapshot_download(
        repo_id, repo_type="dataset", revision=urllib.parse.unquote(revision) or None,
        allow_patterns=[file_pattern])
  except hub_errors.LocalEntryNotFoundError:
    raise ConfigError(f"{where}={pattern!r}: not in the local Hugging Face cache and the Hub "
                      "cannot be reached") from None
  except hub_errors.RevisionNotFoundError:
    raise ConfigError(f"{where}={pattern!r}: the dataset has no revision {revision!r}") from None
  except hub_errors.RepositoryNotFoundError:  # Also gated and private ones without access.
    raise ConfigError(f"{where}={pattern!r}: no such dataset on the Hub, or one this login may "
                      "not read (gated datasets: `hf auth login` or HF_TOKEN)") from None
  except OSError as error:  # Connection and HTTP errors, a full disk.
    raise ConfigError(f"{where}={pattern!r}: fetching its files failed "
                      f"({str(error).splitlines()[0][:160]})") from None
  return os.path.join(directory, file_pattern)
