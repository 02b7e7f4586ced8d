"""Tests for multi-process runs: two local processes (4 CPU devices each) train together."""

import json
import os
import shutil
import signal
import socket
import subprocess
import types

import numpy as np
import pytest

import run_helpers as helpers

STEPS = ("--config.stages[0].steps=6", "--config.stages[1].steps=6")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(*args, homes=(None, None), **command_options):
  """`cpt-jax ARGS` as the two processes of one job, 4 CPU devices each (with `homes`, each
  its own HOME: `~` is another directory for each, as on two hosts)."""
  port = _free_port()
  return [subprocess.Popen(
      helpers.command(*args, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={index}", **command_options),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**helpers.environment(devices=4), **({"HOME": home} if home else {})},
      cwd=helpers.ROOT) for index, home in enumerate(homes)]


def _start_processes(workdir, *flags):
  return _launch("train", f"--workdir={workdir}", *STEPS, *flags)


def _finish(processes):
  outputs = [process.communicate(timeout=300)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


def _eval_losses(workdir):
  from cpt_jax import metrics_writer
  _, evaluations = metrics_writer.read_records(workdir)
  return {(record["step"], key): value for record in evaluations
          for key, value in record.items() if key.startswith("eval/")}


def _assert_same_losses(got, want, rtol):
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[k] for k in sorted(want)], [want[k] for k in sorted(want)],
                             rtol=rtol)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """Two processes train together; SIGTERM to one of them at step 3 (a preemption) stops
  both, and both resume: the run, process 0's output when preempted, the checkpoint steps
  then, and both outputs when resumed."""
  workdir = str(tmp_path_factory.mktemp("two_processes") / "run")
  processes = _start_processes(workdir)
  helpers.kill_when(processes[1], workdir, step=3, sig=signal.SIGTERM)
  preempted = _finish(processes[:1])[0]
  assert processes[1].returncode == 0
  saved = {name: sorted(os.listdir(os.path.join(workdir, "checkpoints", name, "data")))
           for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit()}
  return types.SimpleNamespace(workdir=workdir, preempted=preempted, saved=saved,
                               resumed=_finish(_start_processes(workdir)))


def test_two_processes_train_and_write_checkpoints_together(two_process_run):
  workdir, outputs = two_process_run.workdir, two_process_run.resumed
  assert "forgetting during 'code'" in outputs[0]  # Only process 0 reports.
  assert "forgetting during" not in outputs[1]
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps[-1] == 12
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "12", "data"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  assert sorted(helpers.train_losses(workdir)) == list(range(1, 13))


def test_two_processes_match_one_process_with_all_devices(two_process_run, tmp_path):
  workdir = two_process_run.workdir
  single = str(tmp_path / "one_process")
  helpers.cli("train", f"--workdir={single}", *STEPS)  # This process: 8 devices.
  # The same global batches, though the two processes were preempted and resumed on the way;
  # only the order of the cross-device sum differs.
  _assert_same_losses(helpers.train_losses(workdir), helpers.train_losses(single), rtol=1e-5)
  _assert_same_losses(_eval_losses(workdir), _eval_losses(single), rtol=1e-5)
  from cpt_jax import metrics_writer
  tokens = [{r["step"]: (r["tokens/prose"], r["tokens/code"])
             for r in metrics_writer.read_records(run)[0]} for run in (workdir, single)]
  assert tokens[0] == tokens[1]  # Counted exactly, not estimated from one process's rows.


def test_sigterm_to_one_process_saves_everywhere_and_both_resume(two_process_run):
  """JAX's preemption sync makes both processes save one step and stop; both resume from it
  (the losses equal one process's: test_two_processes_match_one_process_with_all_devices)."""
  run = two_process_run
  assert "preempted (SIGTERM): saved step " in run.preempted
  saved = int(run.preempted.split("saved step ")[1].split(";")[0])
  assert 3 <= saved < 12
  assert max(run.saved, key=int) == str(saved)
  assert run.saved[str(saved)] == ["commit_success.txt", "process_0-of-2.json",
                                   "process_1-of-2.json"]
  assert f"resuming {run.workdir} from step {saved}" in run.resumed[0]


