"""`cpt-jax prepare`: tokenize every source once into the token cache (ArrayRecord shards).

Every later run and stage that points `data.token_cache_dir` at the same directory reads the
pre-tokenized shards instead of tokenizing live. A "bpe" tokenizer is trained here (on the
first stage's source) and stored in the cache as `tokenizer.json`, so the runs that read the
cache also use its vocabulary.

It streams. A source is read in units (`corpora.ReadUnit`: a group of files, or a range of a
TFDS split); a pool of worker processes reads, tokenizes and writes each unit as one shard
per split, a batch of documents at a time, so memory does not grow with the corpus. A shard
is complete once its lengths file exists: a rerun after a kill redoes only the others, and
gives the same bytes. With `num_processes` > 1 (hosts, or several commands on one host),
process i takes every n-th unit, and whichever process finds every shard complete joins them
into the split the pipeline reads (`token_cache.finish`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time

import ml_collections

from cpt_jax import corpora
from cpt_jax import run_directory
from cpt_jax import token_cache
from cpt_jax import tokenizer as tokenizer_lib
from cpt_jax.config_error import ConfigError

_log = logging.getLogger(__name__)
# An encode call takes up to this many documents or characters (HF tokenizers encode a batch
# in threads; the characters bound the memory a batch of long documents takes).
_BATCH_DOCUMENTS = 64
_BATCH_CHARS = 1 << 20


@dataclasses.dataclass(frozen=True)
class _Job:
  """One unit of one source, to be written as one shard of each split in `splits`."""
  cache_dir: str
  source: str
  source_config: dict  # The source's config block as a plain dict (pickles into workers).
  unit: corpora.ReadUnit
  count: int  # The source's number of units: shards are "index of count".
  splits: tuple[str, ...]


_worker_tokenizer: tokenizer_lib.Tokenizer | None = None


def _start_worker(kind: str, serialized: bytes, eos_token: str) -> None:
  global _worker_tokenizer
  _worker_tokenizer = (tokenizer_lib.bytes_tokenizer() if kind == "bytes" else
                       tokenizer_lib.from_serialized(kind, serialized, eos_token, "token cache"))


def _start_pool_worker(*worker_args) -> None:
  # Ctrl-C reaches every process of the terminal's group: the parent stops the workers.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _start_worker(*worker_args)


@contextlib.contextmanager
def _children_ignore_ctrl_c():
  """Processes started inside ignore SIGINT from their first instruction (an ignored signal
  stays ignored through exec), before `_start_pool_worker` runs: a Ctrl-C while a worker
  imports would print its traceback. The main thread's handler is restored after."""
  if threading.current_thread() is not threading.main_thread():  # signal.signal's rule.
    yield
    return
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _write_unit(job: _Job) -> tuple[int, int]:
  """Reads, tokenizes and writes one unit; returns (documents, tokens) written."""
  writers = {split: token_cache.ShardWriter(job.cache_dir, job.source, split, job.unit.index,
                                            job.count) for split in job.splits}
  pending = {split: [] for split in job.splits}
  pending_chars = dict.fromkeys(job.splits, 0)

  def flush(split):
    for ids in _worker_tokenizer.encode_batch(pending[split]):
      writers[split].write(ids)
    pending[split], pending_chars[split] = [], 0

  config = ml_collections.ConfigDict(job.source_config)
  for split, _, text in corpora.unit_documents(job.unit, config):
    if split in pending:
      pending[split].append(text)
      pending_chars[split] += len(text)
      if len(pending[split]) == _BATCH_DOCUMENTS or pending_chars[split] >= _BATCH_CHARS:
        flush(split)
  documents = tokens = 0
  for split in job.splits:
    flush(split)
    written = writers[split].close()
    documents, tokens = documents + written[0], tokens + written[1]
  return documents, tokens


def _check_processes(workers: int, num_processes: int, process_id: int) -> None:
  if not isinstance(workers, int) or workers < 0:
    raise ConfigError(f"--workers={workers}: expected an integer >= 0 (0 = this process)")
  if not isinstance(num_processes, int) or num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: expected an integer >= 1")
  if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id}: expected 0 to {num_processes - 1}")


