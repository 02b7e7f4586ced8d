"""The Grain pipeline of a stage: documents -> tokens -> packed rows -> mixture -> batches.

Owns the order of data. Each source is tokenized (or read pre-tokenized from the token cache),
sharded per JAX process (process i reads documents i, i + n, ...), shuffled with a fixed seed,
repeated, and packed on its own; the stage then mixes the packed rows of its sources by weight,
so a weight is the source's share of training tokens (mixing documents before packing would
count documents, and short replay documents would fall short of their share). Grain's mix is
deterministic, and the whole iterator's state is checkpointable.

A replayed source starts from the beginning of its training split (data the model already
saw, as in Ibrahim et al.), or with `replay_position="continue"` skips the rows it has already
served in earlier stages. Validation batches are finite, unshuffled and the same every time.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import ml_collections
import numpy as np

from cpt_jax import corpora
from cpt_jax import packing
from cpt_jax import run_plan
from cpt_jax import token_cache
from cpt_jax import tokenizer as tokenizer_lib


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` block; `sources` is filled by each experiment."""
  config = ml_collections.ConfigDict()
  config.seq_len = 128  # Tokens per row: the model reads seq_len inputs, predicts seq_len targets.
  config.global_batch_size = 32  # Rows per optimizer step, over all devices and processes.
  config.tokenizer = tokenizer_lib.default_config()
  config.sources = ml_collections.ConfigDict()  # {name: corpora.source_config(...)}.
  config.token_cache_dir = ""  # Pre-tokenized shards from `cpt-jax prepare`; "" = tokenize live.
  config.shuffle_seed = 0  # Document order within each source's training split.
  # Threads that read and tokenize documents ahead of packing, per source. Few suffice: on a
  # small CPU host, idle read-ahead threads compete with the compiled step for cores.
  config.read_threads = 1
  config.read_ahead = 64  # Documents read ahead per source.
  return config


def _read_options(data_config: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=data_config.read_threads,
                           prefetch_buffer_size=data_config.read_ahead)


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """This process's slice of every source."""
  index: int = 0
  count: int = 1


def source_names(data_config: ml_collections.ConfigDict) -> list[str]:
  """Sources in a fixed order; a row's `source_id` indexes this list."""
  return sorted(data_config.sources.keys())


def tokenized_documents(name: str, data_config: ml_collections.ConfigDict, split: str,
                        tokenizer: tokenizer_lib.Tokenizer) -> grain.MapDataset:
  """Random access to a split's token arrays: from the token cache if `prepare` wrote it."""
  if name not in data_config.sources:
    raise ValueError(f"data source {name!r} is unknown; known sources: {source_names(data_config)}")
  cache_dir = data_config.token_cache_dir
  if token_cache.exists(cache_dir, name, split):
    return token_cache.read(cache_dir, name, split, tokenizer.fingerprint)
  texts = corpora.documents(name, data_config.sources[name], split)
  return grain.MapDataset.source(texts).map(tokenizer.encode)


class _SkipIterDataset(grain.IterDataset):
  """Drops the first `count` elements (lazily, on first use): continues a source's stream."""

  def __init__(self, parent: grain.IterDataset, count: int):
    super().__init__(parent)
    self._count = count

  def __iter__(self):
    return _SkipIterator(self._parent.__iter__(), self._count)


class _SkipIterator(grain.DatasetIterator):

  def __init__(self, parent, count: int):
    super().__init__(parent)
    self._to_skip = count

  def __next__(self):
    while self._to_skip:
      next(self._parent)
      self._to_skip -= 1
    return next(self._parent)

  def get_state(self):
    return {"parent": self._parent.get_state(), "to_skip": self._to_skip}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._to_skip = state["to_skip"]


def _with_source_id(source_id: int, row: dict) -> dict:
  return {**row, "source_id": np.int32(source_id)}


