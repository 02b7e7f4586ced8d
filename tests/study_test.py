"""Tests study.py and study_report.py: the grid as runs, shared runs trained once, the table
recomputed from the runs' records, resuming a stopped study, and bad study configs."""

import json
import os
import re
import shutil

import pytest

import run_helpers as helpers
from configs import study_demo
from cpt_jax import corpora
from cpt_jax import metrics_writer
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import study
from cpt_jax import trainer
from cpt_jax.config_error import ConfigError


def _smoke_config():
  config = study_demo.get_config("smoke")
  config.base.log.progress_bar = False
  return config


def _final_eval(run_dir):
  _, evals = metrics_writer.read_records(run_dir)
  last = evals[-1]
  return {key.split("/")[1]: value for key, value in last.items() if key.startswith("eval/")}


def _tokens(run_dir):
  config = json.load(open(os.path.join(run_dir, "config.json")))
  steps = sum(stage["steps"] for stage in config["stages"])
  return steps * config["data"]["global_batch_size"] * config["data"]["seq_len"]


def test_shared_first_stage_is_one_run_and_every_variant_has_a_row(smoke_study):
  study_dir, trained = smoke_study
  report = json.load(open(os.path.join(study_dir, "study.json")))
  names = [row["variant"] for row in report["variants"]]
  assert names == ["replay5", "replay0", "replay25", "no_rewarm", "infinite", "union"]
  assert all(row["status"] == "done" for row in report["variants"])
  # One cosine stage 1 for four variants, four stage 2s; the infinite variant's two stages
  # and two anneal branches; the union run: 10 runs, none trained twice.
  assert len(trained) == len(set(trained)) == 10
  first_stages = {row["runs"][0] for row in report["variants"][:4]}
  assert len(first_stages) == 1 and first_stages.pop().startswith("stages/0-prose-")
  for name in ("replay5", "replay0", "replay25", "no_rewarm", "union"):
    assert os.path.join(study_dir, name) in trained
  assert os.path.isfile(os.path.join(study_dir, "study.png"))


def test_every_number_in_the_table_is_recomputed_from_the_runs_records(smoke_study):
  study_dir, _ = smoke_study
  report = json.load(open(os.path.join(study_dir, "study.json")))
  rows = {row["variant"]: row for row in report["variants"]}
  markdown = open(os.path.join(study_dir, "study.md")).read()
  union_final = _final_eval(os.path.join(study_dir, rows["union"]["stage_results"][-1]))
  union_average = sum(union_final.values()) / len(union_final)
  union_tokens = _tokens(os.path.join(study_dir, "union"))
  for name, row in rows.items():
    results = [os.path.join(study_dir, path) for path in row["stage_results"]]
    final = _final_eval(results[-1])
    assert row["validation_loss"] == final
    average = sum(final.values()) / len(final)
    assert row["average_loss"] == pytest.approx(average, abs=1e-12)
    assert row["gap_to_baseline_pct"] == pytest.approx(100 * (average / union_average - 1))
    if len(results) > 1:
      before = _final_eval(results[-2])
      assert row["forgetting"] == {"prose": pytest.approx(final["prose"] - before["prose"])}
      assert row["adaptation"] == {"code": pytest.approx(before["code"] - final["code"])}
    else:
      assert "forgetting" not in row
    # Tokens along the path to the final model; the update is everything after stage 1.
    run_tokens = {path: _tokens(os.path.join(study_dir, path)) for path in row["runs"]}
    first_stage = {path for path in row["runs"] if path.startswith("stages/0-")}
    update = [path for path in row["runs"] if path not in first_stage] if len(results) > 1 \
        else row["runs"]
    assert row["update_tokens"] == sum(run_tokens[path] for path in update)
    assert row["update_flops_vs_baseline"] == pytest.approx(row["update_tokens"] / union_tokens)
    if name != "infinite":  # No anneal branches: the path to the model is every run.
      assert row["tokens"] == sum(run_tokens.values())
    else:  # Stage 1, its (measurement-only) anneal, stage 2, the final anneal.
      assert row["tokens"] == sum(run_tokens.values()) - run_tokens[row["runs"][1]]
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1:4] == [f"{final['code']:.4f}", f"{final['prose']:.4f}", f"{average:.4f}"]
    assert cells[9] == f"{row['gap_to_baseline_pct']:+.2f}%"
  # Replay protects the old data: more replay, less forgetting of prose (same stage 1).
  assert rows["replay25"]["forgetting"]["prose"] < rows["replay0"]["forgetting"]["prose"]


