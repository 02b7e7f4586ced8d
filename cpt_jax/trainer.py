"""The training loop: stages in order, evaluation, checkpoints, records, preemption.

Owns the side effects around the pure step: building the run's state (fresh, resumed from
this run directory, or started from another run's checkpoint), feeding batches, fetching
metrics one step late and only at log intervals (so the host never waits for the device),
and the stage transitions (new data mixture; optimizer moments reset or kept).

Exactness: a checkpoint at step s holds the state after s updates and the data iterator
positioned at batch s. A stage's end is checkpointed before the next stage's transition, and
the transition runs whenever a stage starts, fresh or resumed, so a resumed run repeats the
uninterrupted run's computation exactly.
"""

from __future__ import annotations

import logging
import contextlib
import signal
import time

from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm.auto

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import device_peaks
from cpt_jax import distributed
from cpt_jax import evaluation
from cpt_jax import experiment_config
from cpt_jax import input_pipeline
from cpt_jax import metrics_writer
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import packing
from cpt_jax import parallel
from cpt_jax import paths
from cpt_jax import profiling
from cpt_jax import report
from cpt_jax import resume
from cpt_jax import run_directory
from cpt_jax import run_lock
from cpt_jax import run_plan
from cpt_jax import schedule_config
from cpt_jax import train_step as train_step_lib
from cpt_jax.config_error import ConfigError

_log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
  pass


class Interrupted(KeyboardInterrupt):
  """Ctrl-C ended the run after it saved the current step."""


class _Preemption:
  """SIGTERM (how TPU VMs and schedulers announce preemption), SIGHUP (a dropped terminal or
  ssh session) and Ctrl-C (SIGINT) end the run after a checkpoint of the current step.

  One process: a flag the loop checks every step; a second signal acts at once. A SIGHUP that
  is ignored (`nohup`, how tpu/tpu.sh detaches runs) stays ignored. Several:
  JAX's preemption sync manager (which catches SIGTERM itself) names one step at which every
  process saves together, since a save is collective and processes receive the signal at
  different steps."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

  def __init__(self):
    self.received = None  # The signal that asked the run to stop.
    self._synced = jax.process_count() > 1
    self._previous = {}
    if not self._synced:
      for signum in self._SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
          self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    self.received = signum
    signal.signal(signum, self._previous[signum])  # A second signal acts at once.

  def check(self, step: int) -> bool:
    """Called by every process at every step, with the same steps."""
    if self._synced and multihost_utils.reached_preemption_sync_point(step):
      self.received = signal.SIGTERM
    return self.received is not None

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _metadata(step, stage_plan, tokenizer, step_offset, config,
              start: resume.StartPoint) -> dict:
  learnt = start.learnt_before_run
  return {"step": step, "stage": stage_plan.index, "stage_name": stage_plan.name,
          "step_offset": step_offset, "tokenizer_fingerprint": tokenizer.fingerprint,
          "seed": config.seed, "process_count": jax.process_count(),
          "config": run_directory.config_as_json(config),
          resume.POSITIONS_KEY: start.positions_before_run,
          resume.LEARNT_KEY: None if learnt is None else sorted(learnt)}


def _check_tokenizer(metadata: dict, tokenizer, where: str) -> None:
  if metadata.get("tokenizer_fingerprint") != tokenizer.fingerprint:
    raise ConfigError(f"{where} was trained with another tokenizer than this run's "
                      f"({metadata.get('tokenizer_fingerprint', '?')[:12]} vs "
                      f"{tokenizer.fingerprint[:12]}); continual pre-training must keep the "
                      "tokenizer")


def _check_resumed_plan(config, workdir: str, metadata: dict, allow_config_change: bool) -> None:
  """Refuses a config that changes what the run has trained (without the flag), or whose
  stages no longer hold the checkpoint's step where it was (even with it)."""
  plans = run_plan.plan(config, start_step=metadata["step_offset"])
  step, stage_now = metadata["step"], run_plan.stage_at(plans, metadata["step"])
  # A stage that starts at the checkpoint has trained nothing yet: it may be new (a finished
  # run continued on new data) or changed. A run-wide schedule spans all stages.
  untouched = step == stage_now.start_step and config.get("schedule") is None
  last_trained = stage_now.index - 1 if untouched else stage_now.index
  run_directory.check_config(workdir, config, last_trained, allow_config_change)
  if step > plans[-1].end_step:  # The summary would read its records as a shorter run's.
    raise ConfigError(
        f"--workdir={workdir} is at step {step}, past this config's last step "
        f"{plans[-1].end_step} (the stages' steps); a run cannot end before where it is: "
        f"start a new run from one of its checkpoints (--config.init.from_checkpoint="
        f"{workdir}:STEP) instead")
  # Mid-stage, the data iterator's state is that stage's (a stage's first step starts it
  # afresh), so the step must stay in the stage it was saved in.
  saved_stage = metadata.get("stage", stage_now.index)
  if saved_stage != stage_now.index and step != stage_now.start_step:
    raise ConfigError(
        f"--workdir={workdir} is at step {step} of stage {saved_stage} "
        f"({metadata.get('stage_name')!r}), which this config's stages' steps put in stage "
        f"{stage_now.index} ({stage_now.name!r}); keep the step in its stage, or start a new "
        f"run from the checkpoint (--config.init.from_checkpoint={workdir}:STEP)")


