"""Tests for benchmarks/bare_step.py, the compiled step every speed benchmark times."""

import numpy as np

from benchmarks.bare_step import BareStep
from benchmarks.bare_step import spread_over_vocabulary
from configs import demo


def test_the_bare_step_runs_the_executors_step_on_a_small_config():
  config = demo.get_config("smoke")
  config.model.update(model_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, mlp_dim=64,
                      vocab_size=384)
  config.data.tokenizer.kind = "bytes"
  config.data.seq_len, config.data.global_batch_size = 32, 8
  assert BareStep(config).tokens_per_second(2) > 0


def test_the_timed_batch_keeps_its_packing_and_spreads_its_tokens_over_the_vocabulary():
  packed = {"inputs": np.full((4, 512), 7, np.int32), "targets": np.full((4, 512), 8, np.int32),
            "segment_ids": np.repeat([[1, 2]], 256, axis=1).repeat(4, 0),
            "positions": np.tile(np.arange(256), (4, 2)), "loss_mask": np.ones((4, 512))}
  spread = spread_over_vocabulary(packed, 4096)
  for key in ("segment_ids", "positions", "loss_mask"):
    assert spread[key] is packed[key]
  for key in ("inputs", "targets"):
    assert spread[key].shape == (4, 512) and spread[key].dtype == np.int32
    assert 0 <= spread[key].min() and spread[key].max() < 4096
    assert len(np.unique(spread[key])) > 1500  # 2048 draws from 4096 ids: ~1600 distinct.