def test_the_study_notebook_reads_the_finished_study(smoke_study, monkeypatch):
  monkeypatch.setenv("CPT_JAX_STUDY_DIR", smoke_study[0])
  outputs = helpers.execute_notebook(helpers.STUDY_NOTEBOOK)
  text = "".join(output.get("text", "") for output in outputs)
  assert "replay25" in text and "gap to union" in text  # The printed comparison.


def test_report_only_rewrites_the_table_without_training(smoke_study, monkeypatch):
  study_dir, _ = smoke_study
  before = open(os.path.join(study_dir, "study.json")).read()
  os.remove(os.path.join(study_dir, "study.md"))
  monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: pytest.fail("trained"))
  result = helpers.cli("study", f"--workdir={study_dir}", "--report",
                       config=helpers.STUDY_DEMO_SMOKE, small=False)
  assert "| replay5 |" in result.stdout
  assert open(os.path.join(study_dir, "study.json")).read() == before


def test_a_report_before_any_variant_finished_lists_them_unfinished_and_draws_nothing(
    tmp_path, monkeypatch):
  study_dir = str(tmp_path / "study")
  monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: pytest.fail("trained"))
  result = helpers.cli("study", f"--workdir={study_dir}", "--report",
                       config=helpers.STUDY_DEMO_SMOKE, small=False)
  assert "| replay5 | unfinished |" in result.stdout
  assert result.stdout.rstrip().endswith(f"wrote {study_dir}/study.md, study.json")
  assert sorted(os.listdir(study_dir)) == ["study.json", "study.md"]


def test_a_stopped_study_resumes_to_the_same_table(smoke_study, tmp_path):
  """Stopped (as by SIGTERM) in the middle of replay5's stage 2, then rerun: the runs resume
  and the rows equal those of the study that ran straight through."""
  study_dir, _ = smoke_study
  stopped = str(tmp_path / "study")
  args = ("study", f"--workdir={stopped}", "--only=replay5,union",
          "--config.base.log.progress_bar=false")
  with helpers.sigterm_at_step(9):
    helpers.cli(*args, config=helpers.STUDY_DEMO_SMOKE, small=False)
  assert not os.path.exists(os.path.join(stopped, "study.json"))
  assert os.path.isdir(os.path.join(stopped, "replay5", "checkpoints", "9"))
  helpers.cli(*args, config=helpers.STUDY_DEMO_SMOKE, small=False)
  expected = {row["variant"]: row for row in
              json.load(open(os.path.join(study_dir, "study.json")))["variants"]}
  for row in json.load(open(os.path.join(stopped, "study.json")))["variants"]:
    if row["variant"] in ("replay5", "union"):
      assert row == expected[row["variant"]]
    else:  # Not selected: listed, not run.
      assert row["status"] == "unfinished"


