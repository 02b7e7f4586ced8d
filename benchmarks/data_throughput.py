"""Data pipeline speed: the full stage pipeline against the raw ArrayRecord read it sits on.

  python benchmarks/data_throughput.py [--cache_dir=DIR] [--batches=300]

Uses the demo's stage 2 (Python code 95% + Shakespeare replay 5%), pre-tokenized once with
`cpt-jax prepare` into DIR (a temporary directory unless given). "raw" reads every record of
the same ArrayRecord files and decodes the token ids; "pipeline" is ArrayRecord -> shuffled
documents -> packed rows -> mixture -> batches, exactly what training consumes. It also
times the tiny model's train step on the demo batch, since the data must outrun it.
Targets: pipeline >= 50% of raw, and >= 100x the tiny model's tokens/s.
The last line reads `pipeline/raw ratio: <x>`.
"""

import argparse
import os
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache_dir", default="")
parser.add_argument("--batches", type=int, default=300)
parser.add_argument("--seq_len", type=int, default=128, help="Row length (the demo's: 128).")
args = parser.parse_args()

import grain  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
sys.path.insert(0, os.path.dirname(__file__))
import demo  # noqa: E402
from bare_step import BareStep  # noqa: E402

from cpt_jax import input_pipeline, prepare, run_directory, run_plan, token_cache  # noqa: E402


def raw_tokens_per_second(cache_dir, sources) -> float:
  paths = [token_cache.paths(cache_dir, name, "train")[0] for name in sources]
  records = grain.sources.ArrayRecordDataSource(paths)
  start, tokens = time.perf_counter(), 0
  for index in range(len(records)):
    tokens += len(np.frombuffer(records[index], np.int32))
  return tokens / (time.perf_counter() - start)


def pipeline_tokens_per_second(config, stage, tokenizer) -> float:
  iterator = iter(input_pipeline.stage_dataset(config.data, stage, tokenizer))
  for _ in range(10):  # Warm up: open files, fill read-ahead.
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(iterator)
  tokens = args.batches * config.data.global_batch_size * config.data.seq_len
  return tokens / (time.perf_counter() - start)


def main():
  config = demo.get_config()
  config.data.seq_len = args.seq_len
  config.model.max_seq_len = max(config.model.max_seq_len, args.seq_len)
  config.data.token_cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(),
                                                               "cpt_jax_demo_tokens")
  prepare.prepare(config)  # No-op for splits already prepared.
  tokenizer = run_directory.tokenizer_for_run(config, config.data.token_cache_dir)
  stage = run_plan.plan(config)[1]
  raw = raw_tokens_per_second(config.data.token_cache_dir, sorted(stage.mixture))
  pipeline = pipeline_tokens_per_second(config, stage, tokenizer)
  print(f"raw ArrayRecord read: {raw:,.0f} tokens/s")
  print(f"stage pipeline (packed, mixed 95/5, batched {config.data.global_batch_size} x "
        f"{config.data.seq_len}): {pipeline:,.0f} tokens/s")
  if args.seq_len == 128:  # The demo's shape; longer rows would not fit the CPU's memory.
    model_only = ml_collections.ConfigDict(config.to_dict())
    model_only.data.token_cache_dir = ""  # Its one batch is built live with byte tokens.
    model = BareStep(model_only).tokens_per_second(5)
    print(f"tiny model train step: {model:,.0f} tokens/s; pipeline/model ratio: "
          f"{pipeline / model:,.0f}x")
  print(f"pipeline/raw ratio: {pipeline / raw:.3f}")


if __name__ == "__main__":
  main()
