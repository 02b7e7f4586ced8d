"""Data pipeline speed: the full stage pipeline against the raw ArrayRecord read it sits on.

  python benchmarks/data_throughput.py [--cache_dir=DIR] [--seconds=3] [--seq_lens=128,2048]

Uses the demo's stage 2 (Python code 95% + Shakespeare replay 5%), pre-tokenized once with
`cpt-jax prepare` into DIR (a temporary directory unless given). "raw" reads every record of
the same ArrayRecord files and decodes the token ids; "pipeline" is ArrayRecord -> shuffled
documents -> packed rows -> mixture -> batches of 32 rows, exactly what training consumes
(including the background thread that builds batches ahead). It runs at the demo's row length
(128) and at the pretraining configs' (2048); raw is timed before and after, and averaged.
It also times the tiny model's train step on the demo batch, since the data must outrun it.
Targets: pipeline >= 50% of raw, and >= 100x the tiny model's tokens/s.
The last line reads `pipeline/raw ratio: <x>`, at the longest row length.
"""

import argparse
import os
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache_dir", default="")
parser.add_argument("--seconds", type=float, default=3.0, help="Time per measurement.")
parser.add_argument("--seq_lens", default="128,2048", help="Row lengths (demo, pretraining).")
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


def pipeline_tokens_per_second(config, seq_len, tokenizer) -> float:
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.seq_len = seq_len
  stage = run_plan.plan(config)[1]
  iterator = iter(input_pipeline.stage_dataset(config.data, stage, tokenizer))
  for _ in range(10):  # Warm up: open files, start the background thread.
    next(iterator)
  start, batches = time.perf_counter(), 0
  while time.perf_counter() - start < args.seconds:
    next(iterator)
    batches += 1
  tokens = batches * config.data.global_batch_size * seq_len
  return tokens / (time.perf_counter() - start)


def main():
  config = demo.get_config()
  config.data.token_cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(),
                                                               "cpt_jax_demo_tokens")
  prepare.prepare(config)  # No-op for splits already prepared.
  tokenizer = run_directory.tokenizer_for_run(config, config.data.token_cache_dir)
  sources = sorted(run_plan.plan(config)[1].mixture)
  seq_lens = sorted(int(n) for n in args.seq_lens.split(","))
  raw_before = raw_tokens_per_second(config.data.token_cache_dir, sources)
  pipeline = {n: pipeline_tokens_per_second(config, n, tokenizer) for n in seq_lens}
  raw = (raw_before + raw_tokens_per_second(config.data.token_cache_dir, sources)) / 2
  print(f"raw ArrayRecord read: {raw:,.0f} tokens/s")
  for seq_len, speed in pipeline.items():
    print(f"stage pipeline (packed, mixed 95/5, batched {config.data.global_batch_size} x "
          f"{seq_len}): {speed:,.0f} tokens/s, {speed / raw:.3f} of raw")
  if config.data.seq_len in pipeline:  # The model comparison is made at the demo's shape.
    model_only = ml_collections.ConfigDict(config.to_dict())
    model_only.data.token_cache_dir = ""  # Its one batch is built live with byte tokens.
    model = BareStep(model_only).tokens_per_second(5)
    print(f"tiny model train step: {model:,.0f} tokens/s; pipeline/model ratio at "
          f"{config.data.seq_len}: {pipeline[config.data.seq_len] / model:,.0f}x")
  print(f"pipeline/raw ratio: {pipeline[seq_lens[-1]] / raw:.3f}")


if __name__ == "__main__":
  main()
