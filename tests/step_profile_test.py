"""Tests for benchmarks/step_profile.py: it traces the tiny preset's step on a CPU and sums
the ops it ran by kind, and summarizes a trace taken before."""

import glob
import os
import re

import run_helpers as helpers


def _kinds(output: str) -> dict[str, float]:
  """{kind: its share, in percent} from the benchmark's lines per kind."""
  return {kind: float(share) for kind, share in
          re.findall(r"^  (\w[\w ]*?) +[\d.]+ ms +([\d.]+)% of ", output, re.MULTILINE)}


def test_the_steps_ops_are_summed_by_kind_and_a_saved_trace_is_summarized(tmp_path):
  output = helpers.benchmark("step_profile", "--steps=2", "--batch_per_device=2",
                             "--seq_len=32", "--top=3", f"--trace_dir={tmp_path}")
  assert re.search(r"tiny, 2 x 32 per device on cpu x 1, float32, head float32, remat none, "
                   r"loss pieces none: [\d.]+ ms a step \([\d,]+ tokens/s", output), output
  kinds = _kinds(output)
  assert "matmul" in kinds or "fusion" in kinds, output
  assert len(re.findall(r"^ +[\d.]+ +[\d.]+% +[12] ", output, re.MULTILINE)) == 3, output
  assert float(re.search(r"busy: ([\d.]+)$", output.strip())[1]) > 0
  (trace,) = glob.glob(os.path.join(tmp_path, "**", "*.xplane.pb"), recursive=True)
  saved = helpers.benchmark("step_profile", f"--trace={trace}", "--steps=2", "--top=3")
  assert _kinds(saved).keys() == kinds.keys()
  assert abs(sum(_kinds(saved).values()) - 100) < 0.5  # Shares of the ops' own time.
