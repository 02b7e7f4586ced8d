"""Training from a token cache in a bucket: how long the step waits on the data.

  python -m benchmarks.bucket_read [--latency_ms=30] [--step_ms=200] [--seq_len=2048]
      [--steps=20]

The demo's stage 2 (Python code 95% + Shakespeare replay 5%) is prepared into gs://bucket,
served by the tests' stand-in for Cloud Storage (tests/fake_bucket.py: ArrayRecord's own
reader over HTTP on this machine), where every object read first waits `--latency_ms`, as a
bucket's first byte does. A loop then takes batches as training does, with a step of
`--step_ms` (a sleep) between them, and reports the time each step waited for its batch:
- from the same cache on local disk;
- from the bucket without read-ahead (`data.prefetch_batches` 0, as a local cache runs);
- from the bucket as `cpt-jax train` reads it (two batches ahead in a thread).
It also times one batch's worth of documents read one record at a time against one
parallel read, and a batch of short generated documents (50-400 tokens) read 32 documents at
a time (as local and live sources are) against up to 1024 (as a bucket cache is).
The last line reads `bucket wait per step: <x> ms (read-ahead), <y> ms (none)`.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--latency_ms", type=float, default=30.0)
parser.add_argument("--step_ms", type=float, default=200.0, help="The train step's time.")
parser.add_argument("--seq_len", type=int, default=2048)
parser.add_argument("--steps", type=int, default=20, help="Steps timed per measurement.")
args = parser.parse_args()

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo  # noqa: E402
from cpt_jax import (corpora, input_pipeline, packing, prepare, run_directory,  # noqa: E402
                     run_plan, token_cache)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import fake_bucket  # noqa: E402


def stage_config(cache_dir):
  config = demo.get_config()
  config.data.seq_len = args.seq_len
  config.data.token_cache_dir = cache_dir
  return config


def waits_ms(config, read_ahead=None):
  """Milliseconds each of `args.steps` steps waited for its batch, after two warm-up steps."""
  if read_ahead is not None:
    input_pipeline._BUCKET_PREFETCH_BATCHES = read_ahead
  tokenizer = run_directory.tokenizer_for_run(config, config.data.token_cache_dir)
  iterator = iter(input_pipeline.stage_dataset(config.data, run_plan.plan(config)[1], tokenizer))
  waits = []
  for step in range(args.steps + 2):
    start = time.perf_counter()
    next(iterator)
    if step >= 2:
      waits.append((time.perf_counter() - start) * 1e3)
    time.sleep(args.step_ms / 1e3)
  return waits


def one_batch_of_records_ms(config):
  """(one record at a time, one parallel read) for the documents of a batch, in ms."""
  cache_dir = config.data.token_cache_dir
  tokenizer = run_directory.tokenizer_for_run(config, cache_dir)
  documents = token_cache.read(cache_dir, "code", "train", tokenizer.fingerprint,
                               corpora.definition(config.data.sources.code))
  tokens = config.data.global_batch_size * config.data.seq_len
  count = int(np.searchsorted(np.cumsum(documents.lengths + 1), tokens)) + 1
  indices = list(range(1000, 1000 + count))
  start = time.perf_counter()
  one_by_one = [documents.read([index])[0] for index in indices]
  serial = (time.perf_counter() - start) * 1e3
  start = time.perf_counter()
  together = documents.read(indices)
  parallel = (time.perf_counter() - start) * 1e3
  assert all(np.array_equal(a, b) for a, b in zip(one_by_one, together))
  return count, serial, parallel


def short_documents_batch_ms(bucket, documents_per_read):
  """ms per 32 x seq_len batch of short documents, packed from the bucket."""
  tokens = [np.random.default_rng(index).integers(0, 4000, 50 + index % 350, dtype=np.int32)
            for index in range(20_000)]
  if not os.path.exists(os.path.join(bucket.root, "short")):
    token_cache.write(os.path.join(bucket.root, "short"), "web", "train", tokens, "fp", {})
  documents = token_cache.read(f"{bucket.prefix}/short", "web", "train", "fp", {})
  stream = packing.PackedStream(documents, args.seq_len, 0, shuffle_seed=0,
                                documents_per_read=documents_per_read)
  stream.rows(0, 32)
  start = time.perf_counter()
  for batch in range(1, 11):
    stream.rows(32 * batch, 32)
  return (time.perf_counter() - start) / 10 * 1e3


def summary(name, waits):
  print(f"{name:34s} wait per step: median {statistics.median(waits):7.1f} ms, "
        f"mean {statistics.mean(waits):7.1f}, max {max(waits):7.1f}")
  return statistics.mean(waits)


def main():
  local_dir = tempfile.mkdtemp(prefix="bucket_read_")
  local = stage_config(os.path.join(local_dir, "tokens"))
  prepare.prepare(ml_collections.ConfigDict(local.to_dict()), workers=0, progress=False)
  print(f"latency {args.latency_ms:.0f} ms per object read, step {args.step_ms:.0f} ms, "
        f"{local.data.global_batch_size} x {args.seq_len} tokens a batch")
  summary("local cache", waits_ms(local))
  with fake_bucket.serve(local_dir, latency_s=args.latency_ms / 1e3) as bucket:
    remote = stage_config(f"{bucket.prefix}/tokens")
    count, serial, parallel = one_batch_of_records_ms(remote)
    print(f"a batch's {count} code documents: one record at a time {serial:.0f} ms, "
          f"one parallel read {parallel:.0f} ms")
    by_32, by_many = (short_documents_batch_ms(bucket, count) for count in (
        packing.DOCUMENTS_PER_READ, input_pipeline._BUCKET_DOCUMENTS_PER_READ))
    print(f"a batch of short documents: {by_32:.0f} ms read {packing.DOCUMENTS_PER_READ} at a "
          f"time, {by_many:.0f} ms up to {input_pipeline._BUCKET_DOCUMENTS_PER_READ}")
    none = summary("bucket, no read-ahead", waits_ms(remote, read_ahead=0))
    ahead = summary("bucket, read-ahead (cpt-jax train)", waits_ms(remote, read_ahead=2))
  print(f"bucket wait per step: {ahead:.1f} ms (read-ahead), {none:.1f} ms (none)")


if __name__ == "__main__":
  main()
