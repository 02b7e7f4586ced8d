"""Learning-rate schedules for continual pre-training, as pure, jittable `optax.Schedule`s.

Owns the formulas and their composition (WSD, re-warmed cosine, infinite, stage sequences,
branch-and-anneal); building schedules from a config lives in `schedule_config.py`.
Every schedule is continuous at its phase boundaries and accepts a Python int or an int32
array. Phases are joined with `optax.join_schedules`, which hands each piece its own local
step (step minus the piece's start).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax

DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")
COOLDOWN_SHAPES = ("cosine", "inverse_sqrt")


def _check_steps(field: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{field}={value!r}: expected a non-negative integer number of steps")


def _check_positive(field: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{field}={value!r}: expected a value > 0")


def _check_decay(shape: str, start_field: str, start: float, end_field: str, end: float,
                 shapes: Sequence[str] = DECAY_SHAPES) -> None:
  if shape not in shapes:
    raise ValueError(f"decay shape {shape!r} is unknown; expected one of {list(shapes)}")
  if end < 0:
    raise ValueError(f"{end_field}={end!r}: expected a value >= 0")
  if end > start:
    raise ValueError(f"{end_field}={end!r}: a decay must not end above {start_field}={start!r}")
  if shape == "exponential" and end <= 0:
    raise ValueError(f"{end_field}={end!r}: an exponential decay needs an end value > 0")


def _progress(step, num_steps: int):
  return jnp.clip(jnp.asarray(step, jnp.float32) / max(num_steps, 1), 0.0, 1.0)


def decay(start_value: float, end_value: float, num_steps: int, shape: str) -> optax.Schedule:
  """From `start_value` to `end_value` over `num_steps`, then `end_value`; p = step / num_steps.

  linear: start + (end - start) p;  cosine: end + (start - end)(1 + cos(pi p)) / 2;
  1-sqrt: end + (start - end)(1 - sqrt(p));  exponential: start (end / start)^p.
  """
  _check_decay(shape, "start_value", start_value, "end_value", end_value)

  def schedule(step):
    p = _progress(step, num_steps)
    if shape == "linear":
      return start_value + (end_value - start_value) * p
    if shape == "cosine":
      return end_value + (start_value - end_value) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
    if shape == "1-sqrt":
      return end_value + (start_value - end_value) * (1.0 - jnp.sqrt(p))
    return start_value * (end_value / start_value) ** p

  return schedule


def constant(value: float) -> optax.Schedule:
  return optax.constant_schedule(value)


def linear_warmup(init_value: float, peak_value: float, warmup_steps: int) -> optax.Schedule:
  return optax.linear_schedule(init_value, peak_value, max(warmup_steps, 1))


def _join(pieces: Sequence[tuple[optax.Schedule, int]]) -> optax.Schedule:
  """Consecutive phases; a zero-length phase is skipped, the last one runs forever."""
  kept = [(schedule, steps) for schedule, steps in pieces[:-1] if steps > 0] + [pieces[-1]]
  boundaries, total = [], 0
  for _, steps in kept[:-1]:
    total += steps
    boundaries.append(total)
  if not boundaries:
    return kept[0][0]
  return optax.join_schedules([schedule for schedule, _ in kept], boundaries)


def warmup_stable_decay(peak_value: float, warmup_steps: int, stable_steps: int,
                        decay_steps: int, *, init_value: float = 0.0, end_value: float = 0.0,
                        decay_shape: str = "linear") -> optax.Schedule:
  """MiniCPM's WSD: warmup init -> peak, `stable_steps` at peak, decay to end, then end."""
  for field, value in (("warmup_steps", warmup_steps), ("stable_steps", stable_steps),
                       ("decay_steps", decay_steps)):
    _check_steps(field, value)
  _check_positive("peak_value", peak_value)
  if not 0 <= init_value <= peak_value:
    raise ValueError(f"init_value={init_value!r}: expected a value in [0, peak_value]")
  _check_decay(decay_shape, "peak_value", peak_value, "end_value", end_value)
  return _join([
      (linear_warmup(init_value, peak_value, warmup_steps), warmup_steps),
      (constant(peak_value), stable_steps),
      (decay(peak_value, end_value, decay_steps, decay_shape), decay_steps),
  ])


