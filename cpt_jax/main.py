"""The `cpt-jax` command line: a thin shell over the library's modules.

  cpt-jax train          --config=configs/demo.py --workdir=RUN_DIR [--config.a.b=v ...]
  cpt-jax info           --config=configs/demo.py [--memory]  parameters, FLOPs, run plan
                         (and the train step's memory per device, compiled here)
  cpt-jax plot-schedule  --config=configs/demo.py --out=lr.png   (a study's: every variant's)
  cpt-jax prepare        --config=configs/demo.py [--workers=N] [--num_processes=N
                         --process_id=I]    tokenize sources into the cache, shard by shard
  cpt-jax anneal         --from=RUN_DIR[:STEP] --workdir=NEW_DIR --steps=N [--shape=1-sqrt]
                         [--config.a.b=v ...]   (overrides of the source run's config)
  cpt-jax import-hf      --from=HF_DIR --workdir=RUN_DIR     a Hugging Face model as a run
                         (HF_DIR local, or on the Hub: hf://ORG/NAME[@REVISION])
  cpt-jax export-hf      --from=RUN_DIR[:STEP] --out=HF_DIR [--dtype=bfloat16]
  cpt-jax score          --from=RUN_DIR[:STEP] --file=PATH [--seq_len=N]
  cpt-jax info           --from=RUN_DIR                      a run's model and checkpoints
  cpt-jax info           --config=configs/study_demo.py [--workdir=STUDY_DIR]   a study's
                         runs, steps, tokens and FLOPs (and which runs are done)
  cpt-jax study          --config=configs/study_demo.py --workdir=STUDY_DIR [--only=A,B]
                         [--report] [--config.num_seeds=N]    the paper's grid of variants,
                         shared runs, one table (means ± std over N seeds)

`train`, `anneal` and `study` run on every process of a multi-process job (GPU hosts:
--coordinator_address=HOST:PORT --num_processes=N --process_id=I; TPU slices join by
themselves). Also `python -m cpt_jax ...`; `cpt-jax COMMAND --help` lists a command's flags.
Bad input ends with one line `cpt-jax: error: ...` and exit 2; a failed save, a diverged run
or a step out of device memory with one line and exit 1; Ctrl-C during training saves the
current step and exits 130.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from cpt_jax import cpu_runtime
from cpt_jax.config_error import ConfigError

# Each command and the flags it reads.
COMMANDS = {
    "train": ("config", "workdir", "allow_config_change", "coordinator_address",
              "num_processes", "process_id"),
    "info": ("config", "from", "memory", "workdir"),
    "plot-schedule": ("config", "out"),
    "prepare": ("config", "workers", "num_processes", "process_id"),
    "anneal": ("from", "workdir", "steps", "shape", "end_value", "coordinator_address",
               "num_processes", "process_id"),
    "import-hf": ("from", "workdir"),
    "export-hf": ("from", "out", "dtype"),
    "score": ("from", "file", "seq_len"),
    "study": ("config", "workdir", "only", "report", "coordinator_address", "num_processes",
              "process_id"),
}
_WITHOUT_CONFIG = ("anneal", "import-hf", "export-hf", "score")
# Commands that spend their time in compiled steps: their allocator keeps freed memory for the
# next step (cpu_runtime's setting 2). The others run no steps; `prepare`'s tokenizing
# threads would contend for its single arena.
_STEP_COMMANDS = ("train", "anneal", "score", "study")
_HELP = ("--help", "-h", "help", "--helpfull")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://); study, "
                                "info of a study: the study's directory.")
_OUT = flags.DEFINE_string("out", None, "plot-schedule: the image (default lr.png); "
                           "export-hf: the Hugging Face directory to write.")
_FROM = flags.DEFINE_string("from", None, "anneal, export-hf, score, info: the run, RUN_DIR or "
                            "RUN_DIR:STEP; import-hf: the Hugging Face model directory, "
                            "or hf://ORG/NAME[@REVISION] on the Hub.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "export-hf: float32 or bfloat16 tensors.")
_FILE = flags.DEFINE_string("file", None, "score: the text file to score.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "score: window length (default: the run's "
                                "data.seq_len).")
_STEPS = flags.DEFINE_integer("steps", None, "anneal: steps of the anneal.")
_SHAPE = flags.DEFINE_string("shape", "1-sqrt", "anneal: decay shape.")
_END_VALUE = flags.DEFINE_float("end_value", 0.0, "anneal: the final learning rate.")
_MEMORY = flags.DEFINE_bool("memory", False, "info: also compile the train step for this "
                            "machine's devices and report its memory per device against "
                            "their capacity.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "train: resume although fields that matter changed.")
_ONLY = flags.DEFINE_list("only", [], "study: train only these variants (and the runs they "
                          "share); the report covers every finished variant.")
_REPORT = flags.DEFINE_bool("report", False, "study: write the report of the runs finished "
                            "so far without training.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-process: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: process count "
                                      "(prepare: commands splitting the units between them).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_WORKERS = flags.DEFINE_integer("workers", 1, "prepare: worker processes that read and "
                                "tokenize (0 = this process).")


class UsageError(ConfigError):
  pass


def _usage(command: str | None) -> str:
  if command is None:
    return __doc__.strip()
  lines = [f"usage: cpt-jax {command} [flags]", ""]
  for name in COMMANDS[command]:
    flag = flags.FLAGS[name]
    default = "" if flag.default in (None, "") else f" (default: {flag.default})"
    lines.append(f"  --{name}: {flag.help}{default}")
  if "config" in COMMANDS[command]:
    lines.append("  --config.FIELD=VALUE: override a config field, e.g. "
                 "--config.stages[1].replay.prose=0.25")
  if command == "anneal":
    lines.append("  --config.FIELD=VALUE: override a field of the source run's config, e.g. "
                 "--config.eval.every=10")
  return "\n".join(lines)


def _importable_config_package(path: str) -> None:
  """Configs in a package (configs/) import each other through it: put its parent on the
  import path, and the working directory, as `python -m cpt_jax` has it (a config of one's
  own, run from the repository root, imports `configs.demo`)."""
  directory = os.path.dirname(os.path.abspath(path))
  root = os.path.dirname(directory)
  if os.path.exists(os.path.join(directory, "__init__.py")) and root not in sys.path:
    sys.path.insert(0, root)
  if os.getcwd() not in sys.path and "" not in sys.path:
    sys.path.append(os.getcwd())


def _line_in(path: str, error: BaseException) -> str:
  """`path:LINE` of the last line of `path` that `error` passed through, else `path`."""
  import traceback
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(frame.filename) == os.path.abspath(path)]
  return f"{path}:{lines[-1]}" if lines else path


def _check_config_file(argv: list[str]):
  """Loads the --config file once before ml-collections does, so a missing file, a syntax
  error or an unknown variant is one line naming it. Returns its config before overrides
  (to locate a bad override), or None without --config."""
  import importlib.util
  for arg in argv:
    if not arg.startswith("--config="):
      continue
    path, _, variant = arg[len("--config="):].partition(":")
    if not os.path.isfile(path):
      raise UsageError(f"--config={path}: no such config file")
    _importable_config_package(path)
    spec = importlib.util.spec_from_file_location("_cpt_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
    except SyntaxError as error:
      raise UsageError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    except ImportError as error:  # Another error in the file is a bug in it: its traceback.
      hint = ("; the repository's configs/ is importable where cpt-jax runs from the "
              "repository's root" if (error.name or "").split(".")[0] == "configs" else "")
      raise UsageError(f"{_line_in(path, error)}: {error}{hint}") from None
    if not hasattr(module, "get_config"):
      raise UsageError(f"--config={path}: defines no get_config(); expected an experiment "
                       "config (see configs/demo.py)")
    try:
      return module.get_config(variant) if variant else module.get_config()
    except ValueError as error:
      raise UsageError(f"--config={path}:{variant}: {error}") from None
  return None


def _parse(argv: list[str]) -> None:
  """Parses flags; turns ml-collections' bare errors into one line naming the field.
  Re-entrant: ml-collections reads overrides from sys.argv, so it is set to `argv`."""
  flags.FLAGS.unparse_flags()
  for name in [name for name in flags.FLAGS if name.startswith("config.")]:
    delattr(flags.FLAGS, name)  # Override flags a previous parse registered.
  base = _check_config_file(argv)
  sys.argv = list(argv)
  try:
    flags.FLAGS(argv)
  except (AttributeError, KeyError, IndexError, TypeError) as error:
    from cpt_jax import experiment_config
    overrides = [arg[len("--config."):].split("=")[0] for arg in argv
                 if arg.startswith("--config.")]
    for path in overrides:
      message = base is not None and experiment_config.unknown_override(base, path)
      if message:
        raise UsageError(message) from None
    raise UsageError(f"bad --config override: {error}") from None
  except flags.Error as error:
    raise UsageError(str(error).splitlines()[0]) from None


def _check_flags_of(command: str) -> None:
  """A flag the command does not read (`train --steps=100`) would be ignored: refused."""
  ours = {name for names in COMMANDS.values() for name in names}
  for name in sorted(ours - set(COMMANDS[command])):
    if flags.FLAGS[name].present:
      raise UsageError(f"--{name} is not a flag of `cpt-jax {command}`; its flags: "
                       + ", ".join(f"--{flag}" for flag in COMMANDS[command]))


class _Format(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _show_library_logs() -> None:
  """The library logs (`logging.getLogger("cpt_jax...")`); the command line shows its info
  and warnings on the current stdout, one plain line each."""
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(_Format())
  logger = logging.getLogger("cpt_jax")
  logger.handlers = [handler]
  logger.setLevel(logging.INFO)
  logger.propagate = False


def _print_summary(summary: dict) -> None:
  from cpt_jax import report
  if summary:
    print(report.table(summary))


def _require(flag, name: str):
  if flag.value is None:
    raise UsageError(f"--{name} is required")
  return flag.value


def _is_study(config) -> bool:
  return "variants" in config  # study.study_config(base, variants, baseline)


def _command_info(config) -> None:
  from cpt_jax import info
  if config is not None and _is_study(config):  # Its runs.
    if _MEMORY.value:
      raise UsageError("--memory needs an experiment config, not a study: its variants may "
                       "differ in model and batch; give the experiment as --config")
    print(info.describe_study(config, _WORKDIR.value))
    return
  if _WORKDIR.value is not None:
    raise UsageError("--workdir goes with a study config (the study's directory); a run's "
                     "directory is read with --from=RUN_DIR")
  if config is None:
    if _MEMORY.value:
      raise UsageError("--memory needs --config: the step's memory follows the experiment's "
                       "batch, model and parallel mode")
    print(info.describe_run(_FROM.value))
    return
  print(info.describe(config))
  if _MEMORY.value:
    print(info.describe_memory(config))


def _command_plot_schedule(config) -> None:
  from cpt_jax import plots
  from cpt_jax import run_plan
  out = _OUT.value or "lr.png"
  if not out.lower().endswith(".png"):  # The figure is a PNG whatever the name says.
    raise UsageError(f"--out={out}: expected a .png file")
  directory = os.path.dirname(os.path.abspath(out))
  if "://" not in out and not os.path.isdir(directory):
    raise UsageError(f"--out={out}: directory {directory} does not exist")
  title = flags.FLAGS["config"].config_filename
  if _is_study(config):  # Every variant's schedule (seeds share theirs).
    from cpt_jax import study
    variants = [variant for variant in study.plan(config, "STUDY_DIR")
                if variant.label == variant.name]
    plots.plot_study_schedules({variant.name: study.learning_rates(variant)
                                for variant in variants},
                               run_plan.plan(variants[0].config), out, title)
  else:
    plots.plot_schedule(run_plan.learning_rate_schedule(config), run_plan.plan(config), out,
                        title)
  print(f"wrote {out}")


def _command_prepare(config) -> None:
  from cpt_jax import prepare
  if (_NUM_PROCESSES.value is None) != (_PROCESS_ID.value is None):
    raise UsageError("--num_processes and --process_id go together")
  prepare.prepare(config, workers=_WORKERS.value, num_processes=_NUM_PROCESSES.value or 1,
                  process_id=_PROCESS_ID.value or 0,
                  progress=config.log.progress_bar)


def _join_processes() -> None:
  """Commands that train run on every process of a multi-process job (every host of a pod)."""
  from cpt_jax import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def _command_train(config) -> None:
  from cpt_jax import trainer
  _join_processes()
  _print_summary(trainer.train(config, _require(_WORKDIR, "workdir"),
                              allow_config_change=_ALLOW_CONFIG_CHANGE.value))


def _command_anneal(overrides: tuple[str, ...]) -> None:
  from cpt_jax import anneal
  _join_processes()
  _print_summary(anneal.anneal(_require(_FROM, "from"), _require(_WORKDIR, "workdir"),
                              _require(_STEPS, "steps"), _SHAPE.value, _END_VALUE.value,
                              overrides))


def _command_import_hf() -> None:
  from cpt_jax import hf_checkpoint
  workdir = _require(_WORKDIR, "workdir")
  hf_checkpoint.import_hf(_require(_FROM, "from"), workdir)
  print(f"imported into {workdir}; continue it with --config.init.from_checkpoint={workdir}")


def _command_export_hf() -> None:
  from cpt_jax import hf_checkpoint
  out = hf_checkpoint.export_hf(_require(_FROM, "from"), _require(_OUT, "out"), _DTYPE.value)
  print(f"wrote {out}")


def _command_score() -> None:
  from cpt_jax import score
  print(score.score(_require(_FROM, "from"), _require(_FILE, "file"), _SEQ_LEN.value))


def _command_study(config) -> None:
  import jax
  from cpt_jax import study
  workdir = _require(_WORKDIR, "workdir")
  _join_processes()
  table = study.run(config, workdir, only=_ONLY.value, report_only=_REPORT.value)
  if table is not None and jax.process_index() == 0:  # Process 0 writes the report.
    report = os.path.join(workdir, "study.md")
    print(open(report, encoding="utf-8").read())
    figure = os.path.isfile(os.path.join(workdir, "study.png"))  # Once a variant is done.
    print(f"wrote {report}, study.json" + (", study.png" if figure else ""))


def _out_of_memory_remedies(command: str) -> str:
  if command in ("train", "study"):
    from cpt_jax import step_memory
    return (f"; `cpt-jax info --memory` with the same --config flags shows the step's plan per "
            f"device; {step_memory.REMEDIES}")
  return "; lower --seq_len" if command == "score" else ""


def main(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] in _HELP:
    print(_usage(None), file=sys.stdout if len(argv) >= 2 else sys.stderr)
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command not in COMMANDS:
    print(f"cpt-jax: error: unknown command {command!r}; expected one of "
          f"{', '.join(COMMANDS)} (see cpt-jax --help)", file=sys.stderr)
    return 2
  if any(arg in _HELP for arg in argv[2:]):
    print(_usage(command))
    return 0
  import jax
  from cpt_jax import checkpoint, trainer
  _show_library_logs()
  args = argv[2:]
  # anneal's config is its source run's: overrides apply to it, after the flags are parsed.
  overrides = tuple(arg for arg in args if arg.startswith("--config.")) if (
      command == "anneal") else ()
  try:
    _parse([argv[0]] + [arg for arg in args if arg not in overrides])
    _check_flags_of(command)
    if command == "anneal":
      _command_anneal(overrides)
      return 0
    if command in _WITHOUT_CONFIG:
      {"import-hf": _command_import_hf, "export-hf": _command_export_hf,
       "score": _command_score}[command]()
      return 0
    config = _CONFIG.value
    if command == "info" and config is None and _FROM.value:
      _command_info(None)
      return 0
    if config is None:
      raise UsageError("--config is required, e.g. --config=configs/demo.py")
    # `train` and `study` validate the configs they resolve, study.plan a study's.
    if command not in ("train", "study") and not _is_study(config):
      from cpt_jax import experiment_config
      experiment_config.validate(config)
    {"train": _command_train, "info": _command_info, "plot-schedule": _command_plot_schedule,
     "prepare": _command_prepare, "study": _command_study}[command](config)
  except ConfigError as error:  # Bad input, named in one line; any other error is a bug.
    print(f"cpt-jax: error: {error}", file=sys.stderr)
    return 2
  except (checkpoint.CheckpointError, trainer.TrainingDiverged) as error:
    print(f"cpt-jax: error: {error}", file=sys.stderr)  # Named; checkpoints intact.
    return 1
  except jax.errors.JaxRuntimeError as error:
    if not str(error).startswith("RESOURCE_EXHAUSTED"):
      raise  # Any other runtime error is a bug.
    print(f"cpt-jax: error: out of device memory ({str(error).splitlines()[0]})"
          f"{_out_of_memory_remedies(command)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt as interrupt:  # trainer.Interrupted: the step was saved.
    print(f"cpt-jax: {str(interrupt) or 'interrupted (Ctrl-C)'}", file=sys.stderr)
    return 130
  return 0


def run() -> None:
  """Console-script entry point."""
  # Huge pages, memory reuse (and oneDNN if asked) for XLA:CPU; may re-execute.
  cpu_runtime.configure(reuse_memory=len(sys.argv) > 1 and sys.argv[1] in _STEP_COMMANDS)
  sys.exit(main(sys.argv))
