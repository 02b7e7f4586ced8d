"""Pre-tokenized documents in ArrayRecord files: tokenize once, reuse in every run and stage.

`cpt-jax prepare` writes, per source and split, in `<cache_dir>/<source>/`:
- `<split>-NNNNN-of-MMMMM.array_record`: one shard per read unit of the source (a group of
  files; `corpora.ReadUnit`), one record per document (int32 token ids), and its
  `.lengths.npy`, written last, which marks the shard complete (a rerun skips it);
- `<split>.lengths.npy`: tokens per document of all shards in order, so packing can seek
  anywhere without reading what lies before;
- `<split>.json`, written last of all: the shards, the tokenizer's fingerprint and the source's
  full definition. Readers check both, so a cache made from other files or with another
  vocabulary is refused, never silently trained on. While shards are being written,
  `<split>.pending.json` holds the same identity, so a rerun with another definition discards
  them rather than mixing them in. Caches from before shards (one `<split>.array_record`, no
  shard list) still read.
Records are written with `group_size:1`, which keeps random access fast (64 reads ~8x slower).

The cache is a local directory or a gs:// prefix; every path goes through etils.epath.
ArrayRecord (from 0.8.3) reads gs:// objects itself, by range requests; its writer opens local
files only, so `prepare` writes each shard to a local temporary file and then copies it up.
An object store publishes an object whole when its upload ends, so remote files need no
temporary name; local ones are written under one and renamed.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import shutil
import tempfile
from typing import Iterable

import numpy as np
from etils import epath

from cpt_jax.config_error import ConfigError

_OPTIONS = "group_size:1"
_FIRST_ARRAY_RECORD_READING_GCS = (0, 8, 3)
_COPY_CHUNK = 16 << 20  # Bytes per write when a shard is copied up to the bucket.


def in_bucket(cache_dir: str) -> bool:
  """A gs:// (or other URL) cache: read and written through object-store requests."""
  return "://" in cache_dir


def _source_dir(cache_dir: str, source: str) -> epath.Path:
  return epath.Path(cache_dir) / source


def paths(cache_dir: str, source: str, split: str) -> tuple[str, str, str]:
  """The split's records before shards (a legacy single file), metadata and lengths."""
  base = str(_source_dir(cache_dir, source) / split)
  return base + ".array_record", base + ".json", base + ".lengths.npy"


def shard_paths(cache_dir: str, source: str, split: str, index: int,
                count: int) -> tuple[str, str]:
  """Shard `index` of `count`: its records and its lengths (the completion marker)."""
  base = str(_source_dir(cache_dir, source) / f"{split}-{index:05d}-of-{count:05d}")
  return base + ".array_record", base + ".lengths.npy"


def _pending_path(cache_dir: str, source: str, split: str) -> epath.Path:
  return _source_dir(cache_dir, source) / f"{split}.pending.json"


def _array_record_version() -> tuple[int, ...]:
  try:
    version = importlib.metadata.version("array_record")
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def check_cache_dir(cache_dir: str) -> None:
  """Refuses a cache that ArrayRecord cannot read: a URL other than gs://, or gs:// with an
  array-record older than the first that reads it."""
  if not in_bucket(cache_dir):
    return
  if not cache_dir.startswith("gs://"):
    raise ConfigError(f"data.token_cache_dir={cache_dir!r}: expected a local directory or a "
                      "gs:// path; ArrayRecord reads no other store")
  if _array_record_version() < _FIRST_ARRAY_RECORD_READING_GCS:
    need = ".".join(map(str, _FIRST_ARRAY_RECORD_READING_GCS))
    raise ConfigError(f"data.token_cache_dir={cache_dir!r}: reading a gs:// token cache needs "
                      f"array-record>={need} (pip install -e '.[gcs]')")


def exists(cache_dir: str, source: str, split: str) -> bool:
  return bool(cache_dir) and all(epath.Path(p).exists()
                                 for p in paths(cache_dir, source, split)[1:])


def _identity(definition: dict, fingerprint: str) -> dict:
  return {"tokenizer_fingerprint": fingerprint, "source_definition": definition}


def _mismatch(meta: dict, source: str, definition: dict, fingerprint: str) -> str | None:
  if meta.get("tokenizer_fingerprint") != fingerprint:
    return "tokenized with another tokenizer than this run's"
  prepared = meta.get("source_definition") or {}
  changed = sorted(key for key in set(prepared) | set(definition)
                   if prepared.get(key) != definition.get(key))
  if changed:
    differences = ", ".join(f"{key}: {prepared.get(key)!r} vs {definition.get(key)!r}"
                            for key in changed)
    return f"prepared from another definition of source {source!r} ({differences})"
  return None


