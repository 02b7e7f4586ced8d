"""Tests for cpt_jax/metrics_writer.py."""

import glob
import json
import os

import run_helpers as helpers
from cpt_jax import metrics_writer


def _session(workdir, records, staging_dir=None):
  writer = metrics_writer.MetricsWriter(workdir, staging_dir=staging_dir)
  for record in records:
    writer.write(record)
  return writer


def test_a_resumed_run_appends_and_the_last_record_of_a_step_wins(tmp_path):
  workdir = str(tmp_path / "run")
  _session(workdir, [{"step": 1, "stage": "a", "loss": 3.0},
                     {"step": 2, "stage": "a", "loss": 2.5}]).close()
  _session(workdir, [{"step": 2, "stage": "a", "loss": 2.4},
                     {"step": 2, "stage": "a", "eval/x/loss": 2.9}]).close()
  train, evaluation = metrics_writer.read_records(workdir)
  assert [(r["step"], r["loss"]) for r in train] == [(1, 3.0), (2, 2.4)]
  assert evaluation == [{"step": 2, "stage": "a", "eval/x/loss": 2.9}]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_an_evaluations_losses_are_found_by_step(tmp_path):
  workdir = str(tmp_path / "run")
  _session(workdir, [{"step": 0, "stage": "a", "eval/code/loss": 8.0, "eval/prose/loss": 7.0},
                     {"step": 1, "stage": "a", "loss": 3.0},
                     {"step": 2, "stage": "a", "eval/code/loss": 6.0, "eval/prose/loss": 5.0}
                     ]).close()
  _, evaluations = metrics_writer.read_records(workdir)
  assert metrics_writer.eval_losses(evaluations[0]) == {"code": 8.0, "prose": 7.0}
  assert metrics_writer.losses_at(evaluations, 2) == {"code": 6.0, "prose": 5.0}
  assert metrics_writer.losses_at(evaluations, 1) is None  # A train step, not evaluated.


def test_staged_records_reach_the_run_directory_whole_at_each_flush(tmp_path):
  # How a gs:// run directory (no appends) is written: locally, then copied up.
  workdir = str(tmp_path / "run")
  writer = _session(workdir, [{"step": 1, "stage": "a", "loss": 3.0}], str(tmp_path / "stage1"))
  assert metrics_writer.read_records(workdir) == ([], [])  # Not flushed yet.
  writer.flush()
  assert [r["step"] for r in metrics_writer.read_records(workdir)[0]] == [1]
  writer.write({"step": 2, "stage": "a", "loss": 2.0})
  writer.close()
  # A resumed run stages elsewhere, starting from the run directory's records.
  _session(workdir, [{"step": 3, "stage": "b", "loss": 1.5}], str(tmp_path / "stage2")).close()
  assert [r["step"] for r in metrics_writer.read_records(workdir)[0]] == [1, 2, 3]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_weights_and_biases_offline_holds_the_records_and_a_resume_continues_its_run(
    tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = str(tmp_path / "wandb_run")
  args = ("train", f"--workdir={workdir}", "--config.log.wandb.project=cpt-jax-test",
          "--config.log.wandb.tags=('smoke',)")
  with helpers.sigterm_at_step(35):
    helpers.cli(*args)
  helpers.cli(*args)
  run_id = open(os.path.join(workdir, "wandb_run_id")).read().strip()
  runs = sorted(name for name in os.listdir(os.path.join(workdir, "wandb"))
                if name.startswith("offline-run-"))
  assert len(runs) == 2 and all(name.endswith(run_id) for name in runs)  # One W&B run, resumed.
  # The offline run files hold each record (protobuf history items, values as JSON text):
  # the first part's steps in the first, the resumed part's in the second.
  first, second = (open(glob.glob(os.path.join(workdir, "wandb", run, "run-*.wandb"))[0],
                        "rb").read() for run in runs)
  losses = helpers.train_losses(workdir)
  assert json.dumps(losses[5]).encode() in first and json.dumps(losses[60]).encode() in second
  assert b"update_norm" in second and b"eval/code/loss" in second




def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch (1.3 s) where it is installed; the writer keeps it out, and a
  later `import torch` still works."""
  import subprocess
  import sys
  script = (
      "import sys\n"
      "from cpt_jax import metrics_writer\n"
      f"writer = metrics_writer.MetricsWriter({str(tmp_path)!r})\n"
      "writer.write({'step': 1, 'loss': 2.5})\n"
      "writer.close()\n"
      "assert 'torch' not in sys.modules, 'torch was imported'\n"
      "import torch\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=helpers.environment(), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))