class _Run:
  """One run's mutable state: the train state, the step, counters, and where output goes."""

  def __init__(self, config, workdir, allow_config_change):
    self.config, self.workdir = config, workdir
    self.shard = input_pipeline.ProcessShard(jax.process_index(), jax.process_count())
    self.lead = self.shard.index == 0
    model = model_config.from_config_dict(config.model)
    self.optimizer = optimizer_lib.make(config.optimizer)
    graphdef, state = train_step_lib.init_state(model, self.optimizer, config.seed)
    abstract = checkpoint_lib.abstract_like(state, parallel.state_shardings(config, state))

    self.checkpointer = checkpoint_lib.Checkpointer(workdir, config.checkpoint)
    latest = self.checkpointer.latest_restorable()
    if latest is not None:  # Refuse a changed experiment before touching state.
      # Every process reads and checks: Orbax reads are collective, and all must stop alike.
      metadata = self.checkpointer.read_metadata(latest)
      _check_resumed_plan(config, workdir, metadata, allow_config_change)
    self.start = resume.start_point(config, self.checkpointer, abstract, self.optimizer,
                                    self.shard.count)
    self.step, self.step_offset = self.start.step, self.start.step_offset
    resumed = self.start.source == "resume"
    if resumed and self.lead:
      _log.info("resuming %s from step %d", workdir, self.step)
    self.plans = run_plan.plan(config, start_step=self.step_offset)
    init_dir = ""
    if self.start.source == "init":
      init_dir = checkpoint_lib.parse_reference(config.init.from_checkpoint)[0]
    self.tokenizer = run_directory.tokenizer_for_run(config, workdir, inherit_from=init_dir,
                                                     reuse_saved=resumed)
    if self.tokenizer.vocab_size > model.vocab_size:
      raise ConfigError(f"model.vocab_size={model.vocab_size}: smaller than the tokenizer's "
                        f"vocabulary of {self.tokenizer.vocab_size}")
    if self.start.metadata is not None:
      where = (f"{workdir} step {self.step}" if resumed else
               f"init.from_checkpoint={config.init.from_checkpoint!r}")
      _check_tokenizer(self.start.metadata, self.tokenizer, where)

    self.names = input_pipeline.source_names(config.data)
    self.initial_evaluation = not resumed
    if self.start.arrays is not None:
      state = train_step_lib.TrainState(jnp.asarray(self.step, jnp.int32),
                                        self.start.arrays["params"],
                                        self.start.arrays["opt_state"])
    schedule = run_plan.learning_rate_schedule(config, step_offset=self.step_offset)
    self.executor = parallel.make_executor(config, graphdef, self.optimizer, schedule)
    self.state = self.executor.place(state)
    self.eval_batches = {
        name: input_pipeline.validation_batches(name, config.data, self.tokenizer,
                                                config.eval.max_batches, self.shard,
                                                document_masking=config.eval.document_masking)
        for name in experiment_config.evaluation_sources(config)}
    self.writer = metrics_writer.MetricsWriter(workdir, enabled=self.lead, fresh=not resumed,
                                               wandb=config.log.wandb, run_config=config)
    self.profiler = profiling.StepProfiler(
        config.profile.steps, workdir, (self.plans[0].start_step, self.plans[-1].end_step))
    self.flops_per_token = model_lib.training_flops_per_token(model, config.data.seq_len)
    peak = device_peaks.peak_flops_per_device()
    self.peak_flops = peak * jax.device_count() if peak else None  # None: no MFU (CPUs).
    self.identity_stored = False  # config.json and the tokenizer go with the first checkpoint.

  def evaluate(self, stage_plan) -> None:
    losses = evaluation.evaluate(self.executor.eval_step, self.state.params, self.eval_batches)
    self.writer.write({"step": self.step, "stage": stage_plan.name,
                       **{f"eval/{name}/loss": loss for name, loss in losses.items()}})

  def save(self, stage_plan, data_iterator) -> None:
    metadata = _metadata(self.step, stage_plan, self.tokenizer, self.step_offset, self.config,
                         self.start)
    self.checkpointer.save(self.step, self.executor.for_checkpoint(self.state), metadata,
                           data_iterator)
    if self.lead and not self.identity_stored:
      run_directory.store_identity(self.workdir, self.config, self.tokenizer)
    self.identity_stored = True
    self.writer.flush()  # Records up to a checkpoint are never lost (object stores).

  def _log(self, pending, stage_plan, bar) -> None:
    """Writes a train record from metrics fetched now, one step after they were computed."""
    step, metrics, tokens = pending
    metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
    for name in ("loss", "grad_norm"):  # A non-finite gradient makes the new params NaN.
      if not np.isfinite(metrics[name]):
        saved = self.checkpointer.steps()
        raise TrainingDiverged(
            f"{name} is {metrics[name]} at step {step} (stage {stage_plan.name!r}); stopping. "
            + (f"Checkpoints up to step {saved[-1]} are intact" if saved else
               "No checkpoint was saved"))
    now = time.perf_counter()
    previous_tokens, previous_clock = self._last_log
    tokens_per_second = (sum(tokens.values()) - previous_tokens) / max(now - previous_clock, 1e-9)
    self._last_log = (sum(tokens.values()), now)
    record = {"step": step, "stage": stage_plan.name,
              **{name: metrics[name] for name in ("loss", "learning_rate", "grad_norm",
                                                  "update_norm", "param_norm")},
              "tokens_per_second": tokens_per_second,
              **{f"tokens/{name}": count for name, count in tokens.items()}}
    if self.peak_flops:
      record["mfu"] = tokens_per_second * self.flops_per_token / self.peak_flops
    self.writer.write(record)
    bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['learning_rate']:.2e}",
                    tok_s=f"{tokens_per_second:,.0f}", refresh=False)

  def _tokens(self, step: int) -> dict[str, float]:
    """Target tokens of each source trained on up to `step`, all processes together."""
    rows = input_pipeline.rows_served(self.config.data, self.plans, step)
    return {name: float(count * self.config.data.seq_len) for name, count in rows.items()}

  def _dense_evaluation(self, stage_plan, dense_steps: int) -> bool:
    """Whether the step lies in the densely evaluated start (`dense_steps`) of its stage."""
    into = self.step - stage_plan.start_step
    return into <= dense_steps and into % self.config.eval.dense_every == 0

  def run_stage(self, stage_plan, bar, preemption) -> None:
    data_iterator = iter(input_pipeline.stage_dataset(
        self.config.data, stage_plan, self.tokenizer, self.shard,
        input_pipeline.stream_positions(self.config.data, self.plans, stage_plan.index,
                                        self.start.positions_before_run)))
    try:
      self._train_stage(stage_plan, data_iterator, bar, preemption)
    finally:  # Stops a read-ahead thread (data.prefetch_batches, a bucket's token cache).
      if hasattr(data_iterator, "close"):
        data_iterator.close()

  def _train_stage(self, stage_plan, data_iterator, bar, preemption) -> None:
    config = self.config
    resume.position_data(self.start, stage_plan.start_step, self.step, data_iterator)
    if (self.step == stage_plan.start_step and stage_plan.index > 0
        and stage_plan.optimizer_state == "reset"):  # The stage transition.
      self.state = self.state.replace(
          opt_state=self.executor.place(self.optimizer.init(self.state.params)))
    self._last_log = (sum(self._tokens(self.step).values()), time.perf_counter())
    dense_steps = schedule_config.duration_steps(config.eval.dense_start, stage_plan.steps,
                                                 "eval.dense_start")
    pending, first_step = None, self.step + 1
    while self.step < stage_plan.end_step:
      if preemption.check(self.step):
        if pending is not None:
          self._log(pending, stage_plan, bar)
        self.save(stage_plan, data_iterator)
        return
      rows = next(data_iterator)
      self.profiler.before_step(self.step)
      self.state, metrics = self.executor.train_step(self.state, packing.to_model_batch(rows))
      self.step += 1
      self.profiler.after_step(self.step, self.state)
      self.checkpointer.check_background_save()  # A lost save stops the run now.
      if pending is not None:
        self._log(pending, stage_plan, bar)
        pending = None
      stage_end = self.step == stage_plan.end_step
      evaluate = (self.step % config.eval.every == 0 or stage_end
                  or self._dense_evaluation(stage_plan, dense_steps))
      save = self.step % config.checkpoint.every == 0 or stage_end
      if self.step % config.log.every == 0 or evaluate or save:
        pending = (self.step, metrics, self._tokens(self.step))
      elif self.step == first_step:  # It compiled the step: no part of throughput (or MFU).
        jax.block_until_ready(metrics)
        self._last_log = (sum(self._tokens(self.step).values()), time.perf_counter())
      if evaluate or save:
        self._log(pending, stage_plan, bar)  # Checks the loss: never checkpoint divergence.
        pending = None
      if evaluate:
        self.evaluate(stage_plan)
      if save:
        self.save(stage_plan, data_iterator)
      if evaluate or save:  # Throughput (and MFU) is the training's: its clock restarts here.
        self._last_log = (self._last_log[0], time.perf_counter())
      bar.update(1)

  def close(self) -> None:
    self.profiler.close()
    self.checkpointer.wait()
    self.writer.close()