def _run_jobs(jobs: list[_Job], tokenizer: tokenizer_lib.Tokenizer, eos_token: str,
              workers: int, progress: bool) -> None:
  from tqdm.auto import tqdm

  worker_args = (tokenizer.kind, tokenizer.serialized, eos_token)
  start, documents, tokens = time.perf_counter(), 0, 0
  with tqdm(total=len(jobs), unit="shard", desc="prepare", disable=not progress) as bar:
    def done(written):
      nonlocal documents, tokens
      documents, tokens = documents + written[0], tokens + written[1]
      bar.set_postfix(documents=f"{documents:,}", tokens=f"{tokens:,}",
                      tok_s=f"{tokens / (time.perf_counter() - start):,.0f}", refresh=False)
      bar.update(1)

    if workers == 0:
      _start_worker(*worker_args)
      for job in jobs:
        done(_write_unit(job))
    else:  # Spawned, not forked: the parent may hold JAX's or the tokenizer's threads.
      with concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_start_pool_worker, initargs=worker_args) as pool:
        try:
          with _children_ignore_ctrl_c():
            written_units = pool.map(_write_unit, jobs)  # Submits every job: starts workers.
          for written in written_units:
            done(written)
        except KeyboardInterrupt:  # Not waiting for every unit: a shard ends once complete.
          pool.shutdown(wait=False, cancel_futures=True)
          for worker in multiprocessing.active_children():
            worker.terminate()
          raise KeyboardInterrupt(
              f"interrupted (Ctrl-C): {bar.n} of {len(jobs)} shards written; rerun the same "
              "command to write the rest") from None
  _log.info("tokenized %s documents, %s tokens in %.0f s", f"{documents:,}", f"{tokens:,}",
            time.perf_counter() - start)


def prepare(config: ml_collections.ConfigDict, *, workers: int = 1, num_processes: int = 1,
            process_id: int = 0, progress: bool = True) -> list[dict]:
  """Tokenizes this process's share of every source's units into the cache, then joins each
  split whose shards are all complete. Returns the summaries of the splits joined now."""
  # Deferred: they import the checkpoint layer and Grain, which the workers do not need.
  from cpt_jax import input_pipeline
  from cpt_jax import paths

  _check_processes(workers, num_processes, process_id)
  config = paths.resolve_config(config)
  cache_dir = config.data.token_cache_dir
  if not cache_dir:
    raise ConfigError("data.token_cache_dir is empty: set where `prepare` writes the shards, "
                      "e.g. --config.data.token_cache_dir=/data/tokens")
  token_cache.check_cache_dir(cache_dir)
  paths.make_directory(cache_dir, "data.token_cache_dir")
  # The cache directory doubles as the tokenizer's home: trained once, reused by every run.
  tokenizer = run_directory.tokenizer_for_run(config, cache_dir)
  run_directory.save_tokenizer(cache_dir, tokenizer)

  jobs, to_join = [], []
  for name in input_pipeline.source_names(config.data):
    source = config.data.sources[name]
    definition = corpora.definition(source)
    todo = []
    for split in corpora.SPLITS:
      if token_cache.exists(cache_dir, name, split):
        reason = token_cache.mismatch(cache_dir, name, split, definition, tokenizer.fingerprint)
        if reason is None:
          _log.info("%s/%s: already prepared", name, split)
          continue
        _log.info("%s/%s: %s; preparing it again", name, split, reason)
      todo.append(split)
    if not todo:
      continue
    units = corpora.read_units(name, source)
    for split in todo:
      token_cache.begin(cache_dir, name, split, definition, tokenizer.fingerprint, len(units))
      to_join.append((name, split, definition, len(units)))
    for unit in units[process_id::num_processes]:
      if not all(token_cache.shard_done(cache_dir, name, split, unit.index, len(units))
                 for split in todo):
        jobs.append(_Job(cache_dir, name, source.to_dict(), unit, len(units), tuple(todo)))
  _run_jobs(jobs, tokenizer, config.data.tokenizer.eos_token, workers, progress)

  summaries = []
  for name, split, definition, count in to_join:
    missing = sum(not token_cache.shard_done(cache_dir, name, split, index, count)
                  for index in range(count))
    if missing:  # Another process's units.
      _log.info("%s/%s: %d of %d shards are still being written by other processes; the "
                "last one to finish joins them", name, split, missing, count)
      continue
    try:
      summary = token_cache.finish(cache_dir, name, split, definition, tokenizer.fingerprint,
                                   count)
    except token_cache.EmptySplit:
      raise corpora.empty_split(name, config.data.sources[name], split) from None
    _log.info("%s/%s: %d documents, %s tokens", name, split, summary["documents"],
              f"{summary['tokens']:,}")
    summaries.append(summary)
  return summaries
