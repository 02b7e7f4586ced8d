"""Tests for cpt_jax/step_memory.py and `cpt-jax info --memory` (on 8 emulated devices)."""

import jax
import numpy as np
import pytest

import run_helpers as helpers
from configs import demo
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import step_memory
from cpt_jax import train_step

_SEQ_LEN = 32
_INPUT_BYTES = 5 * 4  # Five int32 or float32 model inputs per token.


def _small_config(global_batch_size: int, parallel: str = "pmap"):
  config = demo.get_config("smoke")
  config.model.update(model_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, mlp_dim=64,
                      vocab_size=384)
  config.data.tokenizer.kind = "bytes"
  config.data.seq_len, config.data.global_batch_size = _SEQ_LEN, global_batch_size
  config.parallel = parallel
  return config


def _state_bytes(config) -> int:
  _, state = train_step.abstract_state(model_config.from_config_dict(config.model),
                                       optimizer_lib.make(config.optimizer))
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


def test_pmap_holds_the_whole_state_and_fsdp_one_eighth_of_it():
  config = _small_config(16)
  state = _state_bytes(config)
  pmap = step_memory.of_train_step(config)
  # Whole state, this device's 2 rows and the float32 learning rate; the state is donated.
  assert pmap.arguments == state + 2 * _SEQ_LEN * _INPUT_BYTES + 4
  assert 0 < pmap.new_outputs < 1024  # Only the metrics are new.
  fsdp = step_memory.of_train_step(_small_config(16, "fsdp"))
  assert state / 8 < fsdp.arguments < state / 4  # A few small leaves stay whole.


def test_temporaries_grow_with_the_rows_of_each_device():
  small, large = (step_memory.of_train_step(_small_config(rows * 8)) for rows in (1, 4))
  assert large.temporaries > 2 * small.temporaries
  assert large.total == large.arguments + large.temporaries + large.new_outputs


_ROWS = range(1, 4097)  # The sizes benchmarks/mfu.py plans among.


def _largest(memory_at, capacity, sizes=_ROWS) -> int:
  """largest_fitting_batch's rows; the sizes it says it tried are those it asked for, once each."""
  asked, answers = [], {}

  def recorded(rows):
    asked.append(rows)
    answers[rows] = memory_at(rows)
    return answers[rows]

  rows, planned = step_memory.largest_fitting_batch(recorded, capacity, sizes)
  assert planned == answers and len(answers) == len(asked)
  return rows


def _linear(bytes_at_one: int, per_row: int, calls: list):
  def memory_at(rows):
    calls.append(rows)
    return bytes_at_one + (rows - 1) * per_row
  return memory_at


def test_largest_fitting_batch_predicts_from_two_sizes_and_confirms_once():
  calls = []
  assert _largest(_linear(100, 10, calls), capacity=100 + 63 * 10) == 64
  assert calls == [1, 2, 64]
  calls = []
  assert _largest(_linear(100, 10, calls), capacity=100 + 62 * 10 + 9) == 63
  assert calls == [1, 2, 63]
  assert _largest(_linear(100, 10, []), capacity=10**9, sizes=range(1, 257)) == 256
  assert _largest(_linear(100, 10, []), capacity=99) == 0
  assert _largest(_linear(100, 10, []), capacity=105) == 1


def test_largest_fitting_batch_keeps_to_the_sizes_it_is_given():
  calls = []
  powers = [2**k for k in range(13)]
  assert _largest(_linear(100, 10, calls), capacity=100 + 62 * 10, sizes=powers) == 32
  assert calls == [1, 2, 32]
  divisors_of_12 = [1, 2, 3, 4, 6, 12]
  assert _largest(_linear(100, 10, []), capacity=100 + 4 * 10 + 5, sizes=divisors_of_12) == 4
  assert _largest(_linear(100, 10, []), capacity=100, sizes=[1]) == 1
  assert _largest(_linear(100, 10, []), capacity=99, sizes=[1]) == 0


def test_largest_fitting_batch_steps_back_where_memory_grows_faster_than_predicted():
  calls = []

  def memory_at(rows):  # Linear up to 8 rows, then twice as steep.
    calls.append(rows)
    return 100 + (rows - 1) * 10 + max(rows - 8, 0) * 10

  assert _largest(memory_at, capacity=100 + 31 * 10) == 20
  assert calls == [1, 2, 32, 18, 20]


def test_largest_fitting_batch_recovers_from_a_flat_start():
  calls = []

  def memory_at(rows):  # As XLA plans small steps: 2 rows cost little more than 1.
    calls.append(rows)
    return 100 + (rows == 2) + 6 * max(rows - 2, 0)

  assert _largest(memory_at, capacity=150) == 10
  assert calls == [1, 2, 51, 10]


