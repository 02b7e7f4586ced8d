"""Schedules from configs: a `ConfigDict` with a `name` plus that schedule's fields.

Durations (`warmup`, `decay`, `cooldown`, `anneal`) are steps when >= 1 and fractions of the
stage (or of the whole run, for a run-wide schedule) when below 1: the paper's 1% warmup is
`warmup=0.01`. One phase of each schedule has no field: it fills the rest of the stage.

| name                | fields                                                  | fills the rest |
| ------------------- | ------------------------------------------------------- | -------------- |
| constant            | value                                                   |                |
| cosine_with_warmup  | peak_value, end_value, warmup                           | cosine decay   |
| warmup_stable_decay | peak_value, init_value, end_value, warmup, decay,       | stable phase   |
|                     | decay_shape                                             |                |
| infinite            | peak_value, constant_value, end_value, warmup,          | constant phase |
|                     | cooldown, anneal, cooldown_shape, timescale,            | (anneal=0: it  |
|                     | anneal_shape                                            | never anneals) |
| inverse_sqrt        | peak_value, warmup, timescale                           |                |
| anneal              | start_value, end_value, shape                           | the anneal     |

"anneal" is the tail that `schedules.anneal_from` appends: `cpt-jax anneal` gives it the
source run's learning rate at the branch step as `start_value`.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import optax

from cpt_jax import schedules
from cpt_jax.config_error import ConfigError

_DEFAULTS: dict[str, dict] = {
    "constant": dict(value=3e-4),
    "cosine_with_warmup": dict(peak_value=3e-4, end_value=3e-5, warmup=0.01),
    "warmup_stable_decay": dict(peak_value=3e-4, init_value=0.0, end_value=0.0, warmup=0.01,
                                decay=0.2, decay_shape="linear"),
    "infinite": dict(peak_value=3e-4, constant_value=1.65e-4, end_value=3e-5, warmup=0.01,
                     cooldown=0.6, anneal=0, cooldown_shape="cosine", timescale=1.0,
                     anneal_shape="exponential"),
    "inverse_sqrt": dict(peak_value=3e-4, warmup=0.01, timescale=10_000),
    "anneal": dict(start_value=1.65e-4, end_value=0.0, shape="1-sqrt"),
}
_DURATIONS = ("warmup", "decay", "cooldown", "anneal")


def config_for(name: str, **fields) -> ml_collections.ConfigDict:
  """A schedule block with every field of `name` declared, defaults overridden by `fields`."""
  _check_name(name, "schedule.name")
  unknown = sorted(set(fields) - set(_DEFAULTS[name]))
  if unknown:
    raise ConfigError(f"schedule {name!r} has no fields {unknown}; "
                      f"expected {sorted(_DEFAULTS[name])}")
  return ml_collections.ConfigDict({"name": name, **_DEFAULTS[name], **fields})


def _check_name(name: str, where: str) -> None:
  if name not in _DEFAULTS:
    raise ConfigError(f"{where}={name!r} is unknown; expected one of {sorted(_DEFAULTS)}")


def duration_steps(value, length: int, where: str) -> int:
  """A duration in steps: `value` steps if >= 1, else that fraction of `length` (rounded)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
    raise ConfigError(f"{where}={value!r}: expected steps (>= 1) or a fraction of the stage (< 1)")
  if value < 1:
    return int(round(value * length))
  if not float(value).is_integer():
    raise ConfigError(f"{where}={value!r}: a duration of 1 or more is a whole number of steps")
  return int(value)


def from_config(config: ml_collections.ConfigDict, length: int,
                where: str = "schedule") -> optax.Schedule:
  """The schedule described by `config` for a stage (or run) of `length` steps."""
  name = config.get("name")
  _check_name(name, f"{where}.name")
  fields = {key: value for key, value in config.items() if key != "name"}
  unknown = sorted(set(fields) - set(_DEFAULTS[name]))
  if unknown:
    raise ConfigError(f"{where} ({name}) has unknown fields {unknown}; "
                      f"expected {sorted(_DEFAULTS[name])}")
  f = {**_DEFAULTS[name], **fields}
  steps = {key: duration_steps(f[key], length, f"{where}.{key}") for key in _DURATIONS if key in f}
  rest = length - sum(steps.values())
  if rest < 0:
    phases = " + ".join(f"{key}={value}" for key, value in steps.items())
    raise ConfigError(f"{where}: phases {phases} steps exceed the {length} steps they must fit in")
  try:
    if name == "constant":
      return schedules.constant(f["value"])
    if name == "cosine_with_warmup":
      return schedules.cosine_with_warmup(f["peak_value"], steps["warmup"], rest, f["end_value"])
    if name == "warmup_stable_decay":
      return schedules.warmup_stable_decay(
          f["peak_value"], steps["warmup"], rest, steps["decay"], init_value=f["init_value"],
          end_value=f["end_value"], decay_shape=f["decay_shape"])
    if name == "infinite":
      return schedules.infinite(
          f["peak_value"], f["constant_value"], f["end_value"], steps["warmup"],
          steps["cooldown"], rest if steps["anneal"] else None, steps["anneal"],
          cooldown_shape=f["cooldown_shape"], timescale=f["timescale"],
          anneal_shape=f["anneal_shape"])
    if name == "anneal":
      return schedules.decay(f["start_value"], f["end_value"], rest, f["shape"])
    return schedules.inverse_sqrt(f["peak_value"], steps["warmup"], f["timescale"])
  except ValueError as error:
    raise ConfigError(f"{where} ({name}): {error}") from None


def run_schedule(run_wide: ml_collections.ConfigDict | None,
                 stages: Sequence[ml_collections.ConfigDict]) -> optax.Schedule:
  """The whole run's schedule over the global step: one run-wide schedule, or a `sequence`
  of per-stage pieces, each re-warmed from its own stage-local step 0."""
  total = sum(stage.steps for stage in stages)
  if run_wide is not None:
    for index, stage in enumerate(stages):
      if stage.get("schedule") is not None:
        raise ConfigError(f"stages[{index}].schedule is set although config.schedule is "
                          "run-wide; set one or the other")
    return from_config(run_wide, total, "schedule")
  pieces = []
  for index, stage in enumerate(stages):
    if stage.get("schedule") is None:
      raise ConfigError(f"stages[{index}].schedule is missing and there is no run-wide "
                        "config.schedule")
    pieces.append((from_config(stage.schedule, stage.steps, f"stages[{index}].schedule"),
                   stage.steps))
  return schedules.sequence(pieces)
