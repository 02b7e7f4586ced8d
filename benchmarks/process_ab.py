"""The bare step in two processes that differ in one setting, timed in alternating rounds.

  python -m benchmarks.process_ab [--python_b=OTHER_VENV/bin/python] [--xla_flags_b=FLAGS]
      [--rounds=12] [--steps=10] [--preset=tiny] [--rows=16] [--seq_len=256] [--b_first]

Side A is this interpreter in this environment. Side B runs `--python_b` (a virtual environment
with another JAX release, say) and appends `--xla_flags_b` to XLA_FLAGS. Each side builds
benchmarks/bare_step.py's step once, configured as `cpt-jax` runs (cpt_jax/cpu_runtime.py), on
its CPU devices. Then the two take turns timing `--steps` steps, A first in even rounds and B
first in odd ones, so that the machine's drift (~10% within a minute on a small shared CPU)
falls on both; only one side runs at a time. Flags that change the compiled program have to be
compared in separate processes, and so do JAX releases. On issue 14's 2-core CPU two processes
with the same settings differed by up to 2-3% over 16 rounds, depending on which started first
(`--b_first` starts B first; with neither `--python_b` nor `--xla_flags_b` the two sides measure
that noise): a difference within it is not a gain (benchmarks/cpu_vs_pytorch.md).
The last line reads `B/A median ratio: <x> (B faster in <n> of <rounds> rounds)`.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--python_b", default="",
                    help="Side B's Python interpreter (default: this one). It needs the "
                         "project's dependencies; the project itself is read from this tree.")
parser.add_argument("--xla_flags_b", default="", help="Appended to XLA_FLAGS on side B.")
parser.add_argument("--rounds", type=int, default=12)
parser.add_argument("--steps", type=int, default=10, help="Steps per turn.")
parser.add_argument("--preset", default="tiny", help="model_config's preset.")
parser.add_argument("--rows", type=int, default=16, help="Rows per device.")
parser.add_argument("--seq_len", type=int, default=256)
parser.add_argument("--b_first", action="store_true", help="Start side B's process first.")
parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # A side's process.


def serve(args) -> None:
  """One side: build the step, say what runs it, then time `--steps` steps for each line read."""
  from cpt_jax import cpu_runtime
  cpu_runtime.configure()  # Re-executes this process with glibc's tunables where they apply.
  import jax

  from benchmarks import bare_step
  step = bare_step.BareStep(bare_step.preset_config(args.preset, args.seq_len, args.rows))
  print(json.dumps({"jax": jax.__version__, "python": platform.python_version(),
                    "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
  for _ in sys.stdin:
    print(step.tokens_per_second(args.steps), flush=True)


class Side:
  """A side's process, started with its interpreter and XLA_FLAGS, ready to time turns."""

  def __init__(self, name: str, python: str, extra_xla_flags: str, args):
    self.name = name
    environ = dict(os.environ)
    environ["XLA_FLAGS"] = " ".join(filter(None, (environ.get("XLA_FLAGS", ""),
                                                  extra_xla_flags)))
    # The tree's cpt_jax and benchmarks, whichever environment the interpreter belongs to.
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, (ROOT, environ.get("PYTHONPATH"))))
    self._stderr = tempfile.TemporaryFile(mode="w+")  # JAX's warnings; shown if it fails.
    self._process = subprocess.Popen(
        [python, "-m", "benchmarks.process_ab", "--serve", f"--preset={args.preset}",
         f"--rows={args.rows}", f"--seq_len={args.seq_len}", f"--steps={args.steps}"],
        cwd=ROOT, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._stderr, text=True)
    self.runs_with = json.loads(self._reply())

  def _reply(self) -> str:
    line = self._process.stdout.readline()
    if not line:
      self._stderr.seek(0)
      sys.stderr.write(self._stderr.read()[-3000:])
      sys.exit(f"process_ab: side {self.name}'s process exited with status "
               f"{self._process.wait()} (its stderr's end above)")
    return line

  def time_turn(self) -> float:
    """Tokens/s over `--steps` steps."""
    self._process.stdin.write("go\n")
    self._process.stdin.flush()
    return float(self._reply())

  def close(self) -> None:
    self._process.stdin.close()
    self._process.wait()
    self._stderr.close()


def main(args) -> None:
  python_b = args.python_b or sys.executable
  if not (os.path.isfile(python_b) and os.access(python_b, os.X_OK)):
    parser.error(f"--python_b: {python_b} is not an executable file")
  if args.rounds < 1 or args.steps < 1:
    parser.error("--rounds and --steps must be at least 1")
  starts = [("A", sys.executable, ""), ("B", python_b, args.xla_flags_b)]
  sides = {name: Side(name, *setting, args)
           for name, *setting in (starts[::-1] if args.b_first else starts)}
  a, b = sides["A"], sides["B"]
  for name, side in sorted(sides.items()):
    print(f"{name}: jax {side.runs_with['jax']}, Python {side.runs_with['python']}, "
          f"XLA_FLAGS={side.runs_with['xla_flags']!r}", flush=True)
  for side in (a, b):  # Untimed: the side built first has sat idle while the other compiled.
    side.time_turn()
  rates = {a: [], b: []}
  ratios = []
  for round_index in range(args.rounds):
    for side in (a, b) if round_index % 2 == 0 else (b, a):
      rates[side].append(side.time_turn())
    ratios.append(rates[b][-1] / rates[a][-1])
    print(f"round {round_index + 1}: A {rates[a][-1]:,.0f} tok/s, B {rates[b][-1]:,.0f} tok/s, "
          f"B/A {ratios[-1]:.3f}", flush=True)
  for side in (a, b):
    print(f"{side.name} median {statistics.median(rates[side]):,.0f} tok/s")
    side.close()
  print(f"B/A median ratio: {statistics.median(ratios):.3f} "
        f"(B faster in {sum(ratio > 1 for ratio in ratios)} of {args.rounds} rounds)")


if __name__ == "__main__":
  parsed = parser.parse_args()
  if parsed.serve:
    serve(parsed)
  else:
    main(parsed)
