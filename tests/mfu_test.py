"""Tests for benchmarks/mfu.py: it runs end to end on the tiny preset, at a batch it picks
to fit a given device memory."""

import re

import run_helpers as helpers
from cpt_jax import step_memory


def test_the_largest_batch_that_fits_the_memory_is_timed():
  capacity = 6e7
  plan, timed, last = helpers.benchmark(
      "mfu", "--steps=1", "--seq_len=64", f"--device_memory={capacity:.0f}").splitlines()[-3:]
  planned = {int(rows): int(size.replace(",", "")) for rows, size in
             re.findall(r"(\d+) x 64: ([\d,]+) bytes", plan)}
  assert plan.endswith(f") of {capacity:,.0f}") and len(planned) >= 3, plan
  rows = int(re.search(r", (\d+) x 64 per device, remat none, head float32: [\d,]+ tokens/s",
                       timed)[1])
  budget = step_memory.FITTING_SHARE * capacity
  assert planned[rows] <= budget
  assert all(size > budget for other, size in planned.items() if other > rows), plan
  assert last == "mfu: n/a"  # A CPU has no known peak.