def test_more_seeds_train_only_the_new_seeds_runs_and_the_table_gives_their_spread(
    smoke_study, tmp_path, monkeypatch):
  """num_seeds=2 on a finished study: each selected variant's second seed (model and data
  seeds + 1) is trained, and its row is the mean and standard deviation of its seeds', each
  compared with the baseline's run of the same seed."""
  finished, _ = smoke_study
  study_dir = str(tmp_path / "study")
  shutil.copytree(finished, study_dir)
  trained, real_train = [], trainer.train
  monkeypatch.setattr(trainer, "train", lambda config, workdir, **kwargs: (
      trained.append(workdir), real_train(config, workdir, **kwargs))[1])
  from cpt_jax import plots
  drawn = []
  monkeypatch.setattr(plots, "plot_study", lambda curves, forgetting, out_path: drawn.append(
      (curves, forgetting)))
  helpers.cli("study", f"--workdir={study_dir}", "--only=replay5,union",
              "--config.num_seeds=2", "--config.base.log.progress_bar=false",
              config=helpers.STUDY_DEMO_SMOKE, small=False)
  # The shared stage 1, replay5's stage 2 and the union run, for seed 1 alone.
  assert len(trained) == 3 and trained[0].startswith(os.path.join(study_dir, "stages", "0-prose"))
  assert trained[1:] == [os.path.join(study_dir, "replay5.seed1"),
                         os.path.join(study_dir, "union.seed1")]
  stored = json.load(open(os.path.join(study_dir, "replay5.seed1", "config.json")))
  assert (stored["seed"], stored["data"]["shuffle_seed"]) == (1, 1)

  single = {row["variant"]: row for row in
            json.load(open(os.path.join(finished, "study.json")))["variants"]}
  rows = {row["variant"]: row for row in
          json.load(open(os.path.join(study_dir, "study.json")))["variants"]}
  assert rows["replay0"]["status"] == "unfinished"  # Its second seed was not selected.
  averages = {}
  for name in ("replay5", "union"):
    row = rows[name]
    assert row["status"] == "done" and row["seeds"] == [0, 1]
    assert row["per_seed"][0] == single[name]  # The first seed is the single-seed study's.
    final = _final_eval(os.path.join(study_dir, f"{name}.seed1"))
    averages[name] = [single[name]["average_loss"], sum(final.values()) / len(final)]
    assert row["per_seed"][1]["average_loss"] == pytest.approx(averages[name][1], abs=1e-12)
    assert averages[name][0] != averages[name][1]
    assert row["average_loss"] == pytest.approx(sum(averages[name]) / 2, abs=1e-12)
    assert row["std"]["average_loss"] == pytest.approx(
        abs(averages[name][0] - averages[name][1]) / 2 ** 0.5, abs=1e-12)
  gaps = [100 * (averages["replay5"][seed] / averages["union"][seed] - 1) for seed in (0, 1)]
  assert rows["replay5"]["gap_to_baseline_pct"] == pytest.approx(sum(gaps) / 2, abs=1e-9)
  assert rows["replay5"]["std"]["gap_to_baseline_pct"] == pytest.approx(
      abs(gaps[0] - gaps[1]) / 2 ** 0.5, abs=1e-9)
  # The figure: each step's mean and spread over the seeds' evaluations, as in the table.
  curves, forgetting = drawn[-1]
  assert set(curves) == {"replay5", "union"}
  _, seed0 = metrics_writer.read_records(os.path.join(study_dir, "replay5"))
  _, seed1 = metrics_writer.read_records(os.path.join(study_dir, "replay5.seed1"))
  seed0, seed1 = ({r["step"]: r["eval/prose/loss"] for r in records} for records in (seed0, seed1))
  replay5 = curves["replay5"]["prose"]
  assert [step for step, _, _ in replay5][-len(seed1):] == sorted(seed1)
  for step, mean, spread in replay5[-len(seed1):]:
    assert mean == pytest.approx((seed0[step] + seed1[step]) / 2, abs=1e-12)
    assert spread == pytest.approx(abs(seed0[step] - seed1[step]) / 2 ** 0.5, abs=1e-12)
  assert forgetting["replay5"] == (0.05, rows["replay5"]["average_forgetting"],
                                   rows["replay5"]["std"]["average_forgetting"])
  markdown = open(os.path.join(study_dir, "study.md")).read()
  assert "Means over 2 seeds" in markdown
  replay5 = next(line for line in markdown.splitlines() if line.startswith("| replay5 |"))
  assert f"{rows['replay5']['average_loss']:.4f} ± {rows['replay5']['std']['average_loss']:.4f}" \
      in replay5 and f"± {rows['replay5']['std']['gap_to_baseline_pct']:.2f}%" in replay5


def test_a_seed_without_its_baselines_run_leaves_the_gap_out_of_the_mean():
  """Every seed of replay5 is done but the baseline's second seed is not: the row has the
  means and spreads it can have, and no gap (rather than the first seed's alone)."""
  from cpt_jax import study_report
  seeds = [{"variant": "replay5", "description": "", "replay": 0.05, "seed": seed,
            "status": "done", "validation_loss": {"code": 4.0 + seed, "prose": 5.0},
            "average_loss": 4.5 + seed / 2, "tokens": 10, "update_tokens": 5, "flops": 1e3,
            "update_flops": 5e2} for seed in (0, 1)]
  seeds[0].update(gap_to_baseline_pct=10.0, update_flops_vs_baseline=0.5)
  row = study_report._across_seeds(seeds)
  assert row["status"] == "done" and row["seeds"] == [0, 1]
  assert row["validation_loss"] == {"code": 4.5, "prose": 5.0}
  assert row["average_loss"] == 4.75
  assert row["std"] == {"average_loss": pytest.approx(0.5 ** 0.5 / 2)}  # Sample deviation.
  assert "gap_to_baseline_pct" not in row and "update_flops_vs_baseline" not in row
  line = study_report.markdown([row], "union", "s").splitlines()[-1]
  assert line.startswith("| replay5 | 4.5000 | 5.0000 | 4.7500 ± 0.3536 |")
  assert line.endswith("| 10 | 1e+03 | — | — | 5% |")  # Neither the update's share nor the gap.