def read_meta(cache_dir: str, source: str, split: str) -> dict:
  """A prepared split's `<split>.json`: its shards, counts, tokenizer and source definition."""
  return json.loads(epath.Path(paths(cache_dir, source, split)[1]).read_text())


def mismatch(cache_dir: str, source: str, split: str, definition: dict,
             fingerprint: str) -> str | None:
  """Why the prepared split does not hold `definition`'s documents tokenized with
  `fingerprint` (None if it does)."""
  return _mismatch(read_meta(cache_dir, source, split), source, definition, fingerprint)


def _publish(path: str, write) -> None:
  """Calls `write(file)` so that readers see the whole file at `path` or none of it."""
  if in_bucket(path):  # An object appears when its upload completes.
    with epath.Path(path).open("wb") as f:
      write(f)
    return
  with open(path + ".tmp", "wb") as f:
    write(f)
  os.replace(path + ".tmp", path)


def _save_array(path: str, array: np.ndarray) -> None:
  _publish(path, lambda f: np.save(f, array))


def _load_array(path: str) -> np.ndarray:
  return np.load(io.BytesIO(epath.Path(path).read_bytes()))


def _remove_shards(cache_dir: str, source: str, split: str) -> None:
  for path in _source_dir(cache_dir, source).glob(f"{split}-*-of-*.*"):
    path.unlink()


def begin(cache_dir: str, source: str, split: str, definition: dict, fingerprint: str,
          count: int) -> None:
  """Marks the split as being written in `count` shards; shards written before for another
  definition, tokenizer or unit count are removed, those for this one are kept (a resume)."""
  _source_dir(cache_dir, source).mkdir(parents=True, exist_ok=True)
  pending = _pending_path(cache_dir, source, split)
  identity = {**_identity(definition, fingerprint), "shard_count": count}
  if pending.exists() and json.loads(pending.read_text()) == identity:
    return
  _remove_shards(cache_dir, source, split)
  _publish(str(pending), lambda f: f.write(json.dumps(identity, indent=1).encode()))


def shard_done(cache_dir: str, source: str, split: str, index: int, count: int) -> bool:
  return epath.Path(shard_paths(cache_dir, source, split, index, count)[1]).exists()


class ShardWriter:
  """Writes shard `index` of `count` a document at a time. `close()` completes it: records,
  then lengths, each published whole (`_publish`). A shard without documents has no records
  file. ArrayRecord writes local files only: for a gs:// cache the records go to a local
  temporary file first, copied up at `close()`."""

  def __init__(self, cache_dir: str, source: str, split: str, index: int, count: int):
    self._records_path, self._lengths_path = shard_paths(cache_dir, source, split, index, count)
    self._remote = in_bucket(cache_dir)
    self._staging = self._written = None
    self._writer, self._lengths = None, []

  def write(self, ids: np.ndarray) -> None:
    if self._writer is None:
      from array_record.python import array_record_module  # Deferred: only `prepare` writes.
      if self._remote:
        self._staging = tempfile.mkdtemp(prefix="cpt_jax_shard_")
        self._written = os.path.join(self._staging, "records.array_record")
      else:
        self._written = self._records_path + ".tmp"
      self._writer = array_record_module.ArrayRecordWriter(self._written, _OPTIONS)
    self._writer.write(np.asarray(ids, np.int32).tobytes())
    self._lengths.append(len(ids))

  def close(self) -> tuple[int, int]:
    """-> (documents, tokens)."""
    if self._writer is not None:
      self._writer.close()
      if self._remote:
        with open(self._written, "rb") as local:
          _publish(self._records_path,
                   lambda remote: shutil.copyfileobj(local, remote, _COPY_CHUNK))
        shutil.rmtree(self._staging)
      else:
        os.replace(self._written, self._records_path)
    lengths = np.asarray(self._lengths, np.int64)
    _save_array(self._lengths_path, lengths)
    return len(lengths), int(lengths.sum())


class EmptySplit(ConfigError):
  """A split whose shards hold no document."""


