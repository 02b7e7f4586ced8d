"""The Grain pipeline of a stage: documents -> tokens -> packed rows -> mixture -> batches.

Owns the order of data. Each source is tokenized (or read pre-tokenized from the token cache),
shuffled with a fixed seed per epoch, and packed on its own into an endless row stream
(`packing.py`); the stage mixes the packed rows of its sources by weight (`mixture.py`), so a
weight is the source's share of training tokens (mixing documents before packing would count
documents, and short replay documents would fall short of their share).

Every process sees the same global batches and builds only its own rows of each: process i of
n takes rows [i B/n, (i + 1) B/n). The data a step trains on is therefore the same for any
number of processes and devices, and each batch is packed with a few numpy operations per
source rather than per row. The iterator is a Grain `DatasetIterator` whose small state (the
batch index and each stream's window) goes into the run's checkpoints.

A replayed source starts from the beginning of its training split (data the model already
saw, as in Ibrahim et al.), or with `replay_position="continue"` after the furthest row of it
served in earlier stages, this run's or those of the run it started from. How many rows of
each source were served by any step is closed form (`rows_served`, `stream_positions`): nothing
is counted or fed back, and a checkpoint keeps only where its run's streams began. Validation
batches are finite, unshuffled and the same every time.
"""

from __future__ import annotations

import dataclasses

import grain
import ml_collections
import numpy as np

from cpt_jax import corpora
from cpt_jax import mixture as mixture_lib
from cpt_jax import packing
from cpt_jax import run_plan
from cpt_jax import token_cache
from cpt_jax import tokenizer as tokenizer_lib
from cpt_jax.config_error import ConfigError