def test_info_of_a_study_lists_its_runs_and_counts_each_shared_run_once(smoke_study, tmp_path):
  study_dir, trained = smoke_study
  config = os.path.join(helpers.ROOT, "configs", "study_demo.py") + ":smoke"
  lines = helpers.cli("info", f"--workdir={study_dir}", config=config,
                      small=False).stdout.splitlines()
  steps = sum(_tokens(run) for run in trained) // (8 * 32)  # :smoke's batch of 8 x 32.
  assert lines[0].startswith(f"study: 6 variants x 1 seed, baseline 'union': 10 runs, "
                             f"{steps:,} steps, {steps * 8 * 32:,} tokens, ")
  assert lines[0].endswith(f"; 10 of 10 runs done in {study_dir}")
  rows = json.load(open(os.path.join(study_dir, "study.json")))["variants"]
  for row in rows:  # Each variant's runs, as the report names them.
    index = lines.index(next(line for line in lines if line.startswith(f"  {row['variant']}:")))
    assert lines[index].endswith(f"; {len(row['runs'])}/{len(row['runs'])} done")
    assert lines[index + 1].endswith(": " + ", ".join(
        run + (" (shared by 4 variants)" if run.startswith("stages/0-prose") and
               row["variant"] != "infinite" else "") for run in row["runs"]))
  from_run = helpers.cli("info", f"--from={study_dir}", config=None, check=False)
  assert (f"(runs inside it: infinite, no_rewarm, replay0, replay25, replay5, ...); `cpt-jax "
          f"info --config=STUDY_CONFIG --workdir={study_dir}` describes the study") in (
              from_run.stderr)
  before = helpers.cli("info", f"--workdir={tmp_path}", config=config, small=False).stdout
  assert before.splitlines()[0].endswith(f"; 0 of 10 runs done in {tmp_path}")
  assert not os.listdir(tmp_path)  # Describing a study creates nothing.


