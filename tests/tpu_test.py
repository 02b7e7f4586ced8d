"""Tests for tpu/tpu.sh: its --dry-run prints the gcloud commands it would run."""

import os
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "tpu", "tpu.sh")
ENV = {**os.environ, "TPU_NAME": "test-slice", "ZONE": "europe-west4-a",
       "ACCELERATOR_TYPE": "v5litepod-16", "WORKDIR": "gs://bucket/run",
       "CONFIG": "configs/pythia_410m_pile_slimpajama.py"}


def dry_run(*args):
  result = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True,
                          env=ENV, timeout=60)
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_create_names_the_slice_zone_and_accelerator():
  out = dry_run("create")
  assert out.startswith("gcloud compute tpus tpu-vm create test-slice")
  assert "--zone=europe-west4-a" in out and "--accelerator-type=v5litepod-16" in out
  assert "--spot" in out


def test_install_and_launch_run_on_every_worker():
  install, launch = dry_run("install"), dry_run("launch", "--", "--config.seed=3")
  for out in (install, launch):
    assert "tpu-vm ssh test-slice" in out and "--worker=all" in out
  assert "-e ~/cpt_jax'[tpu,gcs]'" in install.replace("\\", "")  # ~ outside the quotes.
  assert "cpt-jax train" in launch.replace("\\", "") and "--workdir=gs://bucket/run" in launch
  assert "--config.seed=3" in launch


def test_a_study_is_launched_on_every_worker_and_another_command_is_refused():
  result = subprocess.run(["bash", SCRIPT, "--dry-run", "launch"], capture_output=True,
                          text=True, env={**ENV, "RUN": "study"}, timeout=60)
  assert result.returncode == 0 and "--worker=all" in result.stdout
  assert "cpt-jax study --config=configs/pythia_410m_pile_slimpajama.py" in result.stdout.replace(
      "\\", "")
  refused = subprocess.run(["bash", SCRIPT, "--dry-run", "launch"], capture_output=True,
                           text=True, env={**ENV, "RUN": "score"}, timeout=60)
  assert refused.returncode == 2 and "RUN=score: expected train or study" in refused.stderr


def test_launch_detaches_the_run_and_keeps_its_exit_code():
  launch = dry_run("launch")
  assert "setsid\\ nohup" in launch and "cpt_jax_train.log" in launch
  assert "cpt_jax_train.exit" in launch and launch.rstrip().endswith("\\&")


def _gcloud_verbs(out):
  return [line.split()[4] for line in out.splitlines() if line.startswith("gcloud")]


def test_relaunch_recreates_a_preempted_slice_and_stops_on_a_bad_input_exit():
  """--dry-run walks both paths: the slice is preempted once (recreate, reinstall, rerun),
  then the run exits 2 (bad input): the loop stops with that code instead of retrying."""
  result = subprocess.run(["bash", SCRIPT, "--dry-run", "relaunch"], capture_output=True,
                          text=True, env=ENV, timeout=60)
  assert result.returncode == 2
  once = ["delete", "create", "ssh", "ssh"]
  assert _gcloud_verbs(result.stdout) == once + ["describe"] + once + ["describe", "ssh"]
  assert "slice PREEMPTED: recreating it, attempt 2" in result.stdout
  assert "exited with code 2" in result.stderr and "not relaunching" in result.stderr


def test_relaunch_ends_when_the_run_finishes():
  result = subprocess.run(["bash", SCRIPT, "--dry-run", "relaunch"], capture_output=True,
                          text=True, env={**ENV, "DRY_RUN_EXIT": "0"}, timeout=60)
  assert result.returncode == 0 and "run finished: gs://bucket/run" in result.stdout


@pytest.mark.parametrize("args", [["fly"], []])
def test_unknown_subcommand_prints_usage_and_fails(args):
  result = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True,
                          env=ENV, timeout=60)
  assert result.returncode == 2 and "create|install|launch" in result.stderr