def cosine_with_warmup(peak_value: float, warmup_steps: int, decay_steps: int,
                       end_value: float = 0.0) -> optax.Schedule:
  """The seed paper's re-warm + re-decay piece: linear warmup 0 -> peak over `warmup_steps`,
  cosine decay peak -> end over the following `decay_steps`, then `end_value`."""
  return warmup_stable_decay(peak_value, warmup_steps, 0, decay_steps, end_value=end_value,
                             decay_shape="cosine")


def _inverse_sqrt_cooldown(peak_value: float, constant_value: float, num_steps: int,
                           timescale: float) -> optax.Schedule:
  def g(x):
    return 1.0 / jnp.sqrt(1.0 + timescale * x) - 1.0

  def schedule(step):
    return peak_value + (constant_value - peak_value) * g(_progress(step, num_steps)) / g(1.0)

  return schedule


def infinite(peak_value: float, constant_value: float, end_value: float, warmup_steps: int,
             cooldown_steps: int, constant_steps: int | None, anneal_steps: int, *,
             cooldown_shape: str = "cosine", timescale: float = 1.0,
             anneal_shape: str = "exponential") -> optax.Schedule:
  """Ibrahim et al. (2024), section 7: warmup 0 -> peak, cooldown peak -> constant, a
  constant phase that any number of stages can share, then an anneal constant -> end.

  `constant_steps=None` keeps the constant phase forever (the schedule never anneals); a
  deployable model is then branched off any checkpoint with `anneal_from`.
  """
  for field, value in (("warmup_steps", warmup_steps), ("cooldown_steps", cooldown_steps),
                       ("anneal_steps", anneal_steps)):
    _check_steps(field, value)
  if constant_steps is not None:
    _check_steps("constant_steps", constant_steps)
  _check_positive("peak_value", peak_value)
  _check_positive("timescale", timescale)
  _check_decay(cooldown_shape, "peak_value", peak_value, "constant_value", constant_value,
               COOLDOWN_SHAPES)
  if constant_steps is not None:  # Without an end to the constant phase, there is no anneal.
    _check_decay(anneal_shape, "constant_value", constant_value, "end_value", end_value)
  if cooldown_shape == "cosine":
    cooldown = decay(peak_value, constant_value, cooldown_steps, "cosine")
  else:
    cooldown = _inverse_sqrt_cooldown(peak_value, constant_value, cooldown_steps, timescale)
  pieces = [(linear_warmup(0.0, peak_value, warmup_steps), warmup_steps),
            (cooldown, cooldown_steps)]
  if constant_steps is None:
    return _join(pieces + [(constant(constant_value), 0)])
  return _join(pieces + [(constant(constant_value), constant_steps),
                         (decay(constant_value, end_value, anneal_steps, anneal_shape),
                          anneal_steps)])


def inverse_sqrt(peak_value: float, warmup_steps: int, timescale: int = 10_000) -> optax.Schedule:
  """T5 / big_vision: linear warmup, then peak / sqrt(1 + (step - warmup) / timescale)."""
  _check_steps("warmup_steps", warmup_steps)
  _check_positive("peak_value", peak_value)
  _check_positive("timescale", timescale)

  def rsqrt_decay(step):
    return peak_value / jnp.sqrt(1.0 + jnp.asarray(step, jnp.float32) / timescale)

  return _join([(linear_warmup(0.0, peak_value, warmup_steps), warmup_steps), (rsqrt_decay, 0)])


def sequence(pieces: Sequence[tuple[optax.Schedule, int]]) -> optax.Schedule:
  """Stages in order: piece i sees its own stage-local step from 0 for `num_steps` steps;
  the last piece continues past its `num_steps`."""
  if not pieces:
    raise ValueError("sequence needs at least one (schedule, num_steps) piece")
  for index, (_, num_steps) in enumerate(pieces):
    _check_steps(f"pieces[{index}].num_steps", num_steps)
  return _join(list(pieces))


def anneal_from(schedule: optax.Schedule, start_step: int, anneal_steps: int, end_value: float,
                shape: str = "1-sqrt") -> optax.Schedule:
  """`schedule` before `start_step`; from there an anneal of `anneal_steps` from
  `schedule(start_step)` to `end_value`, then `end_value`: branch-and-anneal."""
  _check_steps("start_step", start_step)
  _check_steps("anneal_steps", anneal_steps)
  start_value = float(schedule(start_step))
  _check_decay(shape, "schedule(start_step)", start_value, "end_value", end_value)
  return _join([(schedule, start_step), (decay(start_value, end_value, anneal_steps, shape), 0)])
