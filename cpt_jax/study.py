"""`cpt-jax study`: the seed paper's experiment grid as one resumable command.

A study config (`configs/study_demo.py`) holds a `base` experiment, its `variants` (each a
name and overrides of the base) and the `baseline` variant every other is compared with (the
union of all the data in one run). Each variant trains one run per stage, chained through
`init.from_checkpoint` (the step counter continues; the optimizer state is reset or kept as
the stage says), so variants whose first stages are configured alike share those runs: five
stage-2 variants cost one stage-1 run plus five stage-2 runs. A variant with `anneal_steps`
(infinite schedules) is judged after each stage on an anneal branch of that many steps, while
its next stage continues from the un-annealed checkpoint: the constant phase never re-warms.

Every run is an ordinary run directory: a variant's result in STUDY_DIR/NAME, the runs of its
earlier stages (shared or not) in STUDY_DIR/stages/. With `num_seeds` > 1 every variant is
also run with the next seeds (model initialization and document order, `seed` and
`data.shuffle_seed`, each + 1, + 2, ...), its results in STUDY_DIR/NAME.seedS, and the table
gives each variant's mean and spread over them. A run is identified by a hash of its
config and of the runs before it. A finished run (its summary.json written) is skipped and an
unfinished one resumes, so a study killed at any moment and rerun trains exactly the same runs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re

from etils import epath
import jax
import ml_collections
import numpy as np

from cpt_jax import anneal
from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import experiment_config
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import paths
from cpt_jax import run_directory
from cpt_jax import run_plan
from cpt_jax import schedule_config
from cpt_jax import study_report
from cpt_jax import trainer
from cpt_jax.config_error import ConfigError

_log = logging.getLogger(__name__)

STAGES_DIR = "stages"  # Runs that are not a variant's result, under the study directory.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SEED_SUFFIX = re.compile(r".*\.seed\d+")  # A later seed's result directory: NAME.seedS.
_VARIANT_FIELDS = ("name", "description", "overrides", "anneal_steps", "anneal_shape",
                   "anneal_end_value")


def variant(name: str, overrides: dict | None = None, *, description: str = "",
            anneal_steps: int = 0, anneal_shape: str = "1-sqrt",
            anneal_end_value: float = 0.0) -> ml_collections.ConfigDict:
  """One `study.variants` entry with every field declared."""
  return ml_collections.ConfigDict({
      "name": name,  # Names the variant's run directory and its row in the table.
      "description": description,  # One line for the table, e.g. "5% replay, re-warmed".
      # ((path, value), ...): overrides of the base config, paths as on the command line
      # ("stages[1].replay.prose"); a value may be a whole block (a schedule, a stage list).
      "overrides": tuple((overrides or {}).items()),
      # > 0: each stage's result is an anneal branch of this many steps from the stage's end
      # (infinite schedules); the next stage continues from the un-annealed checkpoint.
      "anneal_steps": anneal_steps,
      "anneal_shape": anneal_shape,  # The anneal's decay shape (schedules.anneal_from).
      "anneal_end_value": anneal_end_value,  # The learning rate the anneal ends at.
  })


def study_config(base: ml_collections.ConfigDict, variants, baseline: str,
                 num_seeds: int = 1) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = base  # The experiment every variant overrides (base_config fields).
  config.variants = list(variants)  # study.variant(...) entries, in the table's order.
  config.baseline = baseline  # The variant every row is compared with (the union run).
  # Seeds per variant: the base's `seed` and `data.shuffle_seed`, then each + 1, + 2, ...
  # The first seed's runs are the single-seed study's, so raising it trains only new runs.
  config.num_seeds = num_seeds
  return config


def union_stage(base: ml_collections.ConfigDict, schedule: ml_collections.ConfigDict,
                name: str = "union") -> ml_collections.ConfigDict:
  """The retraining baseline: one stage on all the stages' data at once for their combined
  steps, each source weighted by its share of all their training tokens."""
  tokens, steps = {}, 0
  for stage in base.stages:
    for source, weight in [*stage.mixture.items(), *stage.replay.items()]:
      tokens[source] = tokens.get(source, 0.0) + weight * stage.steps
    steps += stage.steps
  mixture = {source: count / steps for source, count in tokens.items() if count > 0}
  return run_plan.stage(name, steps, mixture, schedule)


def paper_variants(base: ml_collections.ConfigDict, *, peak: float, end: float,
                   constant: float, cooldown: float, anneal_steps: int) -> list:
  """The seed paper's comparisons for a two-stage `base` (stage 1 on one source, stage 2 on
  one new source with replay of the first): 5% replay with re-warmed cosines (peak -> end),
  0% and 25% replay; no re-warming (stage 2 constant at `end`); an infinite schedule (1%
  warmup and a `cooldown` share of stage 1 to `constant`, constant after, each stage judged
  on an `anneal_steps` branch to `end`); and "union", retraining on both in one cosine."""
  sources = [[source for source, weight in stage.mixture.items() if weight > 0]
             for stage in base.stages]
  if [len(names) for names in sources] != [1, 1]:
    raise ConfigError(f"paper_variants: the base's stages train {sources}; expected two "
                      "stages of one source each")
  (old,), (new,) = sources

  def replay(share):
    return {f"stages[1].mixture.{new}": 1.0 - share, f"stages[1].replay.{old}": share}

  infinite_first = schedule_config.config_for(
      "infinite", peak_value=peak, constant_value=constant, warmup=0.01, cooldown=cooldown,
      anneal=0)
  cosine = schedule_config.config_for("cosine_with_warmup", peak_value=peak, end_value=end,
                                      warmup=0.01)
  return [
      variant("replay5", replay(0.05),
              description="5% replay, re-warmed and re-decayed cosine (the paper's recipe)"),
      variant("replay0", replay(0.0), description="no replay: the forgetting baseline"),
      variant("replay25", replay(0.25), description="25% replay"),
      variant("no_rewarm", {
          **replay(0.05), "stages[1].schedule": schedule_config.config_for("constant", value=end)},
          description=f"5% replay, stage 2 at stage 1's final LR ({end:g}): no re-warming"),
      variant("infinite", {
          **replay(0.05),
          "stages[0].schedule": infinite_first,
          "stages[1].schedule": schedule_config.config_for("constant", value=constant)},
          anneal_steps=anneal_steps, anneal_end_value=end,
          description="5% replay, infinite schedule: constant continued, each stage annealed "
                      f"on a {anneal_steps}-step branch"),
      variant("union", {"stages": [union_stage(base, cosine)]},
              description="retrain on the union of both stages' data (one cosine)"),
  ]


def new_data_only_stage(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The last stage trained from scratch on its new data alone (its replay dropped)."""
  last = base.stages[-1]
  new = {source: weight for source, weight in last.mixture.items() if weight > 0}
  total = sum(new.values())
  return run_plan.stage(last.name, last.steps, {s: w / total for s, w in new.items()},
                        copy.deepcopy(last.schedule))


