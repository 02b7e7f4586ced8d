"""Data pipeline speed: the full stage pipeline against the raw ArrayRecord read it sits on.

  python -m benchmarks.data_throughput [--cache_dir=DIR] [--rounds=3] [--seq_lens=128,2048]

Uses the demo's stage 2 (Python code 95% + Shakespeare replay 5%), pre-tokenized once with
`cpt-jax prepare` into DIR (a temporary directory unless given). "raw" reads every record of
the same ArrayRecord files and decodes the token ids; "pipeline" is ArrayRecord -> shuffled
documents -> packed rows -> mixture -> batches of 32 rows, exactly what training consumes.
It runs at the demo's row length (128) and at the pretraining configs' (2048), in rounds that
time raw and each pipeline side by side, and reports the median ratio.
It also times the tiny model's train step on the demo batch, since the data must outrun it.
Targets: pipeline >= 50% of raw, and >= 100x the tiny model's tokens/s.
The last line reads `pipeline/raw ratio: <x>`, at the longest row length.
"""

import argparse
import os
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache_dir", default="")
parser.add_argument("--seconds", type=float, default=2.0, help="Time per measurement.")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--seq_lens", default="128,2048", help="Row lengths (demo, pretraining).")
args = parser.parse_args()

import grain  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo  # noqa: E402
from benchmarks.bare_step import BareStep  # noqa: E402

from cpt_jax import input_pipeline, prepare, run_directory, run_plan, token_cache  # noqa: E402


def raw_tokens_per_second(cache_dir, sources) -> float:
  paths = [path for name in sources for path in token_cache.records_paths(cache_dir, name, "train")]
  records = grain.sources.ArrayRecordDataSource(paths)
  start, tokens = time.perf_counter(), 0
  for index in range(len(records)):
    tokens += len(np.frombuffer(records[index], np.int32))
  return tokens / (time.perf_counter() - start)


def pipeline_iterator(config, seq_len, tokenizer):
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.seq_len = seq_len
  stage = run_plan.plan(config)[1]
  iterator = iter(input_pipeline.stage_dataset(config.data, stage, tokenizer))
  for _ in range(10):  # Warm up: open files, read the first documents.
    next(iterator)
  return iterator, config.data.global_batch_size * seq_len


def tokens_per_second(iterator, tokens_per_batch) -> float:
  start, batches = time.perf_counter(), 0
  while time.perf_counter() - start < args.seconds:
    next(iterator)
    batches += 1
  return batches * tokens_per_batch / (time.perf_counter() - start)


def main():
  config = demo.get_config()
  config.data.token_cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(),
                                                               "cpt_jax_demo_tokens")
  prepare.prepare(config)  # No-op for splits already prepared.
  tokenizer = run_directory.tokenizer_for_run(config, config.data.token_cache_dir)
  sources = sorted(run_plan.plan(config)[1].mixture)
  seq_lens = sorted(int(n) for n in args.seq_lens.split(","))
  pipelines = {n: pipeline_iterator(config, n, tokenizer) for n in seq_lens}
  ratios = {n: [] for n in seq_lens}
  raw_tokens_per_second(config.data.token_cache_dir, sources)  # Warm up: the page cache.
  for round_index in range(args.rounds):  # Interleaved, so drifts in machine speed cancel.
    raw = raw_tokens_per_second(config.data.token_cache_dir, sources)
    line = [f"round {round_index + 1}: raw {raw / 1e6:,.1f}M tokens/s"]
    for seq_len, (iterator, tokens_per_batch) in pipelines.items():
      speed = tokens_per_second(iterator, tokens_per_batch)
      ratios[seq_len].append(speed / raw)
      line.append(f"pipeline x {seq_len} {speed / 1e6:,.1f}M ({speed / raw:.3f})")
    print(", ".join(line))
  for seq_len in seq_lens:
    print(f"stage pipeline (packed, mixed 95/5, batched {config.data.global_batch_size} x "
          f"{seq_len}) / raw read: {np.median(ratios[seq_len]):.3f} (median of {args.rounds})")
  if config.data.seq_len in pipelines:  # The model comparison is made at the demo's shape.
    iterator, tokens_per_batch = pipelines[config.data.seq_len]
    pipeline = tokens_per_second(iterator, tokens_per_batch)
    model_only = ml_collections.ConfigDict(config.to_dict())
    model_only.data.token_cache_dir = ""  # Its one batch is built live with byte tokens.
    model = BareStep(model_only).tokens_per_second(5)
    print(f"tiny model train step: {model:,.0f} tokens/s; pipeline at {config.data.seq_len}: "
          f"{pipeline:,.0f} tokens/s, {pipeline / model:,.0f}x the model")
  print(f"pipeline/raw ratio: {np.median(ratios[seq_lens[-1]]):.3f}")


if __name__ == "__main__":
  main()