def finish(cache_dir: str, source: str, split: str, definition: dict, fingerprint: str,
           count: int) -> dict:
  """Joins the split's complete shards into one readable split; returns its summary."""
  _, meta_path, lengths_path = paths(cache_dir, source, split)
  shard_lengths = [_load_array(shard_paths(cache_dir, source, split, index, count)[1])
                   for index in range(count)]
  lengths = np.concatenate(shard_lengths) if shard_lengths else np.zeros(0, np.int64)
  if not lengths.size:
    raise EmptySplit(f"data.sources.{source}: the {split} split is empty")
  shards = [epath.Path(shard_paths(cache_dir, source, split, index, count)[0]).name
            for index, part in enumerate(shard_lengths) if part.size]  # Empty: no records.
  meta = {"source": source, "split": split, **_identity(definition, fingerprint),
          "shards": shards, "documents": int(lengths.size), "tokens": int(lengths.sum())}
  _save_array(lengths_path, lengths)
  _publish(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
  _pending_path(cache_dir, source, split).unlink(missing_ok=True)
  return meta


def _decode(record: bytes) -> np.ndarray:
  return np.frombuffer(record, np.int32)


class CachedDocuments:
  """A prepared split: `packing.Documents` read from ArrayRecord, lengths known up front.

  From a bucket, a read's records are fetched in one parallel call (`__getitems__`), which
  pays a request's latency about once instead of once per document (70 against 415 ms for a
  batch's 11 documents at 30 ms; benchmarks/bucket_read.py). From local disk they are read
  one at a time: the parallel call's thread pool costs more than the reads (the stage
  pipeline ran at 0.37 of a raw read instead of 0.63; benchmarks/data_throughput.py)."""

  def __init__(self, records, lengths: np.ndarray, in_bucket: bool = False):
    self._records, self.lengths = records, lengths  # records: grain's ArrayRecordDataSource.
    self.in_bucket = in_bucket  # Read through object-store requests (a gs:// cache).

  def __len__(self) -> int:
    return len(self._records)

  def read(self, indices) -> list[np.ndarray]:
    keys = [int(index) for index in indices]
    if self.in_bucket and keys:  # The parallel call refuses an empty list.
      return [_decode(record) for record in self._records.__getitems__(keys)]
    return [_decode(self._records[key]) for key in keys]


def records_paths(cache_dir: str, source: str, split: str,
                  meta: dict | None = None) -> list[str]:
  """The record files of a prepared split, in document order (`meta`: its read_meta)."""
  meta = meta or read_meta(cache_dir, source, split)
  if "shards" not in meta:
    return [paths(cache_dir, source, split)[0]]  # Written before shards: one file.
  return [str(_source_dir(cache_dir, source) / shard) for shard in meta["shards"]]


def read(cache_dir: str, source: str, split: str, fingerprint: str,
         definition: dict) -> CachedDocuments:
  """The split's documents, checked against the source's definition, this run's tokenizer
  and the meta data."""
  import grain  # Deferred: `prepare` only writes.

  _, meta_path, lengths_path = paths(cache_dir, source, split)
  meta = read_meta(cache_dir, source, split)
  reason = _mismatch(meta, source, definition, fingerprint)
  if reason:
    raise ConfigError(f"{meta_path}: {reason}; re-run `cpt-jax prepare` with this config or "
                      "point data.token_cache_dir elsewhere")
  try:
    records = grain.sources.ArrayRecordDataSource(records_paths(cache_dir, source, split, meta))
    if len(records) != meta["documents"]:
      raise ConfigError(f"holds {len(records)} records, {meta_path} says {meta['documents']}")
    lengths = _load_array(lengths_path)
    if lengths.shape != (len(records),):
      raise ConfigError(f"{lengths_path} holds {lengths.size} lengths for {len(records)} records")
    if len(records) and len(_decode(records[len(records) - 1])) != lengths[-1]:
      raise ConfigError("its last record does not match its length")  # Catches truncation.
  except Exception as error:
    raise ConfigError(f"{_source_dir(cache_dir, source)}: corrupt or truncated {split} "
                      f"shards ({error}); delete them and re-run `cpt-jax prepare`") from None
  return CachedDocuments(records, lengths, in_bucket(cache_dir))


def write(cache_dir: str, source: str, split: str, token_arrays: Iterable[np.ndarray],
          fingerprint: str, definition: dict) -> dict:
  """A whole split from a stream of documents' ids, as one shard; returns its summary."""
  begin(cache_dir, source, split, definition, fingerprint, 1)
  writer = ShardWriter(cache_dir, source, split, 0, 1)
  for ids in token_arrays:
    writer.write(ids)
  writer.close()
  return finish(cache_dir, source, split, definition, fingerprint, 1)
