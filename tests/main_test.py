"""Tests for cpt_jax/main.py (the `cpt-jax` command line) and cpt_jax/info.py."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from cpt_jax import cpu_runtime, main, metrics_writer

import fake_bucket
import run_helpers as helpers


def test_info_prints_parameters_flops_and_the_plan():
  result = helpers.cli("info", small=False)
  lines = result.stdout.splitlines()
  assert lines[0] == "parameters: 1841920 (non-embedding 793344)"
  assert any(line.startswith("flops per token: ") for line in lines)
  assert "plan: 2 stages, 20 steps, 81,920 tokens" in result.stdout
  assert "code 95%, prose 5% (replay)" in result.stdout


def test_info_of_the_paper_config_shows_the_published_parameter_count():
  config = os.path.join(helpers.ROOT, "configs", "pythia_410m_pile_slimpajama.py")
  result = helpers.cli("info", config=config, small=False)
  assert "parameters: 405334016 (non-embedding 302311424)" in result.stdout


def test_configs_import_each_other_as_a_package():
  for name, plan in (("demo_en_de.py", "english"), ("pythia_410m_pile_german.py", "german")):
    result = helpers.cli("info", config=os.path.join(helpers.ROOT, "configs", name), small=False)
    assert f"'{plan}'" in result.stdout, result.stdout
  result = helpers.cli("info", config=os.path.join(helpers.ROOT, "configs",
                                                   "pythia_410m_pile_german.py:replay1"),
                       small=False, check=False)
  assert result.returncode == 2 and "unknown variant 'replay1'" in result.stderr


def test_a_config_of_ones_own_imports_the_repositorys_configs_from_its_root(tmp_path):
  """`cpt-jax` (the installed script, whose import path lacks the working directory) runs a
  config outside configs/ that imports `configs.demo`, from the repository's root as
  `python -m cpt_jax` would; elsewhere the missing module is one line naming the file."""
  (tmp_path / "three_stages.py").write_text(
      "from configs import demo\n"
      "from cpt_jax import run_plan, schedule_config\n\n\n"
      "def get_config():\n"
      "  config = demo.get_config('smoke')\n"
      "  config.stages.append(run_plan.stage(\n"
      "      'prose_again', 10, {'prose': 0.75}, schedule_config.config_for('constant', "
      "value=1e-4),\n"
      "      replay={'code': 0.25}))\n"
      "  return config\n")
  executable = os.path.join(os.path.dirname(sys.executable), "cpt-jax")
  command = [executable, "info", f"--config={tmp_path}/three_stages.py"]
  result = subprocess.run(command, cwd=helpers.ROOT, env=helpers.environment(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "stage 2 'prose_again'" in result.stdout, result.stderr
  result = subprocess.run(command, cwd=tmp_path, env=helpers.environment(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 2
  assert result.stderr.strip() == (
      f"cpt-jax: error: {tmp_path}/three_stages.py:1: No module named 'configs'; the "
      "repository's configs/ is importable where cpt-jax runs from the repository's root")


def test_unknown_override_names_close_matches():
  result = helpers.cli("info", "--config.stages[1].schedul.peak_value=1", check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "cpt-jax: error: unknown config field config.stages[1].schedul; did you mean "
      "config.stages[1].schedule?")


def test_invalid_values_are_named_in_one_line():
  cases = {"--config.data.seq_len=1000": "data.seq_len=1000: exceeds the model's context",
           "--config.stages[1].replay.prose=-0.1": "replay['prose']=-0.1",
           "--config.stages[0].mixture.prose=0.5": "weights sum to 0.5; expected 1",
           "--config.parallel=tensor": "parallel='tensor'"}
  for override, message in cases.items():
    result = helpers.cli("info", override, check=False)
    assert result.returncode == 2, override
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cpt-jax: error: ") and message in last, (override, last)


def test_missing_config_and_unknown_command():
  result = helpers.cli("info", config=None, check=False)
  assert result.returncode == 2 and "--config is required" in result.stderr
  result = helpers.cli("fly", config=None, check=False)
  assert result.returncode == 2 and "unknown command 'fly'" in result.stderr


def test_ctrl_c_before_anything_was_saved_says_so_and_exits_130(monkeypatch):
  from cpt_jax import info

  def interrupted(config):
    raise KeyboardInterrupt

  monkeypatch.setattr(info, "describe", interrupted)
  result = helpers.cli("info", check=False)
  assert (result.returncode, result.stderr) == (130, "cpt-jax: interrupted (Ctrl-C)\n")


def test_plot_schedule_writes_an_image(tmp_path):
  out = str(tmp_path / "lr.png")
  result = helpers.cli("plot-schedule", f"--out={out}")
  assert os.path.getsize(out) > 10_000 and "wrote" in result.stdout


def test_prepare_needs_a_cache_directory():
  result = helpers.cli("prepare", check=False)
  assert result.returncode == 2 and "data.token_cache_dir is empty" in result.stderr


def test_prepare_writes_shards_that_training_reads(tmp_path):
  cache = str(tmp_path / "tokens")
  helpers.cli("prepare", f"--config.data.token_cache_dir={cache}")
  assert sorted(os.listdir(cache)) == ["code", "prose"]
  assert sorted(os.listdir(os.path.join(cache, "prose"))) == [
      "train-00000-of-00001.array_record", "train-00000-of-00001.lengths.npy", "train.json",
      "train.lengths.npy", "validation-00000-of-00001.array_record",
      "validation-00000-of-00001.lengths.npy", "validation.json", "validation.lengths.npy"]
  workdir = str(tmp_path / "run")
  helpers.cli("train", f"--workdir={workdir}", f"--config.data.token_cache_dir={cache}",
              "--config.stages[0].steps=3", "--config.stages[1].steps=3")
  assert os.path.exists(os.path.join(workdir, "summary.json"))
  # The held-out documents are named by the cache, not found by reading the corpus again.
  with open(os.path.join(workdir, "data_splits.json")) as f:
    prose = json.load(f)["prose"]
  assert prose["prepared"] == os.path.join(cache, "prose", "validation.json")
  assert prose["validation_documents"] == 33


def test_a_run_from_a_bucket_cache_equals_one_from_a_local_cache(tmp_path):
  """`prepare` into gs:// (fake_bucket: epath and ArrayRecord's reader, no network), then
  `train` from it: the same losses as from a local cache."""
  short = ("--config.stages[0].steps=3", "--config.stages[1].steps=3")
  losses = {}
  with fake_bucket.serve(tmp_path / "bucket") as bucket:
    for cache in (str(tmp_path / "tokens"), f"{bucket.prefix}/tokens"):
      helpers.cli("prepare", "--workers=0", f"--config.data.token_cache_dir={cache}")
      workdir = str(tmp_path / f"run{len(losses)}")
      helpers.cli("train", f"--workdir={workdir}", f"--config.data.token_cache_dir={cache}",
                  *short)
      records, _ = metrics_writer.read_records(workdir)
      losses[cache] = [(r["step"], r["loss"]) for r in records if "loss" in r]
      with open(os.path.join(workdir, "data_splits.json")) as f:
        assert json.load(f)["prose"]["prepared"] == f"{cache}/prose/validation.json"
  assert any(name.startswith("tokens/prose/train-") for name in bucket.objects_read)
  local, remote = losses.values()
  assert len(local) == 6 and remote == local


def test_the_readme_main_command_runs_as_a_user_types_it(tmp_path):
  """README's install-and-run line, from a fresh working directory with its relative
  --workdir, on the demo's smoke variant (the install is this test run's own)."""
  with open(os.path.join(helpers.ROOT, "README.md")) as f:
    line = next(line for line in f if line.startswith("python3 -m venv .venv") and
                "cpt-jax train" in line)
  install, _, train = line.strip().rpartition(" && ")
  assert install == "python3 -m venv .venv && .venv/bin/pip install -q -e ."
  program, *args = shlex.split(train)
  assert program == ".venv/bin/cpt-jax" and "--config=configs/demo.py" in args
  args = [arg + ":smoke" if arg == "--config=configs/demo.py" else arg for arg in args]
  workdir = next(arg.split("=", 1)[1] for arg in args if arg.startswith("--workdir="))
  assert not os.path.isabs(workdir)
  shutil.copytree(os.path.join(helpers.ROOT, "configs"), tmp_path / "configs")
  environment = helpers.environment()
  del environment["XLA_FLAGS"]  # A user's machine: one CPU device.
  # The install line has no extras: neither tensorflow-datasets nor wandb may be needed.
  blocked = tmp_path / "not_installed"
  blocked.mkdir()
  for module in ("tensorflow_datasets", "wandb"):
    (blocked / f"{module}.py").write_text(f"raise ImportError('{module} is not installed')")
  environment["PYTHONPATH"] = str(blocked)
  executable = os.path.join(os.path.dirname(sys.executable), "cpt-jax")
  info = subprocess.run([executable, "info", "--config=configs/demo.py"], cwd=tmp_path,
                        env=environment, capture_output=True, text=True, timeout=600)
  assert info.returncode == 0 and "parameters:" in info.stdout, info.stderr[-3000:]
  result = subprocess.run([executable, *args], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(tmp_path / workdir / "summary.json")
  assert "20" in os.listdir(tmp_path / workdir / "checkpoints")


@pytest.mark.parametrize("command, reuse_memory", [("train", True), ("anneal", True),
                                                   ("score", True), ("study", True),
                                                   ("prepare", False), ("export-hf", False),
                                                   ("info", False)])
def test_only_commands_that_run_steps_keep_memory_for_reuse(monkeypatch, command,
                                                             reuse_memory):
  asked = []
  monkeypatch.setattr(cpu_runtime, "configure", lambda reuse_memory: asked.append(reuse_memory))
  monkeypatch.setattr(main, "main", lambda argv: 0)
  monkeypatch.setattr(sys, "argv", ["cpt-jax", command])
  with pytest.raises(SystemExit):
    main.run()
  assert asked == [reuse_memory]