def test_a_studys_learning_rates_are_those_its_runs_trained_at(smoke_study, tmp_path):
  """`study.learning_rates` (plot-schedule's lines) for every run of every variant: a train
  record at step s holds the rate of the update that made it, the schedule's at s - 1."""
  study_dir, _ = smoke_study
  compared = 0
  for variant in study.plan(_smoke_config(), study_dir):
    for run, (steps, rates, branch) in zip(variant.runs, study.learning_rates(variant)):
      assert branch == (run not in variant.chain)
      assert (steps[0], steps[-1]) == (run.start_step, run.end_step)
      for record in metrics_writer.read_records(run.directory)[0]:
        assert record["learning_rate"] == pytest.approx(
            float(rates[record["step"] - 1 - run.start_step]), rel=1e-6)
        compared += 1
  # Every step of every variant's runs: four of 2 x 6 steps, infinite's two stages and two
  # 1-step anneals, union's 12.
  assert compared == 4 * 12 + (6 + 1 + 6 + 1) + 12
  out = tmp_path / "study_lr.png"
  config = os.path.join(helpers.ROOT, "configs", "study_demo.py") + ":smoke"
  assert helpers.cli("plot-schedule", f"--out={out}", config=config,
                     small=False).stdout == f"wrote {out}\n"
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_of_an_imported_model_measures_each_variant_from_that_model(tmp_path):
  """configs/study_hf_continue.py on a tiny GPT-NeoX: one run per variant from the import,
  each variant's forgetting and adaptation taken from the imported model's own evaluation."""
  helpers.tiny_hf_gpt_neox(tmp_path / "hf")
  helpers.cli("import-hf", f"--from={tmp_path}/hf", f"--workdir={tmp_path}/imported",
              config=None)
  study_dir = str(tmp_path / "study")
  helpers.cli("study", f"--workdir={study_dir}",
              f"--config.base.init.from_checkpoint={tmp_path}/imported",
              "--config.base.log.progress_bar=false",
              config=os.path.join(helpers.ROOT, "configs", "study_hf_continue.py") + ":smoke",
              small=False)
  rows = {row["variant"]: row for row in
          json.load(open(os.path.join(study_dir, "study.json")))["variants"]}
  assert list(rows) == ["replay5", "replay0", "replay25", "no_rewarm"]
  starts = []
  for name, row in rows.items():
    assert row["status"] == "done" and row["runs"] == [name]
    _, evaluations = metrics_writer.read_records(os.path.join(study_dir, name))
    start = {key.split("/")[1]: value for key, value in evaluations[0].items()
             if key.startswith("eval/")}
    assert evaluations[0]["step"] == 0
    starts.append(start)
    final = row["validation_loss"]
    assert row["forgetting"] == {"prose": pytest.approx(final["prose"] - start["prose"])}
    assert row["adaptation"] == {"code": pytest.approx(start["code"] - final["code"])}
  assert all(start == starts[0] for start in starts)  # One imported model, one measurement.
  info = helpers.cli("info", f"--from={study_dir}/replay5", config=None).stdout
  assert "sources learnt before this run: unknown (an imported model in its past" in info
  # Compute is the imported model's, not that of the config's (unused) model block.
  imported = model_config.ModelConfig(
      **json.load(open(tmp_path / "imported" / "config.json"))["model"])
  seq_len = json.load(open(os.path.join(study_dir, "replay5", "config.json")))["data"]["seq_len"]
  per_token = model_lib.training_flops_per_token(imported, seq_len)
  assert all(row["flops"] == row["tokens"] * per_token for row in rows.values())
  assert all(row["start_validation_loss"] == starts[0] for row in rows.values())
  markdown = open(os.path.join(study_dir, "study.md")).read()
  assert ("measured from the model they continue, whose validation loss was "
          f"code {starts[0]['code']:.4f}, prose {starts[0]['prose']:.4f}.") in markdown
  # Six steps at a constant 3e-5 against a re-warmed 3e-4: the new data is learnt less.
  assert rows["no_rewarm"]["average_adaptation"] < rows["replay5"]["average_adaptation"]
  assert rows["replay0"]["gap_to_baseline_pct"] == 0


def test_a_source_evaluated_but_never_trained_on_is_not_forgotten(tmp_path):
  """A held-out domain, evaluated in every run and trained in none: its loss change during
  the last stage is not forgetting (nothing of it was learnt); the prose replayed is."""
  (tmp_path / "greek.jsonl").write_text("".join(
      f'{{"text": "alpha beta gamma {i} delta epsilon"}}\n' for i in range(200)))
  config = _smoke_config()
  config.base.data.sources.greek = corpora.source_config(
      "text_files", glob=str(tmp_path / "greek.jsonl"), validation_fraction=0.2)
  config.variants = [variant for variant in config.variants if variant.name == "replay5"]
  config.baseline = "replay5"
  study.run(config, str(tmp_path / "study"))
  (row,) = json.load(open(tmp_path / "study" / "study.json"))["variants"]
  assert set(row["validation_loss"]) == {"code", "greek", "prose"}
  assert set(row["forgetting"]) == {"prose"} and set(row["adaptation"]) == {"code"}
  summary = json.load(open(tmp_path / "study" / "replay5" / "summary.json"))
  assert summary["forgetting"] == {"code": {"prose": row["forgetting"]["prose"]}}
  info = helpers.cli("info", f"--from={tmp_path}/study/replay5", config=None).stdout
  assert "sources learnt before this run: prose\n" in info


def test_variants_share_runs_exactly_when_their_stages_are_configured_alike(tmp_path):
  variants = {v.name: v for v in study.plan(_smoke_config(), str(tmp_path))}
  shared = variants["replay5"].chain[0]
  assert all(variants[name].chain[0] == shared for name in ("replay0", "replay25", "no_rewarm"))
  assert variants["infinite"].chain[0] != shared
  assert variants["replay5"].chain[1] != variants["replay0"].chain[1]
  second = variants["replay0"].chain[1].config
  assert second.init.from_checkpoint == f"{shared.directory}:{shared.end_step}"
  assert (second.init.step, second.init.data) == ("continue", "fresh")
  assert variants["replay0"].results[-1].directory == str(tmp_path / "replay0")
  infinite = variants["infinite"]
  assert infinite.results[0].parent == infinite.chain[0]  # An anneal branch of stage 1...
  assert infinite.chain[1].parent == infinite.chain[0]  # ...which stage 2 does not start from.
  assert not tmp_path.joinpath("replay0").exists()  # Planning creates nothing.


