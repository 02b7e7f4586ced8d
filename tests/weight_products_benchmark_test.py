"""Tests for benchmarks/weight_products.py: it times every weight's three products in both
frameworks on a tiny shape and prints the model's totals and their ratio (the figures
themselves are the benchmark's business, not a test's)."""

import re

import run_helpers as helpers


def test_each_weights_products_are_timed_in_both_frameworks_and_the_ratio_is_printed():
  output = helpers.benchmark("weight_products", "--tokens=64", "--rounds=1", "--calls=1")
  lines = output.splitlines()
  product = (r"forward +[\d.]+, input gradient +[\d.]+, weight gradient +[\d.]+ ms")
  for framework in ("cpt_jax", "torch"):
    for weight in ("attention qkv", "attention out", "mlp up", "mlp down", "head"):
      assert any(re.fullmatch(rf"{framework} +{weight} +{product}", line) for line in lines), (
          framework, weight, output)
    assert any(re.fullmatch(rf"{framework} +whole model +forward +[\d.]+, input gradient +"
                            rf"[\d.]+, weight gradient +[\d.]+ ms; [\d.]+ ms a step", line)
               for line in lines), output
  ratio = re.fullmatch(r"cpt_jax/torch weight products: ([\d.]+)", lines[-1])
  assert ratio and float(ratio[1]) > 0
