"""The compiled train step on one fixed, pre-split batch: no data pipeline, no host work.
Shared by the benchmarks that compare against the model's own speed."""

import os
import tempfile
import time

import jax
import numpy as np

from configs import demo
from cpt_jax import data_parallel
from cpt_jax import input_pipeline
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import packing
from cpt_jax import run_plan
from cpt_jax import tokenizer
from cpt_jax import train_step


def preset_config(preset: str, seq_len: int, rows_per_device: int, **model_overrides):
  """The demo's smoke config with `preset`'s model (bfloat16 off CPUs), bytes as tokens and
  `rows_per_device` rows of `seq_len` on every local device."""
  config = demo.get_config("smoke")
  overrides = dict(max_seq_len=max(seq_len, model_config.preset(preset).max_seq_len),
                   **model_overrides)
  if jax.default_backend() != "cpu":
    overrides.update(compute_dtype="bfloat16")
  config.model = model_config.preset_config_dict(preset, **overrides)
  config.data.tokenizer.kind = "bytes"
  config.data.seq_len = seq_len
  config.data.global_batch_size = rows_per_device * jax.local_device_count()
  return config


def use_persistent_compile_cache() -> None:
  """A step compiled once already (for its memory plan) compiles again as a read, and so
  does a rerun's."""
  jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(),
                                                              "cpt_jax_benchmark_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def spread_over_vocabulary(batch: dict, vocab_size: int) -> dict:
  """The packed batch (its documents, positions and loss mask) with its token ids drawn
  uniformly from the model's vocabulary, as vs_transformers.py's PyTorch side draws them.
  Bytes use 256 ids, and the embedding gradient's scatter-add would contend for the few rows
  of the frequent ones far more than for a real 50k-token vocabulary's."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab_size, (2, *batch["inputs"].shape), dtype=np.int32)
  return {**batch, "inputs": tokens[0], "targets": tokens[1]}


_WARM_UP_STEPS = 10


class BareStep:

  def __init__(self, config):
    plans = run_plan.plan(config)
    optimizer = optimizer_lib.make(config.optimizer)
    graphdef, state = train_step.init_state(model_config.from_config_dict(config.model),
                                            optimizer, 0)
    schedule = run_plan.learning_rate_schedule(config)
    executor = data_parallel.DataParallel(graphdef, optimizer, schedule)
    self._step = executor.pmapped_train_step
    self._learning_rate = train_step.learning_rate_at(schedule)  # As the executor computes it.
    self._state = executor.place(state)
    self._tokens_per_step = config.data.global_batch_size * config.data.seq_len
    rows = next(iter(input_pipeline.stage_dataset(config.data, plans[0],
                                                  tokenizer.bytes_tokenizer())))
    self._batch = data_parallel.split_for_devices(
        spread_over_vocabulary(packing.to_model_batch(rows), config.model.vocab_size))
    self.tokens_per_second(1)  # Compile.
    # Warm up as the timed calls run, steps dispatched back to back: on XLA:CPU the heap
    # grows once to hold the steps in flight (in 2 of 3 processes, ~240 huge pages faulted
    # in the first 10 such steps, which ran ~20% slower; none after; issue 14).
    self.tokens_per_second(_WARM_UP_STEPS)

  def tokens_per_second(self, steps: int) -> float:
    state, metrics = self._state, None
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = self._step(state, self._batch, self._learning_rate(state.step))
    jax.block_until_ready((state, metrics))
    self._state = state
    return steps * self._tokens_per_step / (time.perf_counter() - start)
