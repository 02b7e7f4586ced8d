"""`cpt-jax anneal`: branch-and-anneal a checkpoint into a deployable model.

Takes a checkpoint from the stable or constant phase of a WSD or infinite-schedule run and
continues it in a new run directory for `steps` steps, with the learning rate annealed from
the source run's value at that step to `end_value` (`schedules.anneal_from`). The new run
keeps the optimizer state and the step counter and continues the source's exact data stream;
the source run directory is only read.
"""

from __future__ import annotations

import copy

import ml_collections

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import experiment_config
from cpt_jax import paths
from cpt_jax import run_directory
from cpt_jax import run_plan
from cpt_jax import schedule_config
from cpt_jax import schedules
from cpt_jax import trainer
from cpt_jax.config_error import ConfigError


def branch_config(config: ml_collections.ConfigDict, run_dir: str, step: int, step_offset: int,
                  stage_index: int, steps: int, shape: str = "1-sqrt",
                  end_value: float = 0.0) -> ml_collections.ConfigDict:
  """The config of a branch that anneals `config`'s run (in `run_dir`, whose first stage
  began at `step_offset`) from its checkpoint at `step`, in stage `stage_index`: one anneal
  stage on that stage's data, from the run's learning rate at `step`. Pure: the study runner
  plans branches of runs that do not exist yet."""
  if steps <= 0:
    raise ConfigError(f"--steps={steps}: expected a positive number of anneal steps")
  config = copy.deepcopy(config)
  start_value = float(run_plan.learning_rate_schedule(config, step_offset=step_offset)(step))
  stage = config.stages[stage_index]  # The stage whose data stream the checkpoint holds.
  config.stages = [run_plan.stage(
      f"anneal@{step}", steps, dict(stage.mixture.items()),
      schedule_config.config_for("anneal", start_value=start_value, end_value=end_value,
                                 shape=shape),
      replay=dict(stage.replay.items()), replay_position=stage.replay_position)]
  config.schedule = None
  config.init.from_checkpoint = f"{run_dir}:{step}"
  config.init.optimizer_state = "keep"
  config.init.step = "continue"
  config.init.data = "continue"
  return config


def anneal_config(source_reference: str, steps: int, shape: str, end_value: float,
                  overrides: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The config of the annealing branch of an existing run: its config, one anneal stage,
  then `overrides` (`--config.PATH=VALUE`, e.g. of logging or evaluation)."""
  run_dir, step = checkpoint_lib.parse_reference(source_reference)
  config = run_directory.source_experiment(run_dir)  # First: names a directory that is no run.
  source = checkpoint_lib.Checkpointer(run_dir, read_only=True)
  step = source.existing_step(step, f"--from={source_reference!r}")
  metadata = source.read_metadata(step)
  if not config.stages:  # An imported model: trained elsewhere, on a schedule cpt_jax lacks.
    raise ConfigError(f"--from={source_reference!r}: an imported model, with no stage or "
                      "learning rate of its own to anneal from; continue it with `cpt-jax "
                      f"train --config.init.from_checkpoint={run_dir}` (a stage can end in an "
                      "anneal schedule)")
  branch = branch_config(config, run_dir, step, metadata["step_offset"], metadata["stage"],
                         steps, shape, end_value)
  # The flags, named as given (the branch's own validation names its stage's schedule).
  if shape not in schedules.DECAY_SHAPES:
    raise ConfigError(f"--shape={shape!r}: expected one of {list(schedules.DECAY_SHAPES)}")
  start_value = branch.stages[0].schedule.start_value
  if not 0 <= end_value <= start_value:
    raise ConfigError(f"--end_value={end_value:g}: expected a learning rate from 0 to the "
                      f"run's at step {step}, {start_value:.4g}, which the anneal decays from")
  return experiment_config.override_from_command_line(branch, list(overrides))


def anneal(source_reference: str, workdir: str, steps: int, shape: str = "1-sqrt",
           end_value: float = 0.0, overrides: tuple[str, ...] = ()) -> dict:
  source_reference, workdir = paths.resolve_reference(source_reference), paths.resolve(workdir)
  config = anneal_config(source_reference, steps, shape, end_value, overrides)
  run_dir, _ = checkpoint_lib.parse_reference(source_reference)
  if workdir.rstrip("/") == run_dir.rstrip("/"):
    raise ConfigError("--workdir must differ from the source run directory: annealing never "
                      "writes into the source run")
  return trainer.train(config, workdir)
