"""End-to-end tests of cpt_jax/trainer.py (and anneal.py) through the `cpt-jax` command."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

import run_helpers as helpers
from cpt_jax import metrics_writer
from cpt_jax import trainer
from cpt_jax.config_error import ConfigError


def test_run_writes_records_summary_and_curves(reference_run):
  for name in ("metrics.jsonl", "summary.json", "curves.png", "config.json", "data_splits.json"):
    assert os.path.exists(os.path.join(reference_run, name)), name
  splits = json.load(open(os.path.join(reference_run, "data_splits.json")))
  assert set(splits) == {"code", "prose"}
  from cpt_jax import corpora
  held_out, _ = corpora._documents("prose", corpora.source_config("embedded",
                                                                  corpus="shakespeare"),
                                   "validation")
  assert splits["prose"]["validation_ids"] == held_out and len(held_out) > 10
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(reference_run))
  records = [json.loads(line) for line in open(os.path.join(reference_run, "metrics.jsonl"))]
  train = [r for r in records if "loss" in r]
  assert {"step", "stage", "loss", "learning_rate", "grad_norm", "tokens_per_second",
          "tokens/prose", "tokens/code"} <= set(train[0])
  assert [r["stage"] for r in train[:30]] == ["prose"] * 30
  assert [r["stage"] for r in train[30:]] == ["code"] * 30
  evals = [r for r in records if "eval/prose/loss" in r]
  assert [r["step"] for r in evals] == [0, 10, 20, 30, 40, 50, 60]
  assert all("eval/code/loss" in r for r in evals)
  # Realized replay share in stage 2, from the cumulative token counts.
  stage_one_end, end = train[29], train[-1]
  prose = end["tokens/prose"] - stage_one_end["tokens/prose"]
  code = end["tokens/code"] - stage_one_end["tokens/code"]
  assert stage_one_end["tokens/code"] == 0
  assert abs(prose / (prose + code) - 0.05) < 0.005
  summary = json.load(open(os.path.join(reference_run, "summary.json")))
  assert [stage["name"] for stage in summary["stages"]] == ["prose", "code"]
  assert set(summary["forgetting"]["code"]) == {"prose"}
  assert set(summary["adaptation"]["code"]) == {"code"}
  # The values, recomputed from the eval records at the stage ends (steps 30 and 60).
  at = {r["step"]: r for r in evals}
  assert summary["forgetting"]["code"]["prose"] == pytest.approx(
      at[60]["eval/prose/loss"] - at[30]["eval/prose/loss"], abs=1e-9)
  assert summary["adaptation"]["code"]["code"] == pytest.approx(
      at[30]["eval/code/loss"] - at[60]["eval/code/loss"], abs=1e-9)
  assert summary["stages"][1]["validation_loss"]["code"] == at[60]["eval/code/loss"]


def test_changed_config_is_refused_with_a_diff(reference_run, tmp_path):
  workdir = str(tmp_path / "changed")
  shutil.copytree(reference_run, workdir)
  result = helpers.cli("train", f"--workdir={workdir}", "--config.model.num_layers=3",
                       check=False)
  assert result.returncode == 2
  assert "model.num_layers: 2 -> 3" in result.stderr
  assert "--allow_config_change" in result.stderr


def test_longer_last_stage_is_allowed_with_the_flag(reference_run, tmp_path):
  workdir = str(tmp_path / "longer")
  shutil.copytree(reference_run, workdir)
  helpers.cli("train", f"--workdir={workdir}", "--config.stages[1].steps=35",
              "--allow_config_change")
  assert max(helpers.train_losses(workdir)) == 65


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(reference_run, tmp_path):
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(reference_run, workdir)
  helpers.garble(os.path.join(workdir, "checkpoints", "60", "params"))
  result = helpers.cli("train", f"--workdir={workdir}")
  assert "checkpoint step 60" in result.stdout and "falling back to step 55" in result.stdout
  warnings = [line for line in (result.stdout + result.stderr).splitlines() if "step 60" in line]
  assert len(warnings) == 1 and len(result.stderr.splitlines()) < 20  # Not thousands of lines.
  assert helpers.train_losses(workdir)[60] == helpers.train_losses(reference_run)[60]


def test_new_run_starts_from_another_runs_checkpoint(reference_run, tmp_path):
  workdir = str(tmp_path / "from_checkpoint")
  helpers.cli("train", f"--workdir={workdir}", f"--config.init.from_checkpoint={reference_run}:50",
              "--config.init.step=continue", "--config.init.optimizer_state=keep",
              "--config.stages[0].steps=5", "--config.stages[1].steps=5")
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  reference = [json.loads(line) for line in open(os.path.join(reference_run, "metrics.jsonl"))]
  start = records[0]
  assert start["step"] == 50
  expected = next(r for r in reference if r["step"] == 50 and "eval/prose/loss" in r)
  assert start["eval/prose/loss"] == expected["eval/prose/loss"]  # The same parameters.
  assert max(helpers.train_losses(workdir)) == 60


def test_tokenizer_mismatch_with_the_checkpoint_is_refused(reference_run, tmp_path):
  workdir = str(tmp_path / "tokenizer")
  shutil.copytree(reference_run, workdir)
  result = helpers.cli("train", f"--workdir={workdir}", "--config.data.tokenizer.kind=bpe",
                       "--config.data.tokenizer.vocab_size=300", "--allow_config_change",
                       check=False)
  assert result.returncode == 2
  assert "another tokenizer" in result.stderr


def test_info_of_a_checkpoint_gives_its_stage_tokens_and_validation_loss(reference_run):
  """`cpt-jax info --from=RUN_DIR:STEP`, checked against the run's own records."""
  train, evaluations = metrics_writer.read_records(reference_run)
  train, evaluations = ({r["step"]: r for r in records} for records in (train, evaluations))
  steps = sorted(int(step) for step in os.listdir(os.path.join(reference_run, "checkpoints")))
  assert steps == [50, 55, 60]  # The last three are kept; the run evaluated 50 and 60.
  for step in steps:
    lines = helpers.cli("info", f"--from={reference_run}:{step}", config=None).stdout.splitlines()
    tokens = {name: int(train[step][f"tokens/{name}"]) for name in ("code", "prose")}
    position = (f"step {step}: stage 'code' (2 of 2), {sum(tokens.values()):,} tokens trained "
                f"in this run (code {tokens['code']:,}, prose {tokens['prose']:,})")
    if step in evaluations:
      losses = evaluations[step]
      assert lines[-2:] == [position, f"validation loss at step {step}: "
                            f"code {losses['eval/code/loss']:.4f}, "
                            f"prose {losses['eval/prose/loss']:.4f}"]
    else:
      assert lines[-1] == position


