"""The compiled train step on one fixed, pre-split batch: no data pipeline, no host work.
Shared by the benchmarks that compare against the model's own speed."""

import time

import jax

from cpt_jax import data_parallel
from cpt_jax import input_pipeline
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import packing
from cpt_jax import run_plan
from cpt_jax import tokenizer
from cpt_jax import train_step


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
    self._batch = data_parallel.split_for_devices(packing.to_model_batch(rows))
    self.tokens_per_second(3)  # Compile and warm up.

  def tokens_per_second(self, steps: int) -> float:
    state, metrics = self._state, None
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = self._step(state, self._batch, self._learning_rate(state.step))
    jax.block_until_ready((state, metrics))
    self._state = state
    return steps * self._tokens_per_step / (time.perf_counter() - start)