@dataclasses.dataclass(frozen=True)
class Run:
  """One run directory of the study: a stage of some variant's chain, or an anneal branch."""
  key: str  # A hash of the run's config and the runs before it: its identity.
  directory: str  # Absolute path of the run directory.
  config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)
  start_step: int  # The global step its stage begins at.
  end_step: int
  parent: Run | None  # The run whose final checkpoint it starts from.

  @property
  def tokens(self) -> int:
    return (self.end_step - self.start_step) * run_plan.tokens_per_step(self.config)

  @property
  def flops(self) -> int:
    """Training FLOPs of its tokens, with the model it trains: an imported one's for a run
    that starts from an import (`init.model="source"`), not the config's model block."""
    config = run_directory.with_source_model(self.config)
    model = model_config.from_config_dict(config.model)
    return self.tokens * model_lib.training_flops_per_token(model, config.data.seq_len)

  def is_done(self) -> bool:
    """Finished once its report is written (after its final checkpoint)."""
    return (epath.Path(self.directory) / "summary.json").exists()


@dataclasses.dataclass(frozen=True)
class VariantPlan:
  """A variant's runs for one seed."""
  name: str
  label: str  # Its result directory's name: the variant's, then NAME.seedS for later seeds.
  description: str
  config: ml_collections.ConfigDict = dataclasses.field(repr=False)  # The whole experiment.
  chain: tuple[Run, ...]  # One run per stage, each starting from the previous one.
  results: tuple[Run, ...]  # Per stage, the run whose final evaluation is its result.

  @property
  def runs(self) -> list[Run]:
    """Every run this variant needs, each after the run it starts from."""
    ordered = []
    for stage_run, result in zip(self.chain, self.results):
      ordered += [stage_run] + ([result] if result is not stage_run else [])
    return ordered

  @property
  def path(self) -> list[Run]:
    """The runs that lead to the final model: the stages, then the last anneal if any."""
    last = self.results[-1]
    return list(self.chain) + ([last] if last is not self.chain[-1] else [])

  @property
  def update_runs(self) -> list[Run]:
    """The runs that update a model already trained on the first stage's data (all of them
    for a one-stage variant such as the union baseline): the compute continual pre-training
    spends, against retraining's whole run."""
    if len(self.chain) == 1:
      return self.runs
    return [run for run in self.runs if run not in self.runs_of_first_stage]

  @property
  def runs_of_first_stage(self) -> list[Run]:
    return [self.chain[0]] + ([self.results[0]] if self.results[0] is not self.chain[0] else [])


