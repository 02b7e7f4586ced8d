"""Tests for benchmarks/vs_transformers.py: it runs end to end on a tiny shape (the figures
themselves are the benchmark's business, not a test's)."""

import os
import re

import run_helpers as helpers
from cpt_jax import cpu_runtime
from cpt_jax import model
from cpt_jax import model_config


def test_each_contender_runs_in_its_own_process_and_the_ratio_is_printed():
  lines = helpers.benchmark(
      "vs_transformers", "--batch=2", "--seq_len=64", "--rounds=1", "--steps=1", "--no_compile",
      "--xla_attention", "--onednn", "--torch_glibc_defaults", "--peak_flops=1e12").splitlines()
  assert re.fullmatch(r"round 1: cpt_jax [\d,]+ tok/s, cpt_jax \(xla attention\) [\d,]+ tok/s, "
                      r"cpt_jax \(oneDNN\) [\d,]+ tok/s, torch eager [\d,]+ tok/s, "
                      r"torch eager \(glibc defaults\) [\d,]+ tok/s", lines[6])
  cpus = len(os.sched_getaffinity(0))  # The contenders' CPUs: all this process may use.
  runs = [re.fullmatch(rf"(.+) runs on {cpus} CPUs? with GLIBC_TUNABLES (.+)", line)
          for line in lines[1:6]]
  assert all(runs), lines[1:6]
  tunables = dict(found.groups() for found in runs)
  ours = cpu_runtime.tunables_to_add({})
  for name in ("cpt_jax", "cpt_jax (xla attention)", "cpt_jax (oneDNN)", "torch eager"):
    assert set(f"{k}={v}" for k, v in ours.items()) <= set(tunables[name].split(":"))
  assert not ours.keys() & {item.split("=")[0] for item in
                            tunables["torch eager (glibc defaults)"].split(":")}
  # With a peak given, each contender's MFU: its tokens/s x the model's FLOPs per token / peak.
  flops_per_token = model.training_flops_per_token(
      model_config.from_config_dict(model_config.preset_config_dict("tiny", max_seq_len=256)), 64)
  for line in lines[-6:-1]:
    speed = re.fullmatch(r".+ ([\d,]+) tok/s \(median of 1.*, ([\d.]+) cores busy, "
                         r"MFU ([\d.]+)%\)", line)
    assert speed, line
    # CPU time over wall time: above none, and no more than the CPUs (process_time's ticks
    # may overshoot a little over one short turn).
    assert 0 < float(speed[2]) <= cpus + 0.25, line
    expected = float(speed[1].replace(",", "")) * flops_per_token / 1e12
    assert abs(float(speed[3]) / 100 - expected) <= 0.0005 + 0.01 * expected, line
  ratio = re.fullmatch(r"cpt_jax/transformers ratio: ([\d.]+) "
                       r"\(against (torch eager( \(glibc defaults\))?)\)", lines[-1])
  assert ratio and float(ratio[1]) > 0
  # The round's own ratio, against the same PyTorch contender as the last line.
  speeds = dict(re.findall(r"(cpt_jax|torch eager(?: \(glibc defaults\))?) ([\d,]+) tok/s",
                           lines[6].removeprefix("round 1: ")))
  by_round = re.fullmatch(rf"cpt_jax/{re.escape(ratio[2])} round by round: ([\d.]+) "
                          r"\(median ([\d.]+)\)", lines[7])
  assert by_round, lines[7]
  assert helpers.ratio_of_printed_rates(by_round[1], speeds["cpt_jax"], speeds[ratio[2]]), lines
  assert by_round[2] == by_round[1]  # One round: its own median.


def test_alone_each_contender_times_its_rounds_before_the_next_starts():
  """How the benchmark runs on an accelerator, whose memory the contenders would not fit
  together; here with --cores=1, each contender on one CPU."""
  output = helpers.benchmark("vs_transformers", "--batch=2", "--seq_len=64", "--rounds=2",
                             "--steps=1", "--no_compile", "--alone", "--cores=1")
  lines = output.splitlines()
  assert [line.split(" runs on 1 CPU with ")[0] if " runs on " in line
          else line.split(": rounds ")[0]
          for line in lines[1:5]] == ["cpt_jax", "cpt_jax", "torch eager", "torch eager"]
  rounds = {}
  for line in (lines[2], lines[4]):
    found = re.fullmatch(r"(.+): rounds ([\d,]+), ([\d,]+) tok/s", line)
    assert found, line
    rounds[found[1]] = sorted(float(value.replace(",", "")) for value in found.group(2, 3))
  for name in rounds:  # The median of two rounds, reported as such.
    median = re.search(rf"^{re.escape(name)} +([\d,]+) tok/s \(median of 2.*, ([\d.]+) cores "
                       r"busy\)$", output, re.MULTILINE)
    assert median and abs(float(median[1].replace(",", "")) - sum(rounds[name]) / 2) <= 1, name
    assert 0 < float(median[2]) <= 1.1, median[0]  # On one CPU: at most one core busy.
  assert re.fullmatch(r"cpt_jax/transformers ratio: [\d.]+ \(against torch eager\)", lines[-1])
  assert "round by round" not in output  # Rounds not side by side in time: not paired.
