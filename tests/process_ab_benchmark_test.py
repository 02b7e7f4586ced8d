"""Tests for benchmarks/process_ab.py: each side's process runs with its own settings, the two
take turns, and the ratio is printed (the figures themselves are the benchmark's business)."""

import os
import re
import subprocess
import sys

import run_helpers as helpers

_SMALL = ("--rows=2", "--seq_len=32", "--steps=1")


def test_side_b_runs_with_its_flags_and_the_rounds_alternate_into_a_ratio():
  flag = "--xla_cpu_enable_fast_min_max=true"
  output = helpers.benchmark("process_ab", f"--xla_flags_b={flag}", "--rounds=3", *_SMALL)
  lines = output.splitlines()
  side_a = next(line for line in lines if line.startswith("A: "))
  side_b = next(line for line in lines if line.startswith("B: "))
  assert flag not in side_a and flag in side_b, output  # As each process read its XLA_FLAGS.
  assert re.match(rf"B: jax \S+, Python {re.escape(sys.version.split()[0])}, ", side_b), output
  rounds = [re.fullmatch(r"round (\d): A ([\d,]+) tok/s, B ([\d,]+) tok/s, B/A ([\d.]+)", line)
            for line in lines if line.startswith("round ")]
  assert [int(match[1]) for match in rounds] == [1, 2, 3], output
  for match in rounds:  # B/A of the printed rates, as closely as their rounding tells.
    assert helpers.ratio_of_printed_rates(match[4], match[3], match[2]), output
  ratios = sorted(float(match[4]) for match in rounds)
  last = re.fullmatch(r"B/A median ratio: ([\d.]+) \(B faster in (\d) of 3 rounds\)", lines[-1])
  assert last, output
  assert float(last[1]) == ratios[1], output  # Rounding keeps the order: the middle one's.
  # A ratio printed as 1.000 may have been a little above 1 or not.
  faster = sum(ratio > 1 for ratio in ratios)
  assert faster <= int(last[2]) <= faster + ratios.count(1.0), output


def test_a_python_b_that_is_not_an_interpreter_is_named_in_one_line():
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.process_ab", "--python_b=/no/such/python", *_SMALL],
      cwd=helpers.ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines()[-1] == (
      "process_ab.py: error: --python_b: /no/such/python is not an executable file")


def test_a_side_that_cannot_start_is_reported_with_its_status_and_stderr(tmp_path):
  python_b = tmp_path / "python"  # An "interpreter" that fails as a broken environment would.
  python_b.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named jax' >&2\nexit 1\n")
  os.chmod(python_b, 0o755)
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.process_ab", f"--python_b={python_b}", "--b_first",
       *_SMALL], cwd=helpers.ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1, result.stderr
  assert "No module named jax" in result.stderr
  assert result.stderr.splitlines()[-1] == (
      "process_ab: side B's process exited with status 1 (its stderr's end above)")