def test_a_stage_that_continues_its_replay_trains_in_a_study_as_in_one_run(tmp_path):
  """A study runs each stage as a run of its own; the stage-2 run learns from its parent's
  checkpoint how far stage 1 served prose, and replays from there as one run would."""
  config = _smoke_config()
  config.variants = [study.variant("continued", {"stages[1].replay_position": "continue",
                                                 "stages[1].replay.prose": 0.25,
                                                 "stages[1].mixture.code": 0.75})]
  config.baseline = "continued"
  study_dir = str(tmp_path / "study")
  study.run(config, study_dir)
  (variant,) = study.plan(config, study_dir)
  single = str(tmp_path / "single")
  trainer.train(variant.config, single)
  stage_2 = [step for step in helpers.train_losses(single) if step > 6]
  chained = helpers.train_losses(variant.chain[1].directory)
  assert sorted(chained) == stage_2
  assert {step: chained[step] for step in stage_2} == {
      step: helpers.train_losses(single)[step] for step in stage_2}


def test_union_stage_weights_sources_by_their_share_of_all_tokens():
  base = study_demo.get_config().base  # Two stages of n steps; stage 2 replays 5% prose.
  union = study.union_stage(base, base.stages[0].schedule)
  assert union.steps == 2 * base.stages[0].steps
  assert dict(union.mixture) == pytest.approx({"prose": 0.525, "code": 0.475})


@pytest.mark.parametrize("change, message", [
    (lambda c: c.variants.append(study.variant("replay5")),
     "variants[6].name='replay5' repeats an earlier variant's name"),
    (lambda c: c.variants.append(study.variant("x", {"stages[1].replay.prse": 0.1})),
     "variant 'x': unknown config field config.stages[1].replay.prse; did you mean "
     "config.stages[1].replay.prose?"),
    (lambda c: c.variants.append(study.variant("x", {"stages[1].steps": "ten"})),
     "variant 'x': stages[1].steps='ten'"),
    (lambda c: c.variants.append(study.variant("x", {"stages[1].mixture.code": 0.5})),
     "variant 'x': stages[1].mixture + replay weights sum to 0.55; expected 1"),
    (lambda c: c.variants.append(study.variant("a/b")), "variants[6].name='a/b'"),
    (lambda c: setattr(c, "baseline", "unoin"), "baseline='unoin': no such variant"),
    (lambda c: c.variants.append(study.variant("replay5.seed1")),
     "variants[6].name='replay5.seed1'"),
    (lambda c: setattr(c, "num_seeds", 0), "num_seeds=0: expected an integer >= 1"),
])
def test_bad_study_configs_are_named_before_anything_runs(change, message, tmp_path):
  config = _smoke_config()
  change(config)
  with pytest.raises(ConfigError, match=re.escape(message)):
    study.plan(config, str(tmp_path))


def test_bad_variant_on_the_command_line_is_one_line_and_exit_2(tmp_path):
  result = helpers.cli("study", f"--workdir={tmp_path}/s", "--config.variants[2].name=replay0",
                       config=helpers.STUDY_DEMO_SMOKE, small=False, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "cpt-jax: error: variants[2].name='replay0' repeats an earlier variant's name"]
  result = helpers.cli("study", f"--workdir={tmp_path}/s", "--only=replay5,nope",
                       config=helpers.STUDY_DEMO_SMOKE, small=False, check=False)
  assert result.returncode == 2 and "--only names unknown variants ['nope']" in result.stderr
  assert not os.path.exists(f"{tmp_path}/s")


@pytest.mark.parametrize("variant", ["", "german"])
def test_the_pythia_study_plans_the_papers_grid(variant, tmp_path):
  from configs import study_pythia_410m
  variants = {v.name: v for v in study.plan(study_pythia_410m.get_config(variant), str(tmp_path))}
  runs = {run.key: run for plan in variants.values() for run in plan.runs}
  assert len(runs) == 11  # One shared Pile stage for the four cosine variants.
  second = "german" if variant else "slimpajama"
  assert dict(variants["replay25"].config.stages[1].replay) == {"pile": 0.25}
  assert dict(variants["new_data_only"].config.stages[0].mixture) == {second: 1.0}
