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
  assert "jax\\[tpu\\]" in install or "jax[tpu]" in install
  assert "cpt-jax\\ train" in launch and "--workdir=gs://bucket/run" in launch
  assert "--config.seed=3" in launch


def test_relaunch_recreates_the_slice_and_resumes_the_same_run():
  out = dry_run("relaunch").splitlines()
  commands = [line.split()[4] for line in out if line.startswith("gcloud")]
  assert commands == ["delete", "create", "ssh", "ssh"]


@pytest.mark.parametrize("args", [["fly"], []])
def test_unknown_subcommand_prints_usage_and_fails(args):
  result = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True,
                          env=ENV, timeout=60)
  assert result.returncode == 2 and "create|install|launch" in result.stderr