def train(config: ml_collections.ConfigDict, workdir: str, *,
          allow_config_change: bool = False) -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns the run's summary.

  Local paths (relative ones, `~`) are resolved first. Process 0 holds the run directory's
  lock for the whole run. SIGTERM saves the current step and returns {}; Ctrl-C saves it and
  raises `Interrupted`."""
  experiment_config.require_experiment(config)
  config, workdir = paths.resolve_config(config), paths.resolve(workdir)
  config = run_directory.with_source_model(config)
  experiment_config.validate(config)
  parallel.check_batch_split(config)
  run_directory.check_run_directory(workdir)
  run_dir = epath.Path(workdir)
  created = not run_dir.exists()
  paths.make_directory(workdir, "--workdir")
  lock = run_lock.RunLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  try:
    distributed.check_shared_directory(workdir, "--workdir")
    with lock:
      return _train_locked(config, workdir, allow_config_change)
  # Bad input, or Ctrl-C before anything was saved: a new run directory is removed again.
  except (ConfigError, KeyboardInterrupt):
    if created and jax.process_index() == 0 and not any(
        (run_dir / checkpoint_lib.directory("")).glob("[0-9]*")):
      run_dir.rmtree()
    raise


def _train_locked(config, workdir, allow_config_change) -> dict:
  run = _Run(config, workdir, allow_config_change)
  preemption = _Preemption()
  bar = tqdm.auto.tqdm(total=run.plans[-1].end_step, initial=run.step, dynamic_ncols=True,
                  desc="train", disable=not (run.lead and config.log.progress_bar))
  try:
    if run.initial_evaluation:
      run.evaluate(run.plans[0])  # The starting point of every curve.
    for stage_plan in run.plans:
      if run.step < stage_plan.end_step and not preemption.received:
        run.run_stage(stage_plan, bar, preemption)
  finally:
    bar.close()
    preemption.restore()
    run.close()
  if preemption.received == signal.SIGINT:
    raise Interrupted(f"interrupted (Ctrl-C): saved step {run.step}; rerun the same command "
                      "to resume")
  if preemption.received:
    _log.info("preempted (%s): saved step %d; rerun the same command to resume",
              signal.Signals(preemption.received).name, run.step)
    return {}
  run.checkpointer.close()
  if not run.lead:
    return {}
  return report.write(workdir, run.plans, run_plan.tokens_per_step(config),
                      starts_from_checkpoint=bool(config.init.from_checkpoint),
                      learnt_before=run.start.learnt_before_run)
