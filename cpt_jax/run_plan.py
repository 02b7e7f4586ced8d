"""The run plan: which stages run, for how many steps, on which data, under which schedule.

Owns validating the `config.stages` list and deriving the plan from it. It does not run
anything; `cpt-jax info` prints it and the trainer follows it.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import optax

from cpt_jax import schedule_config
from cpt_jax.config_error import ConfigError

OPTIMIZER_STATE_POLICIES = ("reset", "keep")
REPLAY_POSITIONS = ("start", "continue")
_STAGE_FIELDS = ("name", "steps", "mixture", "replay", "schedule", "optimizer_state",
                 "replay_position")


def stage(name: str, steps: int, mixture: dict[str, float],
          schedule: ml_collections.ConfigDict | None = None, *,
          replay: dict[str, float] | None = None, optimizer_state: str = "reset",
          replay_position: str = "start") -> ml_collections.ConfigDict:
  """One `config.stages` entry with every field declared."""
  return ml_collections.ConfigDict({
      "name": name,  # Names the stage in logs, metrics and the summary.
      "steps": steps,  # Optimizer steps in this stage.
      "mixture": ml_collections.ConfigDict(mixture),  # {source: share of training tokens}.
      # {earlier stage's source: share of training tokens}; mixture + replay shares sum to 1.
      "replay": ml_collections.ConfigDict(replay or {}),
      "schedule": schedule,  # This stage's LR piece (stage-local steps); None if run-wide.
      # At the stage's start: "reset" the Adam moments (the paper's choice) or "keep" them.
      "optimizer_state": optimizer_state,
      # Sources seen in an earlier stage replay from the "start" of their training split (data
      # the model already saw, as in the paper) or "continue" where the last stage stopped
      # (this run's, or that of the run it started from).
      "replay_position": replay_position,
  })


@dataclasses.dataclass(frozen=True)
class StagePlan:
  index: int
  name: str
  steps: int
  start_step: int  # Global step at which the stage begins.
  mixture: dict[str, float]  # Every source's token share, replay included.
  optimizer_state: str
  replay_position: str
  replayed_sources: tuple[str, ...]  # The `replay` sources, each trained on in an earlier stage.

  @property
  def end_step(self) -> int:
    return self.start_step + self.steps


def _nonzero(weights: dict[str, float]) -> dict[str, float]:
  """A weight of 0 turns a source off, so `--config.stages[1].replay.prose=0` ablates replay."""
  return {source: weight for source, weight in weights.items() if weight > 0}


def validate_stages(stages, source_names, starts_from_checkpoint: bool = False) -> None:
  """Raises ConfigError naming the bad field. A replay source must be trained in an earlier
  stage, unless the run starts from another run's checkpoint (whose run trained it)."""
  if not stages:
    raise ConfigError("config.stages is empty; expected at least one stage")
  seen_names, trained = set(), set()
  for index, stage_config in enumerate(stages):
    where = f"stages[{index}]"
    unknown = sorted(set(stage_config.keys()) - set(_STAGE_FIELDS))
    if unknown:
      raise ConfigError(f"{where} has unknown fields {unknown}; expected {list(_STAGE_FIELDS)}")
    if stage_config.name in seen_names:
      raise ConfigError(f"{where}.name={stage_config.name!r} repeats an earlier stage's name")
    seen_names.add(stage_config.name)
    steps = stage_config.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
      raise ConfigError(f"{where}.steps={steps!r}: expected a positive integer")
    for field, allowed in (("optimizer_state", OPTIMIZER_STATE_POLICIES),
                           ("replay_position", REPLAY_POSITIONS)):
      if stage_config[field] not in allowed:
        raise ConfigError(f"{where}.{field}={stage_config[field]!r}: expected one of {allowed}")
    new, replay = dict(stage_config.mixture.items()), dict(stage_config.replay.items())
    if not new:
      raise ConfigError(f"{where}.mixture is empty; expected {{source: weight}}")
    for field, weights in (("mixture", new), ("replay", replay)):
      for source, weight in weights.items():
        if source not in source_names:
          raise ConfigError(f"{where}.{field} names unknown source {source!r}; "
                            f"known sources: {sorted(source_names)}")
        if not weight >= 0:
          raise ConfigError(f"{where}.{field}[{source!r}]={weight!r}: expected a weight >= 0")
    new, replay = _nonzero(new), _nonzero(replay)
    if not new:
      raise ConfigError(f"{where}.mixture has no source with a weight > 0")
    for source in replay:
      if source in new:
        raise ConfigError(f"{where}.replay[{source!r}] is also in {where}.mixture")
      if source not in trained and not starts_from_checkpoint:
        raise ConfigError(f"{where}.replay[{source!r}]: not trained on in an earlier stage "
                          f"(earlier stages trained on {sorted(trained)})")
    total = sum(new.values()) + sum(replay.values())
    if abs(total - 1.0) > 1e-6:
      raise ConfigError(f"{where}.mixture + replay weights sum to {total:g}; expected 1")
    trained |= set(new)


def plan(config: ml_collections.ConfigDict, start_step: int = 0) -> list[StagePlan]:
  """The validated stage plan; the first stage begins at global step `start_step` (non-zero
  when a run continues another run's step counter)."""
  validate_stages(config.stages, set(config.data.sources.keys()),
                  starts_from_checkpoint=bool(config.init.from_checkpoint))
  plans, start = [], start_step
  for index, stage_config in enumerate(config.stages):
    replay = _nonzero(dict(stage_config.replay.items()))
    plans.append(StagePlan(
        index=index, name=stage_config.name, steps=stage_config.steps, start_step=start,
        mixture={**_nonzero(dict(stage_config.mixture.items())), **replay},
        optimizer_state=stage_config.optimizer_state,
        replay_position=stage_config.replay_position, replayed_sources=tuple(sorted(replay))))
    start += stage_config.steps
  return plans


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           step_offset: int = 0) -> optax.Schedule:
  """The whole run's LR over the global step. Per-stage schedules are stage-local, so with
  a `step_offset` they are shifted to the run's first stage; a run-wide schedule sees the
  global step itself (continuing, e.g., the constant phase of an infinite schedule)."""
  schedule = schedule_config.run_schedule(config.get("schedule"), config.stages)
  if step_offset and config.get("schedule") is None:
    return lambda step: schedule(step - step_offset)
  return schedule


def sources_learnt(learnt_before: frozenset[str] | None,
                   trained_plans: list[StagePlan]) -> frozenset[str] | None:
  """The sources a model has learnt: those learnt before its run (None: unknown, and so the
  result) and those of the run's `trained_plans`."""
  if learnt_before is None:
    return None
  return frozenset(learnt_before).union(*(plan.mixture for plan in trained_plans))


def stage_at(plans: list[StagePlan], step: int) -> StagePlan:
  """The stage that global `step` belongs to (the last one past the end of the run)."""
  for stage_plan in plans:
    if step < stage_plan.end_step:
      return stage_plan
  return plans[-1]


def tokens_per_step(config: ml_collections.ConfigDict) -> int:
  return config.data.global_batch_size * config.data.seq_len