def test_anneal_branches_off_without_touching_the_source(reference_run, tmp_path):
  from cpt_jax import run_directory, run_plan, schedules
  before = sorted(os.listdir(os.path.join(reference_run, "checkpoints")))
  workdir = str(tmp_path / "annealed")
  helpers.cli("anneal", f"--from={reference_run}:55", f"--workdir={workdir}", "--steps=5",
              "--shape=linear", "--config.eval.every=2", config=None)
  assert sorted(os.listdir(os.path.join(reference_run, "checkpoints"))) == before
  records, _ = helpers.train_losses(workdir), None
  assert sorted(records) == [56, 57, 58, 59, 60]
  # The override of the source's config: evaluated at the start and at even global steps.
  from cpt_jax import metrics_writer
  assert [record["step"] for record in metrics_writer.read_records(workdir)[1]] == [
      55, 56, 58, 60]
  source_config = run_directory.source_experiment(reference_run)
  expected = schedules.anneal_from(run_plan.learning_rate_schedule(source_config), 55, 5, 0.0,
                                   "linear")
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))
            if '"learning_rate"' in line]
  for record in logged:
    assert record["learning_rate"] == pytest.approx(float(expected(record["step"] - 1)), rel=1e-5)


def test_a_branch_of_a_stage_that_continues_its_replay_trains_on_that_stages_rows(tmp_path):
  """Stage 2 replays prose from where stage 1 stopped (row 240 of 8-row batches), a quarter
  of every batch. Its anneal branch from step 50 continues that stage's stream, so step 51,
  whose loss comes before its update (the branch's learning rate does not enter), trains on
  the same rows from the same parameters as in the source run."""
  source = str(tmp_path / "source")
  helpers.cli("train", f"--workdir={source}", "--config.stages[1].replay.prose=0.25",
              "--config.stages[1].mixture.code=0.75", "--config.stages[1].replay_position=continue")
  annealed = str(tmp_path / "annealed")
  helpers.cli("anneal", f"--from={source}:50", f"--workdir={annealed}", "--steps=2", config=None)
  assert helpers.train_losses(annealed)[51] == helpers.train_losses(source)[51]
  from cpt_jax import info
  described = info.describe_run(annealed).splitlines()
  assert described[-3:] == [
      f"started from: {source}:50 (optimizer state keep, step continue, data continue)",
      "sources learnt before this run: code, prose",  # Step 50 is in the code stage.
      "rows of each source served before its first stage: prose 240"]  # Stage 1: 30 x 8.


