"""A call's time, for the benchmarks that alternate contenders' calls in one process."""

import time


def milliseconds_per_call(call, calls: int) -> float:
  """The mean of `calls` calls in milliseconds, after one untimed call: the first call after
  another contender's turn runs slower."""
  call()
  start = time.perf_counter()
  for _ in range(calls):
    call()
  return (time.perf_counter() - start) / calls * 1e3
