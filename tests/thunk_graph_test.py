"""Tests for benchmarks/thunk_graph.py: it reads the tiny step's thunks and their memory from
XLA:CPU's dump and schedules them by data flow and by shared memory."""

import re

import run_helpers as helpers


def test_on_one_thread_both_graphs_take_the_thunks_time_and_reuse_costs_nothing():
  output = helpers.benchmark("thunk_graph", "--batch_per_device=2", "--seq_len=32",
                             "--steps=1", "--threads=1", "--top=3")
  thunks, traced, total_ms = re.search(r"tiny, 2 x 32: (\d+) thunks \((\d+) traced\), "
                                       r"([\d.]+) ms of them a step", output).groups()
  assert int(thunks) > 100 and traced == thunks, output
  rows = {label: (int(edges.replace(",", "")), float(path), float(scheduled))
          for label, edges, path, scheduled in re.findall(
              r"^  (the data it reads|shared memory) +([\d,]+) +([\d.]+) ms +([\d.]+) ms$",
              output, re.MULTILINE)}
  data, shared = rows["the data it reads"], rows["shared memory"]
  assert data[0] < shared[0], output  # Every data edge is shared memory too (checked there).
  assert data[1] <= shared[1] <= float(total_ms) + 0.1, output
  assert abs(data[2] - float(total_ms)) <= 0.1 and abs(shared[2] - float(total_ms)) <= 0.1
  # One thread idles only when no thunk is ready: none waits for shared memory alone then.
  assert re.search(r"waited for shared memory: 0.0 ms a step, by JAX op:\nbuffer", output), output
  assert output.strip().endswith("buffer reuse costs: 0.000"), output