# Batches a background thread reads ahead from a token cache in a bucket: each batch's records
# arrive by range requests whose latency the step would otherwise wait on.
_BUCKET_PREFETCH_BATCHES = 2
# Documents one read of a bucket cache takes at most: a read fetches them in parallel, so short
# documents wait for fewer rounds of requests than 32 at a time (366 against 482 ms for a
# 32 x 2048 batch of 50-400-token documents at 30 ms latency; benchmarks/bucket_read.py).
_BUCKET_DOCUMENTS_PER_READ = 1024


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` block; `sources` is filled by each experiment."""
  config = ml_collections.ConfigDict()
  config.seq_len = 128  # Tokens per row: the model reads seq_len inputs, predicts seq_len targets.
  config.global_batch_size = 32  # Rows per optimizer step, over all devices and processes.
  config.tokenizer = tokenizer_lib.default_config()
  config.sources = ml_collections.ConfigDict()  # {name: corpora.source_config(...)}.
  config.token_cache_dir = ""  # `cpt-jax prepare`'s shards, local or gs://; "" = tokenize live.
  config.shuffle_seed = 0  # Document order within each source's training split (per epoch).
  # Batches a background thread builds ahead of the train step. 0 builds them in the training
  # loop, which costs nothing while the device runs the previous step (dispatch is async) and
  # avoids the thread's per-batch overhead; use 1-2 if batches are slow (heavy live tokenizing).
  # A token cache in a bucket (gs://) reads ahead at least _BUCKET_PREFETCH_BATCHES.
  config.prefetch_batches = 0
  return config


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """This process's slice of every source."""
  index: int = 0
  count: int = 1


def source_names(data_config: ml_collections.ConfigDict) -> list[str]:
  """Sources in a fixed order; a row's `source_id` indexes this list."""
  return sorted(data_config.sources.keys())


class _LiveDocuments:
  """`packing.Documents` tokenized as they are read; lengths are unknown until then."""
  lengths = None

  def __init__(self, texts, tokenizer: tokenizer_lib.Tokenizer):
    self._texts, self._tokenizer = texts, tokenizer

  def __len__(self) -> int:
    return len(self._texts)

  def read(self, indices) -> list[np.ndarray]:
    # One batch call: HF tokenizers encode it on all cores.
    return self._tokenizer.encode_batch([self._texts[int(i)] for i in indices])


def tokenized_documents(name: str, data_config: ml_collections.ConfigDict, split: str,
                        tokenizer: tokenizer_lib.Tokenizer) -> packing.Documents:
  """A split's documents as token ids: from the token cache if `prepare` wrote it."""
  if name not in data_config.sources:
    raise ConfigError(f"data source {name!r} is unknown; "
                      f"known sources: {source_names(data_config)}")
  cache_dir = data_config.token_cache_dir
  if token_cache.exists(cache_dir, name, split):
    return token_cache.read(cache_dir, name, split, tokenizer.fingerprint,
                            corpora.definition(data_config.sources[name]))
  return _LiveDocuments(corpora.documents(name, data_config.sources[name], split), tokenizer)


def _stream(name: str, data_config: ml_collections.ConfigDict, split: str,
            tokenizer: tokenizer_lib.Tokenizer) -> packing.PackedStream:
  documents = tokenized_documents(name, data_config, split, tokenizer)
  if len(documents) == 0:
    raise ConfigError(f"data source {name!r}: its {split} split has no documents")
  training = split == "train"
  from_bucket = isinstance(documents, token_cache.CachedDocuments) and documents.in_bucket
  return packing.PackedStream(
      documents, data_config.seq_len, tokenizer.eos_id,
      shuffle_seed=data_config.shuffle_seed if training else None, endless=training,
      documents_per_read=(_BUCKET_DOCUMENTS_PER_READ if from_bucket
                          else packing.DOCUMENTS_PER_READ))


def per_process_batch_size(data_config: ml_collections.ConfigDict, shard: ProcessShard) -> int:
  if data_config.global_batch_size % shard.count:
    raise ConfigError(f"data.global_batch_size={data_config.global_batch_size}: expected a "
                      f"multiple of the {shard.count} processes")
  return data_config.global_batch_size // shard.count


class _StageIterator(grain.DatasetIterator):
  """This process's rows of the stage's global batches, in order."""

  def __init__(self, streams, mixture, first_rows, source_ids, batch_size, shard):
    super().__init__()
    self._streams, self._mixture, self._first_rows = streams, mixture, first_rows
    self._source_ids = source_ids
    self._batch_size, self._shard = batch_size, shard
    self._batch = 0

  def __next__(self) -> dict:
    global_size = self._batch_size
    local_size = global_size // self._shard.count
    first = self._batch * global_size + self._shard.index * local_size
    sources = self._mixture.sources(first, local_size)
    before = self._mixture.rows_before(first)
    rows = {key: np.empty((local_size, self._streams[0].row_length), np.int32)
            for key in packing.ROW_KEYS}
    for index, stream in enumerate(self._streams):
      at = np.flatnonzero(sources == index)
      if len(at):
        stream.write_rows(int(self._first_rows[index] + before[index]), rows, at)
    self._batch += 1
    return {**rows, "source_id": self._source_ids[sources]}

  def get_state(self) -> dict:
    return {"batch": self._batch, "streams": [stream.get_state() for stream in self._streams]}

  def set_state(self, state: dict) -> None:
    if len(state["streams"]) != len(self._streams):
      raise ConfigError(f"data state for {len(state['streams'])} sources restored into a stage "
                        f"with {len(self._streams)}")
    self._batch = state["batch"]
    for stream, stream_state in zip(self._streams, state["streams"]):
      stream.set_state(stream_state)


class _StageDataset(grain.IterDataset):

  def __init__(self, make_iterator):
    super().__init__()
    self._make_iterator = make_iterator

  def __iter__(self) -> _StageIterator:
    return self._make_iterator()


def _stage_sources(stage: run_plan.StagePlan) -> tuple[list[str], mixture_lib.RowMixture]:
  """The stage's sources with a weight, in a fixed order, and their row mixture."""
  names = sorted(name for name, weight in stage.mixture.items() if weight > 0)
  return names, mixture_lib.RowMixture([stage.mixture[name] for name in names])


def _first_rows(stage: run_plan.StagePlan, positions: dict[str, int]) -> dict[str, int]:
  """Where each source's stream starts in `stage`: a replayed source with
  replay_position="continue" after the furthest row served before; every other at 0."""
  return {name: positions.get(name, 0) if name in stage.replayed_sources
          and stage.replay_position == "continue" else 0 for name in _stage_sources(stage)[0]}


def stream_positions(data_config: ml_collections.ConfigDict, plans: list[run_plan.StagePlan],
                     stage_index: int, before_run: dict[str, int] | None = None
                     ) -> dict[str, int]:
  """The furthest row of each source's stream served before stage `stage_index` begins, over
  all processes: closed form from the plan (mixtures are fixed patterns) and `before_run`,
  the positions the run started from (those of the run it continues)."""
  positions = dict(before_run or {})
  for stage in plans[:stage_index]:
    names, mixture = _stage_sources(stage)
    first = _first_rows(stage, positions)
    served = mixture.rows_before(stage.steps * data_config.global_batch_size)
    for name, rows in zip(names, served):
      positions[name] = max(positions.get(name, 0), first[name] + int(rows))
  return positions


def stream_positions_at(data_config: ml_collections.ConfigDict, plans: list[run_plan.StagePlan],
                        step: int, before_run: dict[str, int] | None = None) -> dict[str, int]:
  """The furthest row of each source's stream served up to global `step` (where a run that
  starts from that step's checkpoint continues a replayed source)."""
  done = [dataclasses.replace(stage, steps=min(max(step - stage.start_step, 0), stage.steps))
          for stage in plans]
  return stream_positions(data_config, done, len(done), before_run)


def rows_served(data_config: ml_collections.ConfigDict, plans: list[run_plan.StagePlan],
                step: int) -> dict[str, int]:
  """Training rows of each source up to global `step`, over all processes (every training
  row holds seq_len targets)."""
  served = {name: 0 for name in source_names(data_config)}
  for stage in plans:
    steps = min(max(step - stage.start_step, 0), stage.steps)
    names, mixture = _stage_sources(stage)
    for name, rows in zip(names, mixture.rows_before(steps * data_config.global_batch_size)):
      served[name] += int(rows)
  return served


def stage_dataset(data_config: ml_collections.ConfigDict, stage: run_plan.StagePlan,
                  tokenizer: tokenizer_lib.Tokenizer, shard: ProcessShard = ProcessShard(),
                  positions: dict[str, int] | None = None) -> grain.IterDataset:
  """Batches of the stage's mixture: {tokens, segment_ids, positions: (B, L + 1),
  source_id: (B,)}, B rows per process; `source_id` indexes `source_names`.

  `positions` (`stream_positions` of this stage) is how far each source's stream was served
  in earlier stages; a stage that continues a replayed source starts there."""
  all_names = source_names(data_config)
  names, mixture = _stage_sources(stage)
  first = _first_rows(stage, positions or {})
  first_rows = np.array([first[name] for name in names], np.int64)
  source_ids = np.array([all_names.index(name) for name in names], np.int32)
  batch_size = data_config.global_batch_size
  per_process_batch_size(data_config, shard)  # Checks that the batch divides.

  def make_iterator():  # Bad sources fail here, when the trainer calls iter().
    streams = [_stream(name, data_config, "train", tokenizer) for name in names]
    return _StageIterator(streams, mixture, first_rows, source_ids, batch_size, shard)

  dataset = _StageDataset(make_iterator)
  prefetch = data_config.prefetch_batches
  if token_cache.in_bucket(data_config.token_cache_dir):
    prefetch = max(prefetch, _BUCKET_PREFETCH_BATCHES)
  if prefetch:
    dataset = grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=prefetch)
  return dataset


def skip_to_batch(iterator: grain.DatasetIterator, batch: int) -> None:
  """Positions a fresh stage iterator at global batch `batch` without a saved state (e.g. a
  run resumed on another number of processes): token-cache sources seek there directly; live
  ones re-read their documents up to it."""
  state = iterator.get_state()
  iterator.set_state({**state, "batch": batch})


def _plain_windows(rows: dict) -> dict:
  """Rows as plain causal windows: one segment, positions from the row's start; only padding
  is masked. How GPT-NeoX and transformers score a sequence."""
  real = (rows["segment_ids"] != 0).astype(np.int32)
  ramp = np.arange(rows["tokens"].shape[1], dtype=np.int32)
  return {**rows, "segment_ids": real, "positions": ramp * real}


def validation_batches(name: str, data_config: ml_collections.ConfigDict,
                       tokenizer: tokenizer_lib.Tokenizer, max_batches: int,
                       shard: ProcessShard = ProcessShard(), *,
                       document_masking: bool = True) -> list[dict]:
  """This process's rows of the first `max_batches` global batches of the source's validation
  split, as model batches; without `document_masking`, each row is one plain window.

  Rows past the split's end are padding (all masked out), so every batch has the per-process
  batch size and every evaluation sees exactly the same tokens."""
  stream = _stream(name, data_config, "validation", tokenizer)
  local_size = per_process_batch_size(data_config, shard)
  if not packing.to_model_batch(stream.rows(0, 1))["loss_mask"].any():
    raise ConfigError(f"data source {name!r}: the validation split yields no rows")
  batches = []
  for index in range(max_batches):
    first = index * data_config.global_batch_size
    if index and not stream.rows(first, 1)["segment_ids"].any():
      break  # The previous batch reached the end of the split.
    rows = stream.rows(first + shard.index * local_size, local_size)
    batches.append(packing.to_model_batch(rows if document_masking else _plain_windows(rows)))
  return batches
