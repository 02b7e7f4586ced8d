"""`profile.steps="A:B"`: a `jax.profiler` trace of the training steps from A to B.

The trace (the updates that take the step counter from A to B, on every process) goes to
RUN_DIR/profile, readable in TensorBoard's profile plugin or Perfetto. Steps outside the
range pay one integer comparison.
"""

from __future__ import annotations

import logging
import os
import re

import jax

from cpt_jax.config_error import ConfigError

_log = logging.getLogger(__name__)


def parse_steps(spec: str) -> tuple[int, int] | None:
  """(A, B) from "A:B"; None for ""."""
  if not spec:
    return None
  match = re.fullmatch(r"(\d+):(\d+)", str(spec))
  if not match or int(match[1]) >= int(match[2]):
    raise ConfigError(f"profile.steps={spec!r}: expected 'A:B' with A < B (global steps), or '' "
                      "for no trace")
  return int(match[1]), int(match[2])


class StepProfiler:

  def __init__(self, spec: str, workdir: str, run_steps: tuple[int, int]):
    """`run_steps`: the global steps the run trains, (first, last)."""
    self._range = parse_steps(spec)
    self.directory = os.path.join(workdir, "profile")
    self._active = False
    if self._range and not run_steps[0] <= self._range[0] < run_steps[1]:
      _log.warning("profile.steps=%s starts outside the steps this run trains (%d to %d): "
                   "no trace", spec, *run_steps)

  def before_step(self, step: int) -> None:
    """Called with the step counter before an update."""
    if self._range and step == self._range[0] and not self._active:
      jax.profiler.start_trace(self.directory)
      self._active = True

  def after_step(self, step: int, state) -> None:
    """Called with the step counter after an update; ends the trace once the device has
    finished the last traced step."""
    if self._active and step >= self._range[1]:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if self._active:
      jax.profiler.stop_trace()
      self._active = False