def test_a_workdir_the_processes_do_not_share_is_refused_on_every_process(tmp_path):
  """`--workdir=~/run` on each host of a slice is a directory per host: each process would
  checkpoint alone, and a resume would restore on some processes and start afresh on others."""
  homes = [str(tmp_path / f"host{index}") for index in range(2)]
  processes = _launch("train", "--workdir=~/run", *STEPS, homes=homes)
  for process in processes:
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 2, output[-3000:]
    assert (f"--workdir={homes[0]}/run: a file process 0 wrote there is not there for "
            "processes [1] (of 2); a multi-process run needs a directory that every process "
            f"shares" in output.replace(homes[1], homes[0])), output[-3000:]
  assert not os.path.exists(os.path.join(homes[0], "run"))  # Process 0's new one is removed.


@pytest.mark.parametrize("args, config", [
    (("train",), f"{helpers.DEMO}:smoke"),
    (("anneal", "--from=/tmp/unused", "--steps=1"), None),
    (("study",), helpers.STUDY_DEMO_SMOKE)])
def test_partial_process_flags_are_refused(args, config):
  result = helpers.cli(*args, "--workdir=/tmp/unused", "--num_processes=2", check=False,
                       config=config, small=False)
  assert result.returncode == 2
  assert "need all of --coordinator_address, --num_processes and --process_id" in result.stderr


def test_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
  workdir = two_process_run.workdir
  resumed = str(tmp_path / "resumed_in_one")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))  # Resume mid-stage at step 10.
  output = helpers.cli("train", f"--workdir={resumed}", *STEPS).stdout
  assert f"resuming {resumed} from step 10" in output
  _assert_same_losses(helpers.train_losses(resumed), helpers.train_losses(workdir), rtol=1e-5)


def test_a_two_process_checkpoint_anneals_in_one_process_on_the_same_data(two_process_run,
                                                                          tmp_path):
  """Grain's iterator state is per process: a branch on another process count continues the
  source's stream by batch index. Step 11's loss is taken before its update, so it depends
  on the step-10 parameters and step 11's batch only, not on the anneal's learning rate."""
  annealed = str(tmp_path / "annealed")
  helpers.cli("anneal", f"--from={two_process_run.workdir}:10", f"--workdir={annealed}",
              "--steps=2", config=None)
  got = helpers.train_losses(annealed)
  assert sorted(got) == [11, 12]
  np.testing.assert_allclose(got[11], helpers.train_losses(two_process_run.workdir)[11],
                             rtol=1e-5)
  # The same anneal as a two-process job (each process restores its own iterator state).
  together = str(tmp_path / "annealed_by_two")
  outputs = _finish(_launch("anneal", f"--from={two_process_run.workdir}:10",
                            f"--workdir={together}", "--steps=2", config=None))
  assert "anneal@10" in outputs[0] and "anneal@10" not in outputs[1]  # Process 0 reports.
  _assert_same_losses(helpers.train_losses(together), got, rtol=1e-5)


def test_a_study_runs_as_a_two_process_job_and_process_0_writes_the_report(tmp_path):
  study_dir = str(tmp_path / "study")
  outputs = _finish(_launch("study", f"--workdir={study_dir}", "--only=replay0",
                            "--config.base.log.progress_bar=false",
                            config=helpers.STUDY_DEMO_SMOKE, small=False))
  assert f"wrote {study_dir}/study.md" in outputs[0]
  assert "wrote" not in outputs[1]
  rows = {row["variant"]: row for row in
          json.load(open(os.path.join(study_dir, "study.json")))["variants"]}
  assert rows["replay0"]["status"] == "done"
  train_steps = sorted(helpers.train_losses(os.path.join(study_dir, "replay0")))
  assert train_steps == list(range(7, 13))  # Stage 2 of the shared stage-1 run.