def learning_rates(variant: VariantPlan) -> list[tuple[np.ndarray, np.ndarray, bool]]:
  """The learning rate of each of the variant's runs at each of its steps, as the trainer
  computes it: (steps, rates, whether the run is an anneal branch that measures a stage but
  that no later stage continues)."""
  lines = []
  for run in variant.runs:
    schedule = run_plan.learning_rate_schedule(run.config, step_offset=run.start_step)
    steps = np.arange(run.start_step, run.end_step + 1)
    lines.append((steps, np.asarray(jax.jit(jax.vmap(schedule))(steps)),
                  run not in variant.chain))
  return lines


def apply_overrides(base: ml_collections.ConfigDict, spec: ml_collections.ConfigDict):
  """The variant's experiment: the base with its overrides, each checked to exist."""
  config = copy.deepcopy(base)
  for path, value in spec.overrides:
    where = f"variant {spec.name!r}: {path}"
    message = experiment_config.unknown_override(config, path)
    if message:
      raise ConfigError(f"variant {spec.name!r}: {message}")
    parts = [part for part in path.replace("[", ".[").split(".") if part]
    node = config
    for part in parts[:-1]:
      node = node[int(part.strip("[]"))] if part.startswith("[") else node[part]
    last = parts[-1]
    try:
      if last.startswith("["):
        node[int(last.strip("[]"))] = copy.deepcopy(value)
      else:
        setattr(node, last, copy.deepcopy(value))
    except TypeError as error:
      raise ConfigError(f"{where}={value!r}: {error}") from None
  return config


def _check_variant_fields(index: int, spec) -> None:
  where = f"variants[{index}]"
  unknown = sorted(set(spec.keys()) - set(_VARIANT_FIELDS))
  if unknown:
    raise ConfigError(f"{where} has unknown fields {unknown}; expected {list(_VARIANT_FIELDS)} "
                      "(build it with study.variant(...))")
  if (not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name)
      or _SEED_SUFFIX.fullmatch(spec.name) or spec.name == STAGES_DIR):
    raise ConfigError(f"{where}.name={spec.name!r}: expected a directory name of letters, "
                      f"digits, '_', '.', '-' (not {STAGES_DIR!r}, nor ending in .seedN, "
                      "which names a variant's later seeds)")
  steps = spec.anneal_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ConfigError(f"variant {spec.name!r}: anneal_steps={steps!r}: expected an integer >= 0")


def _check_chainable(name: str, config) -> None:
  """Rules for an experiment the study splits into one run per stage."""
  if len(config.stages) > 1 and config.get("schedule") is not None:
    raise ConfigError(f"variant {name!r}: a run-wide config.schedule cannot be split into one "
                      "run per stage; give each stage its own schedule (an infinite schedule: "
                      "warmup and cooldown in stage 0, constant after, anneal_steps > 0)")


