"""Tests for benchmarks/bare_step.py, the compiled step every speed benchmark times."""

from benchmarks.bare_step import BareStep
from configs import demo


def test_the_bare_step_runs_the_executors_step_on_a_small_config():
  config = demo.get_config("smoke")
  config.model.update(model_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, mlp_dim=64,
                      vocab_size=384)
  config.data.tokenizer.kind = "bytes"
  config.data.seq_len, config.data.global_batch_size = 32, 8
  assert BareStep(config).tokens_per_second(2) > 0
