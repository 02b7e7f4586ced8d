"""`cpt-jax prepare` speed with 1 and 2 worker processes, and its peak memory against corpus size.

  python -m benchmarks.prepare_throughput [--megabytes=1280] [--rss_megabytes=64] [--keep=DIR]

Generates a corpus of zstd JSONL files (English-like text from a fixed vocabulary, 4 MB per
file, documents of 1-16 KB) of `--megabytes` of text, 10x the largest corpus the tests
prepare (128 MB), trains the demo's byte-level BPE (4096 tokens) on its first 8 MB, and times
`prepare` with `--workers=1` and `--workers=2`, each in a fresh process. Then it prepares
corpora of `--rss_megabytes` and 4x that with one worker and reports the peak resident memory
of the command and its worker (the larger of the two); streaming means the ratio stays ~1.
Last line: `prepare tokens/s: <x>; rss growth: <ratio>` (x: the faster of the two runs).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--megabytes", type=int, default=1280, help="Throughput corpus size.")
parser.add_argument("--rss_megabytes", type=int, default=64, help="Smaller RSS corpus size.")
parser.add_argument("--keep", default="", help="Work in this directory and keep it.")
args = parser.parse_args()

_FILE_MEGABYTES = 4

# Runs prepare in a fresh process; prints its seconds and the peak RSS (KB) of it and its
# workers, which `getrusage` reports for the process and its waited-for children.
_RUN = textwrap.dedent("""
    import json, resource, sys, time
    from cpt_jax import base_config, corpora, prepare
    config = base_config.base_config()
    config.data.tokenizer.kind = "bpe"
    config.data.tokenizer.train_source = "web"
    config.data.sources = {"web": corpora.source_config("text_files", glob=sys.argv[1])}
    config.data.token_cache_dir = sys.argv[2]
    start = time.perf_counter()
    summaries = prepare.prepare(config, workers=int(sys.argv[3]), progress=False)
    seconds = time.perf_counter() - start
    rss = max(resource.getrusage(who).ru_maxrss
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"seconds": seconds, "rss_kb": rss,
                      "tokens": sum(summary["tokens"] for summary in summaries)}))
""")


def generate(directory: str, megabytes: int) -> str:
  """Writes `megabytes` of text as zstd JSONL files; returns their glob."""
  import zstandard
  os.makedirs(directory)
  rng = random.Random(0)
  words = ["".join(rng.choice("etaoinshrdlcumwfgypbvk") for _ in range(rng.randint(1, 9)))
           for _ in range(5000)]
  compressor = zstandard.ZstdCompressor(level=1)
  for index in range(max(1, megabytes // _FILE_MEGABYTES)):
    lines, size = [], 0
    while size < _FILE_MEGABYTES << 20:
      text = " ".join(rng.choices(words, k=rng.randint(200, 3000))) + "."
      lines.append(json.dumps({"text": text}) + "\n")
      size += len(text)
    with open(os.path.join(directory, f"part{index:05d}.jsonl.zst"), "wb") as f:
      f.write(compressor.compress("".join(lines).encode()))
  return os.path.join(directory, "*.jsonl.zst")


def train_tokenizer(glob: str, cache_dir: str) -> None:
  """The BPE, trained once into `cache_dir` (prepare reuses the cache's tokenizer.json)."""
  from cpt_jax import base_config, corpora, run_directory
  config = base_config.base_config()
  config.data.tokenizer.kind = "bpe"
  config.data.tokenizer.train_source = "web"
  config.data.sources = {"web": corpora.source_config("text_files", glob=glob)}
  config.data.token_cache_dir = cache_dir
  os.makedirs(cache_dir)
  run_directory.save_tokenizer(cache_dir, run_directory.tokenizer_for_run(config, cache_dir))


def run_prepare(glob: str, tokenizer_dir: str, cache_dir: str, workers: int) -> dict:
  shutil.rmtree(cache_dir, ignore_errors=True)
  shutil.copytree(tokenizer_dir, cache_dir)
  result = subprocess.run([sys.executable, "-c", _RUN, glob, cache_dir, str(workers)],
                          capture_output=True, text=True, check=True)
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  shutil.rmtree(cache_dir)  # Tokens take 4 bytes each: keep the disk free.
  return measured


def main():
  work = args.keep or tempfile.mkdtemp(prefix="prepare_throughput_")
  sizes = {"throughput": args.megabytes, "rss_small": args.rss_megabytes,
           "rss_large": 4 * args.rss_megabytes}
  globs = {}
  for name, megabytes in sizes.items():
    directory = os.path.join(work, name)
    if not os.path.exists(directory):
      start = time.perf_counter()
      generate(directory, megabytes)
      print(f"generated {megabytes} MB ({name}) in {time.perf_counter() - start:.0f} s")
    globs[name] = os.path.join(directory, "*.jsonl.zst")
  tokenizer_dir = os.path.join(work, "tokenizer")
  if not os.path.exists(tokenizer_dir):
    train_tokenizer(globs["rss_small"], tokenizer_dir)
  cache_dir = os.path.join(work, "cache")

  rates = []
  for workers in (1, 2):
    measured = run_prepare(globs["throughput"], tokenizer_dir, cache_dir, workers)
    rates.append(measured["tokens"] / measured["seconds"])
    print(f"workers={workers}: {measured['tokens']:,} tokens of {args.megabytes} MB in "
          f"{measured['seconds']:.1f} s: {rates[-1]:,.0f} tokens/s, "
          f"{args.megabytes / measured['seconds']:.1f} MB/s")
  rss = {}
  for name in ("rss_small", "rss_large"):
    rss[name] = run_prepare(globs[name], tokenizer_dir, cache_dir, 1)["rss_kb"] / 1024
    print(f"{sizes[name]} MB corpus: peak RSS {rss[name]:.0f} MB")
  if not args.keep:
    shutil.rmtree(work)
  growth = rss["rss_large"] / rss["rss_small"]
  print(f"prepare tokens/s: {max(rates):,.0f}; rss growth: {growth:.2f}")


if __name__ == "__main__":
  main()
