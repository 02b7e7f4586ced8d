"""The `cpt-jax` command line: a thin shell over the library's modules.

  cpt-jax train          --config=configs/demo.py --workdir=RUN_DIR [--config.a.b=v ...]
  cpt-jax info           --config=configs/demo.py            parameters, FLOPs, run plan
  cpt-jax plot-schedule  --config=configs/demo.py --out=lr.png
  cpt-jax prepare        --config=configs/demo.py            tokenize sources into the cache
  cpt-jax anneal         --from=RUN_DIR[:STEP] --workdir=NEW_DIR --steps=N [--shape=1-sqrt]

Also `python -m cpt_jax ...`. Bad input ends with one line `cpt-jax: error: ...`, exit 2.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

COMMANDS = ("train", "info", "plot-schedule", "prepare", "anneal")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_OUT = flags.DEFINE_string("out", "lr.png", "plot-schedule: the image to write.")
_FROM = flags.DEFINE_string("from", None, "anneal: the source run, RUN_DIR or RUN_DIR:STEP.")
_STEPS = flags.DEFINE_integer("steps", None, "anneal: steps of the anneal.")
_SHAPE = flags.DEFINE_string("shape", "1-sqrt", "anneal: decay shape.")
_END_VALUE = flags.DEFINE_float("end_value", 0.0, "anneal: the final learning rate.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "train: resume although fields that matter changed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-process: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")


class UsageError(ValueError):
  pass


def _parse(argv: list[str]) -> None:
  """Parses flags; turns ml-collections' bare errors into one line naming the field."""
  try:
    flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    from cpt_jax import experiment_config
    overrides = [arg[len("--config."):].split("=")[0] for arg in argv
                 if arg.startswith("--config.")]
    base = _load_config_without_overrides(argv)
    for path in overrides:
      message = base is not None and experiment_config.unknown_override(base, path)
      if message:
        raise UsageError(message) from None
    raise UsageError(f"bad --config override: {error}") from None
  except flags.Error as error:
    raise UsageError(str(error).splitlines()[0]) from None


def _load_config_without_overrides(argv):
  """The --config file's config before overrides, to locate a bad override; None if unusable."""
  import importlib.util
  for arg in argv:
    if arg.startswith("--config="):
      path, _, variant = arg[len("--config="):].partition(":")
      try:
        spec = importlib.util.spec_from_file_location("_cpt_jax_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant) if variant else module.get_config()
      except Exception:  # The caller falls back to ml-collections' own message.
        return None
  return None


def _require(flag, name: str):
  if flag.value is None:
    raise UsageError(f"--{name} is required")
  return flag.value


def _command_info(config) -> None:
  from cpt_jax import info
  print(info.describe(config))


def _command_plot_schedule(config) -> None:
  from cpt_jax import plots
  from cpt_jax import run_plan
  plans = run_plan.plan(config)
  plots.plot_schedule(run_plan.learning_rate_schedule(config), plans, _OUT.value,
                      title=flags.FLAGS["config"].config_filename)
  print(f"wrote {_OUT.value}")


def _command_prepare(config) -> None:
  from cpt_jax import prepare
  prepare.prepare(config)


def _command_train(config) -> None:
  from cpt_jax import distributed
  from cpt_jax import trainer
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  trainer.train(config, _require(_WORKDIR, "workdir"),
                allow_config_change=_ALLOW_CONFIG_CHANGE.value)


def _command_anneal() -> None:
  from cpt_jax import anneal
  anneal.anneal(_require(_FROM, "from"), _require(_WORKDIR, "workdir"),
                _require(_STEPS, "steps"), _SHAPE.value, _END_VALUE.value)


def main(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(__doc__.strip(), file=sys.stderr)
    return 2
  command = argv[1]
  try:
    _parse([argv[0]] + argv[2:])
    if command == "anneal":
      _command_anneal()
      return 0
    config = _CONFIG.value
    if config is None:
      raise UsageError("--config is required, e.g. --config=configs/demo.py")
    from cpt_jax import experiment_config
    experiment_config.validate(config)
    {"train": _command_train, "info": _command_info, "plot-schedule": _command_plot_schedule,
     "prepare": _command_prepare}[command](config)
  except ValueError as error:  # Includes UsageError: bad input, reported in one line.
    print(f"cpt-jax: error: {error}", file=sys.stderr)
    return 2
  except RuntimeError as error:  # A failed save or a diverged run: named, checkpoints intact.
    from cpt_jax import checkpoint, trainer
    if not isinstance(error, (checkpoint.CheckpointError, trainer.TrainingDiverged)):
      raise
    print(f"cpt-jax: error: {error}", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  """Console-script entry point."""
  sys.exit(main(sys.argv))