def test_a_diverging_run_never_checkpoints_nan_parameters(tmp_path):
  # Stage 1 trains normally and is checkpointed at steps 5 and 10; stage 2's LR blows the
  # parameters up at its first step, and its checkpoint steps 15 and 20 come after that.
  workdir = str(tmp_path / "diverged")
  result = helpers.cli("train", f"--workdir={workdir}", "--config.stages[0].steps=10",
                       "--config.stages[1].steps=10", "--config.stages[1].schedule.warmup=0",
                       "--config.stages[1].schedule.peak_value=1e30",
                       "--config.stages[1].schedule.end_value=1e30", check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert re.match(r"cpt-jax: error: (loss|grad_norm) is (nan|inf) at step 1[1-5] ", last), last
  assert last.endswith("Checkpoints up to step 10 are intact"), last
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps == [5, 10]
  _, params = helpers.final_params(workdir)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_pmap_checkpoint_continues_in_fsdp_mode(reference_run, tmp_path):
  losses = {}
  for mode in ("pmap", "fsdp"):
    workdir = str(tmp_path / mode)
    shutil.copytree(reference_run, workdir)
    helpers.cli("train", f"--workdir={workdir}", "--config.stages[1].steps=34",
                f"--config.parallel={mode}", "--allow_config_change")
    losses[mode] = [helpers.train_losses(workdir)[step] for step in range(61, 65)]
  np.testing.assert_allclose(losses["fsdp"], losses["pmap"], rtol=1e-4)


def test_records_carry_norms_dense_stage_starts_and_the_asked_profile(reference_run, tmp_path):
  workdir = str(tmp_path / "observed")
  helpers.cli("train", f"--workdir={workdir}", "--config.eval.dense_start=4",
              "--config.eval.dense_every=2", "--config.profile.steps=3:5")
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = sorted(r["step"] for r in records if "eval/prose/loss" in r)
  # Every 10 steps, and every 2 over the first 4 steps of each stage (stage 2 starts at 30).
  assert evals == [0, 2, 4, 10, 20, 30, 32, 34, 40, 50, 60]
  train = [r for r in records if "loss" in r]
  assert all(r["update_norm"] > 0 and r["param_norm"] > 0 for r in train)
  assert "mfu" not in train[0]  # A CPU has no known peak.
  traces = [name for _, _, names in os.walk(os.path.join(workdir, "profile")) for name in names]
  assert any(name.endswith(".xplane.pb") for name in traces), traces
  assert not os.path.exists(os.path.join(reference_run, "profile"))  # Not asked, not written.


def _tiny_config():
  from configs import demo
  config = demo.get_config("smoke")
  config.model.update(model_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, mlp_dim=64,
                      vocab_size=384)
  config.data.update(seq_len=32, global_batch_size=8)
  config.data.tokenizer.kind = "bytes"
  config.stages[0].steps = config.stages[1].steps = 3
  config.log.progress_bar = False
  return config


def test_train_from_python_returns_the_summary(tmp_path):
  import cpt_jax
  config = _tiny_config()
  summary = cpt_jax.train(config, str(tmp_path / "from_python"))
  assert [stage["name"] for stage in summary["stages"]] == ["prose", "code"]
  assert summary == json.load(open(tmp_path / "from_python" / "summary.json"))


def test_ctrl_c_before_the_first_checkpoint_leaves_no_new_run_directory(tmp_path,
                                                                          monkeypatch):
  """Nothing was saved: the directory it created goes (a rerun starts afresh either way);
  one that existed before stays, with what it held."""
  def interrupted(config, workdir, allow_config_change):
    open(os.path.join(workdir, "metrics.jsonl"), "w").close()
    raise KeyboardInterrupt

  monkeypatch.setattr(trainer, "_train_locked", interrupted)
  config = _tiny_config()
  with pytest.raises(KeyboardInterrupt):
    trainer.train(config, str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("kept")
  with pytest.raises(KeyboardInterrupt):
    trainer.train(config, str(tmp_path / "mine"))
  assert (tmp_path / "mine" / "notes.txt").read_text() == "kept"


def test_a_finished_run_continues_on_a_stage_appended_when_new_data_arrives(tmp_path):
  """A stage appended to a finished run's config needs no --allow_config_change (nothing
  trained changes: the stages have schedules of their own), and the run continues to the
  losses of a run configured with all three stages from the start."""
  import cpt_jax
  from cpt_jax import run_plan, schedule_config
  two, three = _tiny_config(), _tiny_config()
  three.stages.append(run_plan.stage(
      "prose_again", 3, {"prose": 0.75}, schedule_config.config_for("constant", value=1e-3),
      replay={"code": 0.25}))
  continued, whole = str(tmp_path / "continued"), str(tmp_path / "whole")
  cpt_jax.train(two, continued)
  summary = cpt_jax.train(three, continued)
  cpt_jax.train(three, whole)
  assert sorted(helpers.train_losses(continued)) == list(range(1, 10))
  assert helpers.train_losses(continued) == helpers.train_losses(whole)
  assert [stage["name"] for stage in summary["stages"]] == ["prose", "code", "prose_again"]
  changed = _tiny_config()  # A stage that has trained is still the run's own.
  changed.stages[1].steps = 4
  with pytest.raises(ConfigError, match=r"stages\[1\].steps: 3 -> 4"):
    cpt_jax.train(changed, continued)


def test_throughput_leaves_out_evaluation_and_checkpoint_writing(tmp_path, monkeypatch):
  """A record's tokens/s (and MFU) is the training's: on a clock that jumps a day in every
  evaluation and save, each record still counts only the ticks its steps took."""
  config = _tiny_config()
  config.stages[0].steps = config.stages[1].steps = 6
  config.eval.every = config.checkpoint.every = 2
  config.log.every = 1
  clock = {"now": 0.0}

  class Clock:
    @staticmethod
    def perf_counter():
      clock["now"] += 1.0  # Every reading is a second later.
      return clock["now"]

  def a_day_later(method):
    def timed(*args, **kwargs):
      clock["now"] += 86_400.0
      return method(*args, **kwargs)
    return timed

  monkeypatch.setattr(trainer, "time", Clock)
  monkeypatch.setattr(trainer._Run, "evaluate", a_day_later(trainer._Run.evaluate))
  monkeypatch.setattr(trainer._Run, "save", a_day_later(trainer._Run.save))
  trainer.train(config, str(tmp_path / "run"))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  speeds = [r["tokens_per_second"] for r in records if "loss" in r]
  tokens_per_step = 8 * 32
  assert len(speeds) == 12
  # A window spans one step: at most a few one-second readings, never a day.
  assert min(speeds) >= tokens_per_step / 5, speeds


def test_throughput_leaves_out_the_compilation_of_the_step(tmp_path, monkeypatch):
  """The first step of a run compiles it: on a clock where that step takes a day, the first
  record (three steps later) counts only the steps after it."""
  config = _tiny_config()
  config.stages[0].steps = config.stages[1].steps = 6
  config.log.every = 3
  config.eval.every = config.checkpoint.every = 100  # Stage ends only.
  clock = {"now": 0.0}

  class Clock:
    @staticmethod
    def perf_counter():
      clock["now"] += 1.0
      return clock["now"]

  make_executor = trainer.parallel.make_executor

  def compiling_executor(*args, **kwargs):
    executor, calls = make_executor(*args, **kwargs), []
    train_step = executor.train_step

    def step(state, batch):
      if not calls:
        clock["now"] += 86_400.0  # Compilation.
      calls.append(None)
      return train_step(state, batch)

    executor.train_step = step
    return executor

  monkeypatch.setattr(trainer, "time", Clock)
  monkeypatch.setattr(trainer.parallel, "make_executor", compiling_executor)
  trainer.train(config, str(tmp_path / "run"))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  speeds = {r["step"]: r["tokens_per_second"] for r in records if "loss" in r}
  assert list(speeds) == [3, 6, 9, 12]
  assert min(speeds.values()) >= 8 * 32 / 5, speeds  # Seconds a step, never a day.


def test_each_stage_stops_its_read_ahead_thread(tmp_path, monkeypatch):
  """A stage's data iterator is closed when the stage ends, so its read-ahead thread (and a
  bucket cache's readers) do not outlive it; older Grain releases never stop them otherwise."""
  from cpt_jax import input_pipeline
  config = _tiny_config()
  config.data.prefetch_batches = 2
  iterators, stage_dataset = [], input_pipeline.stage_dataset

  class Recorded:
    def __init__(self, dataset):
      self.dataset = dataset

    def __iter__(self):
      iterators.append(iter(self.dataset))
      return iterators[-1]

  monkeypatch.setattr(input_pipeline, "stage_dataset",
                      lambda *args, **kwargs: Recorded(stage_dataset(*args, **kwargs)))
  trainer.train(config, str(tmp_path / "run"))
  assert len(iterators) == 2
  for iterator in iterators:
    with pytest.raises(ValueError, match="closed iterator"):
      next(iterator)
