"""Pre-tokenized documents in ArrayRecord files: tokenize once, reuse in every run and stage.

`cpt-jax prepare` writes `<cache_dir>/<source>/<split>.array_record` (one record per
document: int32 token ids), `<split>.lengths.npy` (tokens per document, so packing can seek
anywhere without reading what lies before) and `<split>.json` naming the tokenizer's
fingerprint and the source's full definition (kind, corpus, globs, split settings). Readers
check both, so a cache made from other files or with another vocabulary is refused, never
silently trained on. Records are written with `group_size:1`, which keeps random access fast (64 reads
~8x slower).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import grain
import numpy as np

from cpt_jax.config_error import ConfigError

_OPTIONS = "group_size:1"


def paths(cache_dir: str, source: str, split: str) -> tuple[str, str, str]:
  """The split's records, metadata and document lengths."""
  base = os.path.join(cache_dir, source, split)
  return base + ".array_record", base + ".json", base + ".lengths.npy"


def exists(cache_dir: str, source: str, split: str) -> bool:
  return bool(cache_dir) and all(os.path.exists(p) for p in paths(cache_dir, source, split))


def mismatch(cache_dir: str, source: str, split: str, definition: dict,
             fingerprint: str) -> str | None:
  """Why the prepared split does not hold `definition`'s documents tokenized with
  `fingerprint` (None if it does)."""
  with open(paths(cache_dir, source, split)[1]) as f:
    meta = json.load(f)
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


def write(cache_dir: str, source: str, split: str, token_arrays: Iterable[np.ndarray],
          fingerprint: str, definition: dict) -> dict:
  """Writes one split atomically (temp files, then rename) and returns its summary."""
  from array_record.python import array_record_module  # Deferred: only `prepare` writes.

  records_path, meta_path, lengths_path = paths(cache_dir, source, split)
  os.makedirs(os.path.dirname(records_path), exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(records_path + ".tmp", _OPTIONS)
  lengths = []
  for ids in token_arrays:
    writer.write(np.asarray(ids, np.int32).tobytes())
    lengths.append(len(ids))
  writer.close()
  with open(lengths_path + ".tmp", "wb") as f:
    np.save(f, np.asarray(lengths, np.int64))
  meta = {"source": source, "split": split, "tokenizer_fingerprint": fingerprint,
          "source_definition": definition, "documents": len(lengths),
          "tokens": int(sum(lengths))}
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(records_path + ".tmp", records_path)
  os.replace(lengths_path + ".tmp", lengths_path)
  os.replace(meta_path + ".tmp", meta_path)  # Last: its presence marks a complete split.
  return meta


def _decode(record: bytes) -> np.ndarray:
  return np.frombuffer(record, np.int32)


class CachedDocuments:
  """A prepared split: `packing.Documents` read from ArrayRecord, lengths known up front."""

  def __init__(self, records: grain.sources.ArrayRecordDataSource, lengths: np.ndarray):
    self._records, self.lengths = records, lengths

  def __len__(self) -> int:
    return len(self._records)

  def read(self, indices) -> list[np.ndarray]:
    return [_decode(self._records[int(index)]) for index in indices]


def read(cache_dir: str, source: str, split: str, fingerprint: str,
         definition: dict) -> CachedDocuments:
  """The split's documents, checked against the source's definition, this run's tokenizer
  and the meta data."""
  records_path, meta_path, lengths_path = paths(cache_dir, source, split)
  reason = mismatch(cache_dir, source, split, definition, fingerprint)
  if reason:
    raise ConfigError(f"{records_path}: {reason}; re-run `cpt-jax prepare` with this config or "
                      "point data.token_cache_dir elsewhere")
  with open(meta_path) as f:
    meta = json.load(f)
  try:
    records = grain.sources.ArrayRecordDataSource([records_path])
    if len(records) != meta["documents"]:
      raise ConfigError(f"holds {len(records)} records, {meta_path} says {meta['documents']}")
    lengths = np.load(lengths_path)
    if lengths.shape != (len(records),):
      raise ConfigError(f"{lengths_path} holds {lengths.size} lengths for {len(records)} records")
    if len(records) and len(_decode(records[len(records) - 1])) != lengths[-1]:
      raise ConfigError("its last record does not match its length")  # Catches truncation.
  except Exception as error:
    raise ConfigError(f"{records_path}: corrupt or truncated ArrayRecord shard ({error}); "
                      "delete it and re-run `cpt-jax prepare`") from None
  return CachedDocuments(records, lengths)
