"""What the compiled train step needs on each device, known before any array is allocated.

XLA's buffer assignment for the step compiled at a config's shapes, in its parallel mode, on
this machine's devices: the step's arguments (the train state and this device's rows), its
temporaries (the activations kept for the backward pass, gradients, kernel workspaces) and
any output not written over the donated state. The state is abstract, so a model too large
for the host still compiles here. `cpt-jax info --memory` reports it against the device's
capacity; `benchmarks/mfu.py` finds the largest batch that fits with it.

Not counted: the runtime's own memory outside XLA's pool, the fragmentation of that pool
(`FITTING_SHARE` leaves room for it), and the input pipeline's prefetched batches. Each
backend plans its own way: XLA:CPU's plan does not shrink with `model.remat` (it drops the
optimization barriers that hold recomputation back until the backward pass), so a plan for
an accelerator is made on that accelerator.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import packing
from cpt_jax import parallel
from cpt_jax import run_plan
from cpt_jax import train_step

# What to change where a step does not fit (`info --memory`, and an out-of-memory error).
REMEDIES = ("lower data.global_batch_size, raise optimizer.microbatches, set model.remat or use "
            "parallel=fsdp")
# The share of a device's capacity a step may plan for: the allocator splits its pool into
# blocks, so a plan of exactly the capacity can still fail to allocate.
FITTING_SHARE = 0.95


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes on one device while the train step runs."""
  arguments: int  # The train state (whole, or its shards under FSDP) and the device's rows.
  temporaries: int  # Live only within the step: activations, gradients, workspaces.
  new_outputs: int  # Outputs not written over a donated argument (the metrics).

  @property
  def total(self) -> int:
    return self.arguments + self.temporaries + self.new_outputs

  def describe(self) -> str:
    return (f"{in_units(self.total)} per device (state and batch "
            f"{in_units(self.arguments)}, temporaries {in_units(self.temporaries)})")


def in_units(size: int) -> str:
  """Bytes as GiB, or MiB below one GiB."""
  return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def of_train_step(config: ml_collections.ConfigDict) -> StepMemory:
  """The step of `config` (model, optimizer, batch, parallel mode) compiled for this
  machine's devices. Compiling is the cost: seconds for small models, a minute or more for
  large ones."""
  parallel.check_batch_split(config)
  optimizer = optimizer_lib.make(config.optimizer)
  graphdef, state = train_step.abstract_state(model_config.from_config_dict(config.model),
                                              optimizer)
  executor = parallel.make_executor(config, graphdef, optimizer,
                                    run_plan.learning_rate_schedule(config))
  rows = config.data.global_batch_size // jax.process_count()
  batch = packing.to_model_batch({key: np.zeros((rows, config.data.seq_len + 1), np.int32)
                                  for key in packing.ROW_KEYS})
  analysis = executor.lower_train_step(state, batch).compile().memory_analysis()
  return StepMemory(
      arguments=analysis.argument_size_in_bytes, temporaries=analysis.temp_size_in_bytes,
      new_outputs=analysis.output_size_in_bytes - analysis.alias_size_in_bytes)


def rows_that_fit(config: ml_collections.ConfigDict, capacity: float,
                  sizes: Sequence[int] = range(1, 4097)) -> tuple[int, dict[int, int]]:
  """The most rows per device, one of `sizes` (ascending, from 1), whose step (no
  microbatches) fits `FITTING_SHARE` of `capacity` bytes, 0 if one row does not; and the bytes
  planned for each number of rows tried (`largest_fitting_batch`: a compile each)."""

  def memory_at(rows: int) -> int:
    sized = config.copy_and_resolve_references()
    sized.data.global_batch_size = rows * jax.device_count()
    sized.optimizer.microbatches = 1
    return of_train_step(sized).total

  return largest_fitting_batch(memory_at, FITTING_SHARE * capacity, sizes)


def device_capacity() -> int | None:
  """Bytes XLA may allocate on one of this machine's devices; None where the runtime does
  not say (CPUs: the host's memory)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get("bytes_limit") if stats else None


def largest_fitting_batch(memory_at: Callable[[int], int], capacity: float,
                          sizes: Sequence[int]) -> tuple[int, dict[int, int]]:
  """The largest b of `sizes` (ascending, from 1) with `memory_at(b) <= capacity`, or 0 when one
  row does not fit; and `memory_at` of each size it tried. `memory_at(rows)` is a step's bytes per
  device, a compile each, so the search predicts rather than tries every size: memory grows about
  linearly in the rows (activations are per row), so a line through two planned sizes, the largest
  that fits and the nearest other, predicts the largest size that fits, which is planned next,
  until no size lies between the largest that fits and the prediction. Each size planned narrows
  that gap, so none is planned twice. Three compiles where memory is linear, four or five where XLA
  plans the first rows nearly flat (as it does); where memory grows faster than linearly, more,
  and possibly fewer rows than the largest that fits (the line overstates what the next costs)."""
  planned = {}

  def plan(rows: int) -> int:
    planned[rows] = memory_at(rows)
    return planned[rows]

  if plan(sizes[0]) > capacity:
    return 0, planned
  if len(sizes) == 1:
    return sizes[0], planned
  plan(sizes[1])
  while True:
    fitting = sorted(rows for rows, size in planned.items() if size <= capacity)
    too_large = sorted(rows for rows, size in planned.items() if size > capacity)
    largest = fitting[-1]
    other = too_large[0] if too_large else fitting[-2]
    per_row = max((planned[other] - planned[largest]) / (other - largest), 1)
    predicted = largest + (capacity - planned[largest]) / per_row
    ceiling = too_large[0] if too_large else np.inf
    between = [rows for rows in sizes if largest < rows <= predicted and rows < ceiling]
    if not between:
      return largest, planned
    plan(between[-1])
