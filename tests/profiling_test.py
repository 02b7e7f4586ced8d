"""Tests for cpt_jax/profiling.py: the asked range of steps, checked against the run's."""

import logging

import pytest

from cpt_jax import profiling


class _Records(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_a_range_the_run_never_reaches_is_named_in_a_warning(tmp_path):
  records = _Records()
  logger = logging.getLogger("cpt_jax.profiling")
  logger.addHandler(records)
  try:
    for spec in ("30:35", "5:8", "0:1", "19:40", ""):
      profiling.StepProfiler(spec, str(tmp_path), (0, 20))
    profiling.StepProfiler("5:8", str(tmp_path), (10, 20))  # Continues a step counter at 10.
  finally:
    logger.removeHandler(records)
  assert records.messages == [
      "profile.steps=30:35 starts outside the steps this run trains (0 to 20): no trace",
      "profile.steps=5:8 starts outside the steps this run trains (10 to 20): no trace"]


@pytest.mark.parametrize("spec", ["5", "8:5", "a:b", "3:3"])
def test_a_malformed_range_is_refused(spec):
  with pytest.raises(ValueError, match=f"profile.steps='{spec}': expected 'A:B' with A < B"):
    profiling.parse_steps(spec)