def packed_training_rows(name: str, data_config: ml_collections.ConfigDict,
                         tokenizer: tokenizer_lib.Tokenizer, shard: ProcessShard,
                         skip_rows: int = 0) -> grain.IterDataset:
  """An endless stream of this process's packed training rows of source `name`."""
  documents = tokenized_documents(name, data_config, "train", tokenizer)
  documents = documents[shard.index::shard.count]
  if len(documents) == 0:
    raise ValueError(f"data source {name!r} has fewer training documents than the "
                     f"{shard.count} processes reading it")
  documents = documents.shuffle(seed=data_config.shuffle_seed).repeat()
  rows = packing.PackIterDataset(documents.to_iter_dataset(_read_options(data_config)),
                                 data_config.seq_len, tokenizer.eos_id)
  if skip_rows:
    rows = _SkipIterDataset(rows, skip_rows)
  source_id = source_names(data_config).index(name)
  return rows.map(functools.partial(_with_source_id, source_id))


def per_process_batch_size(data_config: ml_collections.ConfigDict, shard: ProcessShard) -> int:
  if data_config.global_batch_size % shard.count:
    raise ValueError(f"data.global_batch_size={data_config.global_batch_size}: expected a "
                     f"multiple of the {shard.count} processes")
  return data_config.global_batch_size // shard.count


def stage_dataset(data_config: ml_collections.ConfigDict, stage: run_plan.StagePlan,
                  tokenizer: tokenizer_lib.Tokenizer, shard: ProcessShard = ProcessShard(),
                  rows_served: dict[str, int] | None = None) -> grain.IterDataset:
  """Batches of the stage's mixture: {tokens, segment_ids, positions: (B, L + 1),
  source_id: (B,)}, B per process. `rows_served` (per source, this process) positions
  replayed sources when the stage continues them instead of replaying from the start."""
  rows_served = rows_served or {}
  names = sorted(stage.mixture)
  streams = []
  for name in names:
    skip = 0
    if name in stage.replayed_sources and stage.replay_position == "continue":
      skip = rows_served.get(name, 0)
    streams.append(packed_training_rows(name, data_config, tokenizer, shard, skip))
  if len(streams) == 1:
    mixed = streams[0]
  else:
    mixed = grain.IterDataset.mix(streams, [stage.mixture[name] for name in names])
  return mixed.batch(per_process_batch_size(data_config, shard), drop_remainder=True)


def validation_batches(name: str, data_config: ml_collections.ConfigDict,
                       tokenizer: tokenizer_lib.Tokenizer, max_batches: int,
                       shard: ProcessShard = ProcessShard()) -> list[dict]:
  """The first `max_batches` batches of the source's validation split, as model batches.

  The last batch is filled up with padding rows (all masked out), so every batch has the
  per-process batch size and every evaluation sees exactly the same tokens."""
  documents = tokenized_documents(name, data_config, "validation", tokenizer)
  documents = documents[shard.index::shard.count]
  rows = packing.PackIterDataset(documents.to_iter_dataset(_read_options(data_config)),
                                 data_config.seq_len, tokenizer.eos_id, pad_final_row=True)
  batch_size = per_process_batch_size(data_config, shard)
  batches = []
  for batch in rows.batch(batch_size, drop_remainder=False):
    short = batch_size - len(batch["tokens"])
    if short:
      batch = {key: np.concatenate([value, np.zeros((short,) + value.shape[1:], value.dtype)])
               for key, value in batch.items()}
    batches.append(packing.to_model_batch(batch))
    if len(batches) == max_batches:
      break
  if not batches:
    raise ValueError(f"data source {name!r}: the validation split yields no rows")
  return batches


def tokens_by_source(batch: dict, num_sources: int) -> np.ndarray:
  """Target tokens (non-padding) each source contributed to a training batch."""
  targets_per_row = (batch["segment_ids"][:, 1:] != 0).sum(axis=1)
  return np.bincount(batch["source_id"], weights=targets_per_row, minlength=num_sources)
