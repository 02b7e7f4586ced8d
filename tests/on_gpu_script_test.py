"""Tests for benchmarks/on_gpu.sh without a GPU: the rows its phases run at, and its refusal of
a phase it lacks (before it installs anything)."""

import os
import subprocess

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "on_gpu.sh")


def rows(out_dir, env=None, planned=None):
  """(pythia-410m's rows, pythia-160m's rows) as the script's phases would pick them, after
  writing `planned` ({file name: mfu's line}) into the phases' output folder."""
  for name, line in (planned or {}).items():
    with open(os.path.join(out_dir, name), "w") as f:
      f.write(f"planned per device (...)\n{line}\nmfu: 0.480\n")
  result = subprocess.run(["bash", "-c", f'source "{SCRIPT}" && echo "$(rows) $(rows_160m)"'],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {}), "OUT": str(out_dir)})
  assert result.returncode == 0, result.stderr
  return tuple(int(n) for n in result.stdout.split())


def mfu_line(preset, rows_per_device):
  return (f"{preset} (405,334,848 params) on NVIDIA H200, {rows_per_device} x 2048 per device, "
          "remat none, head compute: 176,000 tokens/s per device, MFU 48.4%")


def test_unplanned_rows_fit_an_h100(tmp_path):
  assert rows(tmp_path) == (16, 32)


def test_pythia_160m_follows_410m_plan_unless_its_own_ran(tmp_path):
  # The plan files stay in the folder from one assertion to the next, as a run's phases leave them.
  assert rows(tmp_path, planned={"mfu_410m.txt": mfu_line("pythia-410m", 32)}) == (32, 64)
  # mfu_410m's retry with the pinned packages (its first try failed), beside the first try's
  # plan: the retry's counts.
  assert rows(tmp_path, planned={"mfu_410m_pinned.txt": mfu_line("pythia-410m", 8)}) == (8, 16)
  # mfu_160m's own plan; pythia-410m keeps the retry's 8 rows.
  assert rows(tmp_path, planned={"mfu_160m.txt": mfu_line("pythia-160m", 128)}) == (8, 128)


def test_rows_from_the_environment_win(tmp_path):
  planned = {"mfu_410m.txt": mfu_line("pythia-410m", 32),
             "mfu_160m.txt": mfu_line("pythia-160m", 64)}
  assert rows(tmp_path, env={"ROWS": "4", "VS_ROWS_160M": "2"}, planned=planned) == (4, 2)
  assert rows(tmp_path, env={"ROWS": "4"}) == (4, 64)  # 160m's own plan, still there.


def test_an_unknown_phase_is_refused_before_installing(tmp_path):
  result = subprocess.run(["bash", SCRIPT, "mfu_410m", "mfu_4l0m"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path)})
  assert result.returncode == 2
  assert result.stderr.strip() == "on_gpu.sh: no phase mfu_4l0m"
  assert not os.listdir(tmp_path)  # Nothing ran.


def test_profile_phases_pass_their_preset_and_rows(tmp_path):
  # `phase` stubbed to print what it would run: the phase's name and step_profile's flags.
  stub = 'phase() { echo "$1: ${*:3}"; }'
  result = subprocess.run(
      ["bash", "-c", f'source "{SCRIPT}" && {stub} && PROFILE_HEADS=compute profile_410m; '
                     f'PROFILE_HEADS=compute profile_160m'],
      capture_output=True, text=True, timeout=60,
      env={**os.environ, "OUT": str(tmp_path), "ROWS": "8"})
  ran = [line for line in result.stdout.splitlines() if "step_profile" in line]
  assert len(ran) == 2, result.stdout + result.stderr
  assert ran[0].startswith("profile_410m_compute: ")
  assert "--preset=pythia-410m --batch_per_device=8 --head_matmul_dtype=compute" in ran[0]
  assert ran[1].startswith("profile_160m_compute: ")
  assert "--preset=pythia-160m --batch_per_device=16 --head_matmul_dtype=compute" in ran[1]
