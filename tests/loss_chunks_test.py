"""Tests for benchmarks/loss_chunks.py: it runs end to end on a small shape, and its ratios
are those of the figures it prints."""

import re

import run_helpers as helpers


def test_each_piece_size_is_planned_and_timed_and_the_ratios_printed():
  lines = helpers.benchmark("loss_chunks", "--vocab_size=32768", "--batch=8", "--seq_len=64",
                            "--chunks=0,64", "--rounds=1", "--steps=1").splitlines()
  assert re.fullmatch(r"round 1: pieces of all [\d,]+ tok/s, pieces of 64 [\d,]+ tok/s", lines[0])
  figures = {}
  for line in lines[2:4]:
    found = re.fullmatch(r"  pieces of (all|64): ([\d.]+) MiB per device \(.*\), ([\d,]+) tok/s",
                         line)
    assert found, line
    figures[found[1]] = float(found[2]), float(found[3].replace(",", ""))
  ratios = re.fullmatch(r"loss pieces of 64: memory x([\d.]+), speed x([\d.]+)", lines[-1])
  assert ratios, lines[-1]
  # (512, 32768) float32 logits and their gradient, 128 MiB in all at once; 16 in pieces.
  assert figures["all"][0] - figures["64"][0] > 64
  assert abs(float(ratios[1]) - figures["64"][0] / figures["all"][0]) <= 0.01
  assert abs(float(ratios[2]) - figures["64"][1] / figures["all"][1]) <= 0.02