def _key(config, parent: Run | None) -> str:
  """A run's identity: what decides its result (the fields a resume may not change, how it
  starts, what its evaluation measures) and its parent's key. Logging, checkpointing and
  fields added to cpt_jax later do not change it, so finished runs stay finished."""
  described = run_directory.config_as_json(config)
  init = dict(described["init"], from_checkpoint="" if parent else described["init"][
      "from_checkpoint"])
  identity = {"fields": run_directory.fields_that_matter(described, len(config.stages)),
              "init": init,
              "eval": {field: described["eval"][field] for field in
                       ("max_batches", "sources", "document_masking")},
              "parent": parent.key if parent else None}
  text = json.dumps(identity, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stage_config(config, index: int, parent: Run | None):
  """Stage `index` of a variant as a run of its own, starting from `parent`'s checkpoint."""
  stage_config = copy.deepcopy(config)
  stage_config.stages = [copy.deepcopy(config.stages[index])]
  if parent is not None:
    stage_config.init.from_checkpoint = f"{parent.directory}:{parent.end_step}"
    stage_config.init.model = "config"
    stage_config.init.step = "continue"
    stage_config.init.optimizer_state = config.stages[index].optimizer_state
    stage_config.init.data = "fresh"
  return stage_config


class _Directories:
  """Run directories by key: a variant's result named after it (the first variant claiming a
  key wins), every other run under stages/ by stage name and key."""

  def __init__(self, study_dir: str, result_names: dict[str, str]):
    self.study_dir, self.result_names = study_dir, result_names

  def __call__(self, key: str, label: str) -> str:
    if key in self.result_names:
      return f"{self.study_dir}/{self.result_names[key]}"
    return f"{self.study_dir}/{STAGES_DIR}/{label}-{key}"


def _with_seed(config, offset: int):
  """The variant's experiment with its model and data seeds moved on by `offset`."""
  if offset == 0:
    return config
  config = copy.deepcopy(config)
  config.seed += offset
  config.data.shuffle_seed += offset
  return config


def _label(spec, config, offset: int) -> str:
  return spec.name if offset == 0 else f"{spec.name}.seed{config.seed}"


def _plan_variant(label: str, description: str, config, spec, directories) -> VariantPlan:
  chain, results, parent = [], [], None
  for index, stage in enumerate(config.stages):
    stage_config = _stage_config(config, index, parent)
    key = _key(stage_config, parent)
    start = parent.end_step if parent else 0
    stage_run = Run(key, directories(key, f"{index}-{stage.name}"), stage_config, start,
                    start + stage.steps, parent)
    result = stage_run
    if spec.anneal_steps:
      branch = anneal.branch_config(stage_config, stage_run.directory, stage_run.end_step,
                                    start, 0, spec.anneal_steps, spec.anneal_shape,
                                    spec.anneal_end_value)
      branch_key = _key(branch, stage_run)
      result = Run(branch_key, directories(branch_key, f"{index}-{stage.name}-anneal"), branch,
                   stage_run.end_step, stage_run.end_step + spec.anneal_steps, stage_run)
    chain.append(stage_run)
    results.append(result)
    parent = stage_run
  return VariantPlan(spec.name, label, description, config, tuple(chain), tuple(results))


def plan(study: ml_collections.ConfigDict, study_dir: str) -> list[VariantPlan]:
  """Every variant's runs, a plan per seed (a variant's seeds follow each other); raises
  ConfigError naming the first bad variant or field, before anything runs."""
  if "base" not in study and "model" in study and "stages" in study:
    raise ConfigError("the config is an experiment, not a study (base, variants, baseline): "
                      "run it with `cpt-jax train`, or give a study config (see "
                      "configs/study_demo.py)")
  for field in ("base", "variants", "baseline"):
    if field not in study:
      raise ConfigError(f"the study config has no {field!r}; expected study.study_config(base, "
                        "variants, baseline) (see configs/study_demo.py)")
  if not study.variants:
    raise ConfigError("variants is empty; expected study.variant(...) entries")
  seen = set()
  for index, spec in enumerate(study.variants):
    _check_variant_fields(index, spec)
    if spec.name in seen:
      raise ConfigError(f"variants[{index}].name={spec.name!r} repeats an earlier variant's name")
    seen.add(spec.name)
  if study.baseline not in seen:
    raise ConfigError(f"baseline={study.baseline!r}: no such variant; variants: {sorted(seen)}")
  num_seeds = study.get("num_seeds", 1)
  if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
    raise ConfigError(f"num_seeds={num_seeds!r}: expected an integer >= 1")

  configs = []
  for spec in study.variants:
    config = paths.resolve_config(apply_overrides(study.base, spec))
    try:
      experiment_config.validate(config)
    except ConfigError as error:
      raise ConfigError(f"variant {spec.name!r}: {error}") from None
    _check_chainable(spec.name, config)
    configs.append(config)
  seeded = [(spec, _with_seed(config, offset), offset)
            for spec, config in zip(study.variants, configs) for offset in range(num_seeds)]
  # First pass: keys only, to name each variant's result directory after the variant.
  unnamed = lambda key, label: f"{study_dir}/?"
  result_names = {}
  for spec, config, offset in seeded:
    key = _plan_variant("", "", config, spec, unnamed).results[-1].key
    result_names.setdefault(key, _label(spec, config, offset))
  directories = _Directories(study_dir, result_names)
  return [_plan_variant(_label(spec, config, offset), spec.description, config, spec,
                        directories) for spec, config, offset in seeded]


def _select(variants: list[VariantPlan], only) -> list[VariantPlan]:
  names = list(dict.fromkeys(variant.name for variant in variants))
  unknown = [name for name in only if name not in names]
  if unknown:
    raise ConfigError(f"--only names unknown variants {unknown}; variants: {names}")
  return [variant for variant in variants if not only or variant.name in only]


def _status_lines(variants: list[VariantPlan], current: Run | None) -> list[str]:
  width = max(len(variant.label) for variant in variants)
  lines = []
  for variant in variants:
    done = sum(run.is_done() for run in variant.runs)
    state = ("done" if done == len(variant.runs) else
             "running" if current in variant.runs else "waiting")
    lines.append(f"  {variant.label:<{width}}  {state:<7}  {done}/{len(variant.runs)} runs")
  return lines


def run(study: ml_collections.ConfigDict, study_dir: str, only=(), report_only: bool = False):
  """Trains the selected variants' unfinished runs in order (each shared run once), then
  writes STUDY_DIR/study.md, study.json and study.png over every variant finished so far.
  Returns the report, or None if a run was preempted (SIGTERM; rerun to resume)."""
  study_dir = paths.resolve(study_dir)
  variants = plan(study, study_dir)
  selected = _select(variants, list(only))
  if not report_only:
    paths.make_directory(study_dir, "--workdir")
    ordered = list({run.key: run for variant in selected for run in variant.runs}.values())
    _log.info("study %s: %d variants, %d runs (%d done)", study_dir, len(selected), len(ordered),
              sum(run.is_done() for run in ordered))
    for run_to_train in ordered:
      if run_to_train.is_done():
        continue
      _log.info("\n".join([f"training {run_to_train.directory}"]
                          + _status_lines(selected, run_to_train)))
      trainer.train(run_to_train.config, run_to_train.directory)
      steps = checkpoint_lib.Checkpointer(run_to_train.directory, read_only=True).steps()
      if run_to_train.end_step not in steps:  # Preempted: the run saved and returned.
        _log.info("study stopped before %s finished; rerun the same command to resume",
                  run_to_train.directory)
        return None
    _log.info("\n".join(["study finished"] + _status_lines(selected, None)))
  if jax.process_index() != 0:  # Every process trains; one writes the report.
    return study_report.rows(variants, study.baseline, study_dir)
  return study_report.write(study_dir, variants, study.baseline)
