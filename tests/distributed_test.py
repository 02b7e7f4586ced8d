"""Tests for cpt_jax/distributed.py: two local processes (4 CPU devices each) train together."""

import os
import socket
import subprocess

import pytest

import run_helpers as helpers


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_write_checkpoints_together(tmp_path):
  workdir = str(tmp_path / "two_processes")
  port = _free_port()
  processes = [subprocess.Popen(
      helpers.command("train", f"--workdir={workdir}", "--config.stages[0].steps=6",
                      "--config.stages[1].steps=6", f"--coordinator_address=127.0.0.1:{port}",
                      "--num_processes=2", f"--process_id={index}"),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=helpers.environment(devices=4), cwd=helpers.ROOT) for index in range(2)]
  outputs = [process.communicate(timeout=300)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert "forgetting during 'code'" in outputs[0]  # Only process 0 reports.
  assert "forgetting during" not in outputs[1]
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps[-1] == 12
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "12", "data"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  losses = helpers.train_losses(workdir)
  assert sorted(losses) == list(range(1, 13))


def test_partial_process_flags_are_refused():
  result = helpers.run("train", "--workdir=/tmp/unused", "--num_processes=2", check=False)
  assert result.returncode == 2
  assert "need all of --coordinator_address, --num_processes and --process_id" in result.stderr
