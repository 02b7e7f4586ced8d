"""Tests for benchmarks/attention.py: it runs end to end on a tiny shape with grouped queries
(the figures themselves are the benchmark's business, not a test's)."""

import re

import run_helpers as helpers


def test_each_kernel_and_torch_are_timed_and_the_speed_up_is_printed():
  output = helpers.benchmark("attention", "--batch=2", "--seq_len=64", "--heads=4",
                             "--kv_heads=2", "--head_dim=8", "--rounds=1", "--calls=1")
  lines = output.splitlines()
  assert re.fullmatch(r"round 1: chunked [\d.]+ ms, xla [\d.]+ ms, "
                      r"torch sdpa \(causal only\) [\d.]+ ms", lines[1])
  speed_up = re.fullmatch(r"chunked/xla: ([\d.]+)", lines[-1])
  assert speed_up and float(speed_up[1]) > 0
