"""What XLA:CPU's buffer reuse costs the step: its thunks' dependencies by data flow alone and
as XLA:CPU's thunk executor orders them, by the buffers they share.

  python -m benchmarks.thunk_graph [--preset=tiny] [--batch_per_device=16] [--seq_len=256]
      [--steps=3] [--threads=N] [--top=8]

XLA:CPU runs a compiled step as a sequence of thunks (fusions, library products, copies) and
runs side by side those that do not conflict: a thunk waits for every earlier one that wrote
memory it reads or writes, or read memory it writes. XLA's buffer assignment places a
temporary in memory a dead one held, so thunks with no data between them wait for each other
too: one query block's attention backward for another's, say (issue 14).

This compiles the bare step (benchmarks/bare_step.py) with XLA's dump (its optimized HLO
and buffer assignment), traces --steps steps for each thunk's time, and prints both graphs'
edge counts and critical paths, the step's time on --threads threads (default: the CPUs
this process may use, the size of XLA's pool) as a list schedule of each graph: each thunk
starts on a free thread once the thunks it waits for are done, in the order it became
ready, for the time it took in the trace; and the time a thread sat idle in the executor's
schedule while thunks that had their data waited for shared memory, by JAX op (--top). The
traced times are those of two cores shared, and a large product's threads are in its own
time, so the schedule is an estimate, compared with the traced step's wall time, and its
cost an upper bound: it runs each thunk on one thread, where a large product uses them all
(with no reuse at all, XLA:CPU's cores were no busier; issue 14). The last line reads
`buffer reuse costs: <x>`, the schedule of the executor's graph over the data flow's, less
one.
"""

import argparse
import collections
import glob
import heapq
import os
import re
import shutil
import tempfile

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="tiny")
parser.add_argument("--batch_per_device", type=int, default=16)
parser.add_argument("--seq_len", type=int, default=256)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--top", type=int, default=8, help="Ops listed, the longest held first.")
parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(
    os, "sched_getaffinity") else os.cpu_count())
args = parser.parse_args()

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
WORK_DIR = tempfile.mkdtemp(prefix="cpt_jax_thunk_graph_")  # After configure()'s re-exec.
DUMP_DIR = os.path.join(WORK_DIR, "dump")
os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS"),
                                                 f"--xla_dump_to={DUMP_DIR}",
                                                 "--xla_dump_hlo_as_text")))
import jax  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from benchmarks import bare_step  # noqa: E402
from benchmarks import step_profile  # noqa: E402