@pytest.mark.parametrize("seed", range(20))
def test_largest_fitting_batch_finds_the_largest_of_a_flat_start_then_a_line(seed):
  """As XLA plans a step: nearly flat over the first rows, then a fixed cost a row; the planner
  finds the largest size that fits, whichever sizes it may choose from, in a few compiles."""
  rng = np.random.default_rng(seed)
  fixed, flat_rows, per_row = rng.integers(10**6, 10**9), rng.integers(1, 5), rng.integers(1, 10**6)
  capacity = fixed + rng.integers(0, 5000) * per_row + rng.integers(0, per_row)

  def memory_at(rows):
    return fixed + rows + per_row * max(rows - flat_rows, 0)

  sizes = [1, *sorted(rng.choice(np.arange(2, 5000), size=rng.integers(1, 300), replace=False))]
  calls = []
  rows = _largest(lambda rows: calls.append(rows) or memory_at(rows), capacity, sizes)
  assert rows == max([size for size in sizes if memory_at(size) <= capacity], default=0)
  assert len(calls) <= 5, calls


def test_info_memory_reports_the_step_on_this_machines_devices(monkeypatch):
  args = ["--memory", "--config.data.global_batch_size=16"]
  planned = step_memory.of_train_step(_small_config(16))
  result = helpers.cli("info", *args)
  last = result.stdout.splitlines()[-1]
  assert last == (f"train step memory (pmap on cpu x 8): {planned.describe()}; the device "
                  "reports no capacity (a CPU: the host's memory)")
  monkeypatch.setattr(step_memory, "device_capacity", lambda: 2 * planned.total)
  assert helpers.cli("info", *args).stdout.splitlines()[-1].endswith("(50% of it): fits")

  # Room for 4 of the 8 rows per device that global batch 64 asks: it says so.
  four_rows = step_memory.of_train_step(_small_config(32)).total
  monkeypatch.setattr(step_memory, "device_capacity",
                      lambda: (four_rows + 1) / step_memory.FITTING_SHARE)
  last = helpers.cli("info", "--memory", "--config.data.global_batch_size=64").stdout
  assert last.splitlines()[-1].endswith(
      "of it): does not fit: 4 of its 8 rows per device would at once "
      "(optimizer.microbatches=2); lower "
      "data.global_batch_size, raise optimizer.microbatches, set model.remat or use "
      "parallel=fsdp")

  # Room for 7 of 12 rows: 6 rows, the most at once that microbatches can split 12 into.
  seven_rows = step_memory.of_train_step(_small_config(56)).total
  monkeypatch.setattr(step_memory, "device_capacity",
                      lambda: (seven_rows + 1) / step_memory.FITTING_SHARE)
  last = helpers.cli("info", "--memory", "--config.data.global_batch_size=96").stdout
  assert ("does not fit: 6 of its 12 rows per device would at once (optimizer.microbatches=2)"
          in last)


def test_info_memory_of_a_run_directory_is_one_line_naming_the_flag(tmp_path):
  result = helpers.cli("info", f"--from={tmp_path}", "--memory", config=None, check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == ("cpt-jax: error: --memory needs --config: the step's memory "
                                   "follows the experiment's batch, model and parallel mode")


@pytest.mark.parametrize("size, text", [(2**19, "0.5 MiB"), (3 * 2**30 // 2, "1.50 GiB")])
def test_sizes_are_shown_in_mib_below_a_gib(size, text):
  assert step_memory.in_units(size) == text


@pytest.mark.parametrize("parallel", ["pmap", "fsdp"])
def test_the_plan_is_of_the_program_that_trains(parallel):
  """Lowered from the abstract state, the step is the program the executor's `train_step`
  lowers from the placed state, batch and learning rate: the plan is the real step's."""
  import numpy as np
  from cpt_jax import data_parallel
  from cpt_jax import packing
  from cpt_jax import parallel as parallel_lib
  from cpt_jax import run_plan
  config = _small_config(16, parallel)
  optimizer = optimizer_lib.make(config.optimizer)
  model = model_config.from_config_dict(config.model)
  graphdef, real = train_step.init_state(model, optimizer, 0)
  _, abstract = train_step.abstract_state(model, optimizer)
  executor = parallel_lib.make_executor(config, graphdef, optimizer,
                                        run_plan.learning_rate_schedule(config))
  batch = packing.to_model_batch({key: np.zeros((16, _SEQ_LEN + 1), np.int32)
                                  for key in packing.ROW_KEYS})
  state = executor.place(real)
  learning_rate = executor._learning_rate(state.step)  # What train_step passes.
  if parallel == "pmap":
    trained = executor.pmapped_train_step.lower(
        state, data_parallel.split_for_devices(batch), learning_rate)
  else:
    with jax.set_mesh(executor.mesh):
      trained = executor._jitted_train_step(state).lower(state, executor._global(batch),
                                                         learning_rate)
  assert executor.lower_train_step(abstract, batch).as_text() == trained.as_text()


def test_the_loss_in_pieces_plans_less_memory_for_a_large_vocabulary():
  """32 rows of 32 tokens per device: (1024, 65536) float32 logits are 256 MiB, and their
  gradient as much again; pieces of 128 tokens hold an eighth of either at a time."""
  config = _small_config(256)
  config.model.vocab_size = 65536
  whole = step_memory.of_train_step(config)
  config.model.loss_chunk_tokens = 128
  in_pieces = step_memory.of_train_step(config)
  assert in_pieces.arguments == whole.arguments
  assert whole.total - in_pieces.total > 256 * 2**20, (whole, in_pieces)
