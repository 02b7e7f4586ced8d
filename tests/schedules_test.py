"""Tests for cpt_jax/schedules.py and cpt_jax/schedule_config.py."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cpt_jax import schedule_config
from cpt_jax import schedules


def values(schedule, steps):
  return np.array([float(schedule(step)) for step in steps])


def assert_continuous(schedule, boundaries):
  """No jump at a boundary larger than the step-to-step change right beside it."""
  for b in boundaries:
    f = [float(schedule(step)) for step in (b - 2, b - 1, b, b + 1)]
    beside = max(abs(f[1] - f[0]), abs(f[3] - f[2]))
    assert abs(f[2] - f[1]) <= 1.5 * beside + 1e-9, (b, f)


@pytest.mark.parametrize("shape, formula", [
    ("linear", lambda p: 1.0 + (0.1 - 1.0) * p),
    ("cosine", lambda p: 0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2),
    ("1-sqrt", lambda p: 0.1 + 0.9 * (1 - math.sqrt(p))),
    ("exponential", lambda p: 1.0 * (0.1 / 1.0) ** p),
])
def test_warmup_stable_decay_follows_the_formulas(shape, formula):
  schedule = schedules.warmup_stable_decay(1.0, 10, 20, 40, init_value=0.2, end_value=0.1,
                                           decay_shape=shape)
  assert float(schedule(0)) == pytest.approx(0.2)
  assert float(schedule(5)) == pytest.approx(0.6)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(29)) == pytest.approx(1.0)
  for local in (0, 10, 25, 40):
    assert float(schedule(30 + local)) == pytest.approx(formula(local / 40), rel=1e-5)
  assert float(schedule(10_000)) == pytest.approx(0.1, rel=1e-6)
  assert_continuous(schedule, [10, 30, 70])
  decay = values(schedule, range(30, 71))
  assert np.all(np.diff(decay) <= 1e-7)  # Monotone non-increasing through the decay.


def test_cosine_with_warmup_rewarms_from_zero_and_decays_to_the_end_value():
  schedule = schedules.cosine_with_warmup(3e-4, 10, 90, 3e-5)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(3e-4)
  assert float(schedule(55)) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5, rel=1e-5)
  assert float(schedule(100)) == pytest.approx(3e-5)
  assert float(schedule(500)) == pytest.approx(3e-5)
  assert np.all(np.diff(values(schedule, range(0, 11))) > 0)


@pytest.mark.parametrize("cooldown_shape", ["cosine", "inverse_sqrt"])
def test_infinite_schedule_phases(cooldown_shape):
  peak, const, end = 1e-3, 1e-4, 1e-5
  schedule = schedules.infinite(peak, const, end, warmup_steps=10, cooldown_steps=100,
                                constant_steps=50, anneal_steps=20,
                                cooldown_shape=cooldown_shape, timescale=4.0)
  assert float(schedule(5)) == pytest.approx(peak * 0.5)
  assert float(schedule(10)) == pytest.approx(peak)
  tau = 30
  if cooldown_shape == "cosine":
    expected = const + (peak - const) * (1 + math.cos(math.pi * tau / 100)) / 2
  else:
    g = lambda x: 1 / math.sqrt(1 + 4.0 * x) - 1
    expected = peak + (const - peak) * g(tau / 100) / g(1.0)
  assert float(schedule(10 + tau)) == pytest.approx(expected, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(const)
  assert float(schedule(159)) == pytest.approx(const)
  assert float(schedule(170)) == pytest.approx(const * (end / const) ** 0.5, rel=1e-5)
  assert float(schedule(180)) == pytest.approx(end, rel=1e-5)
  assert float(schedule(10**6)) == pytest.approx(end, rel=1e-5)
  assert_continuous(schedule, [10, 110, 160, 180])
  assert np.all(np.diff(values(schedule, range(10, 200))) <= 1e-9)


def test_inverse_sqrt_cooldown_falls_faster_early_than_cosine():
  kwargs = dict(warmup_steps=0, cooldown_steps=100, constant_steps=None, anneal_steps=0)
  cosine = schedules.infinite(1.0, 0.5, 0.1, **kwargs)
  rsqrt = schedules.infinite(1.0, 0.5, 0.1, cooldown_shape="inverse_sqrt", timescale=10.0,
                             **kwargs)
  assert float(rsqrt(10)) < float(cosine(10))


def test_infinite_schedule_without_constant_steps_never_anneals():
  schedule = schedules.infinite(1e-3, 1e-4, 1e-5, 10, 100, None, 20)
  assert float(schedule(10**7)) == pytest.approx(1e-4)


def test_inverse_sqrt_schedule():
  schedule = schedules.inverse_sqrt(1.0, warmup_steps=10, timescale=100)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(110)) == pytest.approx(1 / math.sqrt(2))
  assert float(schedule(5)) == pytest.approx(0.5)


def test_constant_schedule():
  assert float(schedules.constant(0.25)(12345)) == 0.25


@pytest.mark.parametrize("schedule", [
    schedules.warmup_stable_decay(1.0, 7, 13, 29, decay_shape="1-sqrt", end_value=0.05),
    schedules.cosine_with_warmup(3e-4, 5, 45, 3e-5),
    schedules.infinite(1e-3, 1e-4, 1e-5, 5, 20, 10, 15, cooldown_shape="inverse_sqrt"),
    schedules.sequence([(schedules.cosine_with_warmup(1.0, 2, 8, 0.1), 10),
                        (schedules.cosine_with_warmup(0.5, 2, 8, 0.05), 10)]),
    schedules.anneal_from(schedules.constant(1.0), 20, 10, 0.0),
], ids=["wsd", "cosine", "infinite", "sequence", "anneal_from"])
def test_jit_at_int32_steps_equals_python_int_evaluation(schedule):
  steps = np.arange(0, 80, dtype=np.int32)
  jitted = np.array(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))
  np.testing.assert_allclose(jitted, values(schedule, [int(s) for s in steps]), rtol=1e-5,
                             atol=1e-9)


def test_sequence_gives_each_stage_its_own_local_step():
  first = schedules.cosine_with_warmup(1.0, 10, 90, 0.1)
  second = schedules.cosine_with_warmup(0.5, 5, 45, 0.05)
  schedule = schedules.sequence([(first, 100), (second, 50)])
  for step in (0, 10, 57, 99):
    assert float(schedule(step)) == pytest.approx(float(first(step)))
  for local in (0, 3, 5, 30, 49):
    assert float(schedule(100 + local)) == pytest.approx(float(second(local)))
  assert float(schedule(100)) == 0.0  # Re-warming starts from zero at the boundary.
  assert float(schedule(400)) == pytest.approx(0.05)  # The last piece continues.


def test_anneal_from_branches_off_at_the_start_step():
  base = schedules.infinite(1e-3, 2e-4, 0.0, 10, 40, None, 0)
  annealed = schedules.anneal_from(base, 100, 50, 2e-5, shape="1-sqrt")
  for step in (0, 30, 99):
    assert float(annealed(step)) == float(base(step))
  assert float(annealed(100)) == pytest.approx(2e-4)
  assert float(annealed(100 + 18)) == pytest.approx(2e-5 + 1.8e-4 * (1 - math.sqrt(18 / 50)),
                                                    rel=1e-5)
  assert float(annealed(150)) == pytest.approx(2e-5)
  assert float(annealed(900)) == pytest.approx(2e-5)
  assert float(base(900)) == pytest.approx(2e-4)  # The source schedule is untouched.


@pytest.mark.parametrize("build, message", [
    (lambda: schedules.warmup_stable_decay(1.0, -1, 10, 10), "warmup_steps=-1"),
    (lambda: schedules.warmup_stable_decay(1.0, 2.5, 10, 10), "warmup_steps=2.5"),
    (lambda: schedules.warmup_stable_decay(0.0, 1, 10, 10), "peak_value=0.0"),
    (lambda: schedules.warmup_stable_decay(1.0, 1, 1, 1, end_value=2.0), "end_value=2.0"),
    (lambda: schedules.warmup_stable_decay(1.0, 1, 1, 1, decay_shape="exponential"),
     "exponential decay needs an end value > 0"),
    (lambda: schedules.warmup_stable_decay(1.0, 1, 1, 1, decay_shape="step"), "'step'"),
    (lambda: schedules.infinite(1.0, 2.0, 0.1, 1, 1, 1, 1), "constant_value=2.0"),
    (lambda: schedules.infinite(1.0, 0.5, 0.0, 1, 1, 1, 1), "end_value=0.0"),
    (lambda: schedules.infinite(1.0, 0.5, 0.1, 1, 1, -3, 1), "constant_steps=-3"),
    (lambda: schedules.sequence([]), "at least one"),
    (lambda: schedules.anneal_from(schedules.constant(1.0), 5, 10, 2.0), "end_value=2.0"),
])
def test_invalid_schedule_arguments_name_the_field(build, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    build()


def test_config_fractions_are_shares_of_the_stage():
  config = schedule_config.config_for("cosine_with_warmup", peak_value=3e-4, end_value=3e-5,
                                      warmup=0.01)
  schedule = schedule_config.from_config(config, 1000)
  assert float(schedule(10)) == pytest.approx(3e-4)  # 1% of 1000 steps of warmup.
  assert float(schedule(5)) == pytest.approx(1.5e-4)
  assert float(schedule(1000)) == pytest.approx(3e-5)  # The decay fills the stage.


def test_config_durations_of_one_or_more_are_steps():
  config = schedule_config.config_for("warmup_stable_decay", peak_value=1.0, warmup=20,
                                      decay=30.0)
  schedule = schedule_config.from_config(config, 100)
  assert float(schedule(20)) == 1.0
  assert float(schedule(69)) == 1.0  # The stable phase fills the rest: 100 - 20 - 30.
  assert float(schedule(85)) == pytest.approx(0.5)


def test_config_infinite_with_anneal_zero_stays_constant():
  config = schedule_config.config_for("infinite", anneal=0)
  schedule = schedule_config.from_config(config, 1000)
  assert float(schedule(999_999)) == pytest.approx(1.65e-4)
  annealing = schedule_config.from_config(schedule_config.config_for("infinite", anneal=0.1),
                                          1000)
  assert float(annealing(1000)) == pytest.approx(3e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c, "name", "cosine_decay"), "schedule.name='cosine_decay' is unknown"),
    (lambda c: c.update({"warmup": 0.7, "decay": 0.5}), "exceed the 100 steps"),
    (lambda c: c.update({"warmup": 12.5}), "warmup=12.5"),
    (lambda c: c.update({"warmup": -1}), "warmup=-1"),
    (lambda c: c.update({"peak_value": -1.0}), "peak_value=-1.0"),
])
def test_invalid_schedule_configs_name_the_field(mutate, message):
  config = schedule_config.config_for("warmup_stable_decay")
  mutate(config)
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    schedule_config.from_config(config, 100)


def test_unknown_schedule_config_field_lists_the_valid_ones():
  config = ml_collections.ConfigDict({"name": "constant", "value": 1.0, "peak": 2.0})
  with pytest.raises(ValueError, match=r"unknown fields \['peak'\]; expected \['value'\]"):
    schedule_config.from_config(config, 100)


def test_run_schedule_sequences_stage_pieces():
  stages = [ml_collections.ConfigDict({"steps": 100, "schedule": schedule_config.config_for(
      "cosine_with_warmup", peak_value=1.0, end_value=0.1, warmup=10)}),
            ml_collections.ConfigDict({"steps": 50, "schedule": schedule_config.config_for(
                "constant", value=0.3)})]
  schedule = schedule_config.run_schedule(None, stages)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(120)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match=r"stages\[0\]\.schedule is set although"):
    schedule_config.run_schedule(schedule_config.config_for("constant"), stages)
