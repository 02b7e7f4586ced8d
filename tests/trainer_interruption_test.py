"""Tests trainer.py's handling of interruptions end to end: SIGKILL, SIGTERM, SIGHUP, a second
run on the same directory and Ctrl-C, each resumed (subprocesses: signals are the point)."""

import os
import shutil
import signal
import time

import jax
import numpy as np

import run_helpers as helpers


def _signal_masks(pid):
  """The kernel's view of which signals a process ignores, catches and has pending."""
  try:
    with open(f"/proc/{pid}/status") as status:
      return " ".join(line.strip() for line in status if line.startswith(("SigPnd", "ShdPnd",
                                                                        "SigBlk", "SigIgn",
                                                                        "SigCgt")))
  except OSError:
    return "(no /proc)"


def test_a_run_interrupted_every_way_resumes_bit_identical(reference_run, tmp_path):
  """One run, stopped in each way a real one is, in turn: SIGKILL mid stage 1 (an async save
  may be in flight), SIGTERM (preemption) and SIGHUP (a dropped ssh session: both save and
  exit 0), a second run on the same directory
  (refused), Ctrl-C (save, exit 130, lock released). Resumed each time, it ends
  with the losses and parameters of the uninterrupted run, bit for bit; a copy resumed on 4
  devices instead of 8 continues the same data (equal to float32 rounding)."""
  workdir = str(tmp_path / "interrupted")
  process = helpers.start("train", f"--workdir={workdir}")
  returncode, _ = helpers.kill_when(process, workdir, 12)
  assert returncode == -signal.SIGKILL

  for signum, step in ((signal.SIGTERM, 18), (signal.SIGHUP, 25)):  # Preemption; lost ssh.
    process = helpers.start("train", f"--workdir={workdir}")
    returncode, output = helpers.kill_when(process, workdir, step, sig=signum)
    assert returncode == 0, output[-2000:]
    assert f"preempted ({signum.name}): saved step" in output
    saved = int(output.split("saved step ")[1].split(";")[0])
    assert str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))
  four_devices = str(tmp_path / "four")
  shutil.copytree(workdir, four_devices)

  first = helpers.start("train", f"--workdir={workdir}")
  try:
    while helpers.last_train_step(workdir) <= saved:
      assert first.poll() is None, first.stdout.read()[-2000:]
      time.sleep(0.05)
    # The first run is paused mid stage (alive, holding the lock) while this process checks,
    # and its Ctrl-C waits, pending, until it continues: however fast its steps are or slow
    # this process is, the Ctrl-C lands mid run.
    first.send_signal(signal.SIGSTOP)
    try:
      second = helpers.cli("train", f"--workdir={workdir}", check=False)
      signal_masks = _signal_masks(first.pid)  # Names why, should the Ctrl-C be lost.
      first.send_signal(signal.SIGINT)
    finally:
      first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"cpt-jax: error: {workdir} is in use by process {first.pid} on this host "
        f"({workdir}/run.lock); wait for it to end or use another --workdir")
    output = first.communicate(timeout=300)[0]
    returncode = first.returncode
  finally:
    first.kill()
  assert returncode == 130, f"{signal_masks}\n{output[-2000:]}"
  assert "Traceback" not in output
  saved = int(output.split("interrupted (Ctrl-C): saved step ")[1].split(";")[0])
  assert str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # Released.

  helpers.cli("train", f"--workdir={workdir}")  # In this process: the same 8 devices.
  expected, resumed = helpers.train_losses(reference_run), helpers.train_losses(workdir)
  assert sorted(resumed) == sorted(expected) == list(range(1, 61))
  assert resumed == expected  # Exactly equal floats at every step.
  reference_step, reference_params = helpers.final_params(reference_run)
  resumed_step, resumed_params = helpers.final_params(workdir)
  assert reference_step == resumed_step == 60
  jax.tree.map(np.testing.assert_array_equal, resumed_params, reference_params)

  helpers.run("train", f"--workdir={four_devices}", devices=4)
  resumed = helpers.train_losses(four_devices)
  assert sorted(resumed) == list(range(1, 61))
  # Another device count sums in another order: equal to float32 rounding, not bits.
  np.testing.assert_allclose([resumed[s] for s in range(1, 61)],
                             [expected[s] for s in range(1, 61)], rtol=2e-4)