# HLO instructions that name memory another one wrote: no thunk of their own.
_ALIASES = {"bitcast", "get-tuple-element", "tuple", "parameter", "constant"}
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%(\S+) = .*? ([a-z][a-z\-]*)\((.*)")
_VALUE = re.compile(r" value: <\d+ (\S+?)(\{[\d,]*\})? @\d+> \(size=(\d+),offset=(\d+)\)")


def buffer_slices(buffer_assignment: str) -> dict:
  """{instruction: {its output's tuple index, () for the whole: (allocation, first byte,
  end)}}."""
  slices = collections.defaultdict(dict)
  for line in buffer_assignment.splitlines():
    if line.startswith("allocation "):
      allocation = int(line.split()[1].rstrip(":"))
    elif match := _VALUE.match(line):
      name, index, size, offset = match.groups()
      index = tuple(int(i) for i in (index or "{}")[1:-1].split(",") if i)
      slices[name][index] = (allocation, int(offset), int(offset) + int(size))
  return slices


def entry_instructions(hlo: str):
  """(name, opcode, operand names, tuple index of a get-tuple-element, JAX op name) of the
  entry computation's instructions, in its schedule's order."""
  entry = hlo[hlo.index("\nENTRY "):]
  for line in entry.splitlines()[1:]:
    if not (match := _INSTRUCTION.match(line)):
      continue
    name, opcode, rest = match.groups()
    depth, end = 1, 0
    while depth:  # The operand list ends at its closing parenthesis.
      depth += {"(": 1, ")": -1}.get(rest[end], 0)
      end += 1
    index = re.search(r"\bindex=(\d+)", rest[end:]) if opcode == "get-tuple-element" else None
    op_name = re.search(r'op_name="([^"]*)"', rest[end:])
    yield (name, opcode, re.findall(r"%([\w.\-]+)", rest[:end - 1]), index and int(index[1]),
           op_name[1] if op_name else "")


class ThunkGraph:
  """The thunks of one compiled program with what each waits for: `data` (the thunks that
  produced its operands) and `conflicts` (the earlier thunks it shares memory with, one of
  the two writing it: what XLA:CPU's executor waits for)."""

  def __init__(self, hlo: str, buffer_assignment: str):
    self._slices = buffer_slices(buffer_assignment)
    instructions = list(entry_instructions(hlo))
    self._defs = {name: (opcode, operands, index)
                  for name, opcode, operands, index, _ in instructions}
    self.names = [name for name, (opcode, _, _) in self._defs.items() if opcode not in _ALIASES]
    self.op_names = {name: op_name for name, _, _, _, op_name in instructions}
    position = {name: i for i, name in enumerate(self.names)}
    self.data = [{position[p] for operand in self._defs[name][1]
                  for p in self._producers(operand)} for name in self.names]
    self.conflicts = [set() for _ in self.names]
    uses = collections.defaultdict(list)  # allocation -> [(thunk, first byte, end, writes)]
    for j, name in enumerate(self.names):
      mine = [(piece, False) for operand in self._defs[name][1]
              for piece in self._memory(operand)]
      mine += [(piece, True) for piece in self._slices[name].values()]
      for (allocation, first, end), writes in mine:
        self.conflicts[j].update(i for i, other_first, other_end, other_writes in uses[allocation]
                                 if i != j and first < other_end and other_first < end
                                 and (writes or other_writes))
      for (allocation, first, end), writes in mine:
        uses[allocation].append((j, first, end, writes))
    # A thunk shares memory with each producer of its operands; one that does not is memory
    # this reading of the dump missed (a jaxlib whose dump's format changed, say).
    if missed := [(self.names[i], self.names[j]) for j, producers in enumerate(self.data)
                  for i in producers - self.conflicts[j]]:
      raise ValueError(f"buffer assignment not understood: {missed[0][1]} reads what "
                       f"{missed[0][0]} wrote, but no memory of theirs overlaps")

  def _memory(self, name: str, index: tuple = ()) -> list:
    """The slices instruction `name` (its tuple element `index`, the whole for ()) names."""
    opcode, operands, own_index = self._defs[name]
    if opcode == "bitcast":
      return self._memory(operands[0], index)
    if opcode == "get-tuple-element":
      return self._memory(operands[0], (own_index, *index))
    if opcode == "tuple":
      if not index:
        return [piece for operand in operands for piece in self._memory(operand)]
      return self._memory(operands[index[0]], index[1:])
    if index in self._slices[name]:
      return [self._slices[name][index]]
    return list(self._slices[name].values())

  def _producers(self, name: str) -> set:
    """The thunks that wrote the value `name` names."""
    opcode, operands, _ = self._defs[name]
    if opcode in ("bitcast", "get-tuple-element"):
      return self._producers(operands[0])
    if opcode == "tuple":
      return set().union(*map(self._producers, operands))
    return set() if opcode in ("parameter", "constant") else {name}


def critical_path(waits_for: list, durations: list) -> float:
  """The longest chain of thunks, each waiting for the one before, by their durations."""
  finish = []
  for j, duration in enumerate(durations):  # What a thunk waits for comes before it.
    finish.append(duration + max((finish[i] for i in waits_for[j]), default=0.0))
  return max(finish)


def list_schedule(waits_for: list, durations: list, threads: int) -> tuple[list, list]:
  """When each thunk starts and ends if `threads` threads run them, each started on a free
  thread once those it waits for are done, in the order it became ready."""
  waiting = [len(edges) for edges in waits_for]
  followers = [[] for _ in waits_for]
  for j, edges in enumerate(waits_for):
    for i in edges:
      followers[i].append(j)
  ready = collections.deque(j for j, count in enumerate(waiting) if not count)
  running, now, starts, ends = [], 0.0, [0.0] * len(durations), [0.0] * len(durations)
  while ready or running:
    while ready and len(running) < threads:
      j = ready.popleft()
      starts[j] = now
      heapq.heappush(running, (now + durations[j], j))
    now, done = heapq.heappop(running)
    ends[done] = now
    for j in followers[done]:
      waiting[j] -= 1
      if not waiting[j]:
        ready.append(j)
  return starts, ends


def held_back(graph: ThunkGraph, starts: list, ends: list, threads: int):
  """{JAX op: milliseconds a thread sat idle while thunks of that op had their data but
  waited for shared memory} in the schedule (`starts`, `ends`) of the executor's graph (an
  idle spell shared evenly among the thunks held)."""
  data_ready = [max((ends[i] for i in producers), default=0.0) for producers in graph.data]
  times = sorted(set(starts) | set(ends))
  idle = collections.Counter()
  for first, last in zip(times, times[1:]):
    if (running := sum(start <= first < end for start, end in zip(starts, ends))) == threads:
      continue
    held = [graph.op_names[name] or name for name, ready, start
            in zip(graph.names, data_ready, starts) if ready <= first and start >= last]
    for op_name in held:
      idle[op_name] += (threads - running) * (last - first) / len(held)
  return idle


def traced_durations(trace: str) -> dict:
  """{thunk: its mean milliseconds a run} in `trace`."""
  total, runs = collections.Counter(), collections.Counter()
  for kernel, _, duration in step_profile.device_ops(ProfileData.from_file(trace)):
    total[kernel] += duration / 1e6
    runs[kernel] += 1
  return {kernel: total[kernel] / runs[kernel] for kernel in total}


def main():
  if jax.default_backend() != "cpu":
    raise SystemExit("thunk_graph: XLA:CPU's thunk executor only; this process runs on "
                     f"{jax.default_backend()}")
  jax.config.update("jax_enable_compilation_cache", False)  # A cached step dumps nothing.
  config = bare_step.preset_config(args.preset, args.seq_len, args.batch_per_device)
  step = bare_step.BareStep(config)  # Compiled (and dumped) and warmed up.
  trace, wall_ms, _ = step_profile.traced_steps(step, args.steps,
                                                 os.path.join(WORK_DIR, "trace"))
  # The step is by far the largest program compiled; the others are its inputs' set-up.
  hlo_file = max(glob.glob(os.path.join(DUMP_DIR, "*.cpu_after_optimizations.txt")),
                 key=os.path.getsize)
  with open(hlo_file) as hlo, open(hlo_file[:-4] + "-buffer-assignment.txt") as assignment:
    graph = ThunkGraph(hlo.read(), assignment.read())
  times = traced_durations(trace)
  durations = [times.get(name, 0.0) for name in graph.names]
  print(f"{args.preset}, {args.batch_per_device} x {args.seq_len}: {len(graph.names)} thunks "
        f"({sum(name in times for name in graph.names)} traced), "
        f"{sum(durations):.1f} ms of them a step; {wall_ms:.1f} ms a step under the profiler")
  print(f"  {'waits for':24s} {'edges':>7s} {'critical path':>14s} "
        f"{f'on {args.threads} thread' + 's' * (args.threads != 1):>14s}")
  schedules = []
  for label, edges in (("the data it reads", graph.data), ("shared memory", graph.conflicts)):
    schedules.append(list_schedule(edges, durations, args.threads))
    print(f"  {label:24s} {sum(map(len, edges)):7,d} "
          f"{critical_path(edges, durations):11.1f} ms {max(schedules[-1][1]):11.1f} ms")
  idle = held_back(graph, *schedules[1], args.threads)
  print(f"threads idle while thunks with their data waited for shared memory: "
        f"{sum(idle.values()):.1f} ms a step, by JAX op:")
  for op_name, ms in idle.most_common(args.top):
    print(f"  {ms:8.2f}  {op_name[-100:]}")
  cost = max(schedules[1][1]) / max(schedules[0][1]) - 1
  print(f"buffer reuse costs: {round(cost, 3) + 0.0:.3f}")  # + 0.0: no "-0.000".


if __name__ == "__main__":
  try:
    main()
  finally:
    shutil.rmtree(WORK_DIR)
