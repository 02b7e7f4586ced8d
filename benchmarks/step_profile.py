"""Where a training step's time goes: its device ops, timed by jax.profiler, summed by kind.

  python -m benchmarks.step_profile [--preset=pythia-410m] [--batch_per_device=8]
      [--seq_len=2048] [--steps=3] [--head_matmul_dtype=float32] [--remat=none]
      [--loss_chunk_tokens=0] [--top=25] [--trace_dir=DIR]
  python -m benchmarks.step_profile --trace=FILE.xplane.pb [--steps=N] [--top=25]

Traces --steps bare steps (benchmarks/bare_step.py) and sums the time of the ops the device
ran, by kind (matmuls, attention, fusions of elementwise ops, reductions, copies,
collectives) and by kernel, per step, beside the step's wall time: the difference is time
the device sat idle (launches, the host). On a GPU the ops are its kernels, with the HLO op
each ran for (under a command buffer, its name); on a CPU the XLA thunks' spans, which
overlap across threads. The trace stays in
--trace_dir (TensorBoard's profile plugin or Perfetto read it) for a closer look; --trace
summarizes one taken elsewhere (a run's `profile.steps`, say). Defaults:
pythia-410m at 2048 tokens in bfloat16 on an accelerator, the tiny preset at 128 tokens in
float32 on a CPU. The last line reads `busy: <share of the step the device computed>`.
"""

import argparse
import collections
import glob
import os
import tempfile
import time
import warnings

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="", help="Default: tiny on a CPU, else pythia-410m.")
parser.add_argument("--batch_per_device", type=int, default=8)
parser.add_argument("--seq_len", type=int, default=0, help="Default: 128 on a CPU, else 2048.")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--head_matmul_dtype", default="float32", help="model.head_matmul_dtype.")
parser.add_argument("--remat", default="none", help="model.remat.")
parser.add_argument("--loss_chunk_tokens", type=int, default=0, help="model.loss_chunk_tokens.")
parser.add_argument("--top", type=int, default=25, help="Kernels listed, the longest first.")
parser.add_argument("--trace_dir", default="", help="Default: a new temporary folder.")
parser.add_argument("--trace", default="",
                    help="Only summarize this .xplane.pb (say, of a run's profile.steps), "
                         "taken over --steps steps; shares are then of the device ops' time.")

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from benchmarks import bare_step  # noqa: E402

# A kernel's kind, from the first of these its name or its HLO op's holds (lowercase).
KINDS = (("attention", ("sdpa", "fmha", "flash", "cudnn", "splash", "attention")),
         ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "matmul", "dot")),
         ("collective", ("all-reduce", "all_reduce", "allreduce", "nccl", "all-gather",
                         "reduce-scatter", "collective")),
         ("reduction", ("reduce", "reduction")),
         ("copy or transpose", ("copy", "transpose", "memcpy", "memset", "dynamic-update")),
         ("fusion", ("fusion", "loop_", "input_", "scatter", "gather")))


def kind_of(*names: str) -> str:
  for kind, markers in KINDS:
    if any(marker in name.lower() for name in names for marker in markers):
      return kind
  return "other"


def device_ops(data: ProfileData):
  """(kernel or thunk name, its HLO op, duration in ns) of every op the devices ran. Under a
  GPU's command buffers (CUDA graphs) a kernel's HLO op is the buffer's name."""
  planes = [plane for plane in data.planes if plane.name.startswith("/device:")]
  for plane in planes:  # Accelerators: their kernels, on the lines of their streams.
    for line in plane.lines:
      if not line.name.lower().startswith("stream"):  # "XLA Ops" etc. repeat the kernels.
        continue
      for event in line.events:
        yield event.name, str(_stats(event).get("hlo_op", "")), event.duration_ns
  if planes:
    return
  for plane in data.planes:  # A CPU: the thunks XLA ran, on the host's threads.
    for line in plane.lines:
      for event in line.events:
        if "hlo_op" in (stats := _stats(event)):
          yield event.name, str(stats["hlo_op"]), event.duration_ns


def _stats(event) -> dict:
  with warnings.catch_warnings():  # jaxlib's stats type warns of its missing __module__.
    warnings.simplefilter("ignore", DeprecationWarning)
    return {name: value for name, value in event.stats}


def summarize(trace: str, steps: int, wall_ms: float | None, top: int) -> float:
  """Prints the device ops of `trace` by kind and the `top` longest, per step and as shares
  of the step's wall time (or of the device ops' time, where that is not known); returns the
  device ops' milliseconds per step."""
  by_kernel, by_kind, counts, op_of = (collections.Counter(), collections.Counter(),
                                       collections.Counter(), {})
  for kernel, op, duration in device_ops(ProfileData.from_file(trace)):
    by_kernel[kernel] += duration / 1e6 / steps
    by_kind[kind_of(kernel, op)] += duration / 1e6 / steps
    counts[kernel] += 1
    op_of.setdefault(kernel, op)
  busy_ms = sum(by_kind.values())
  whole, of = (wall_ms, "the step") if wall_ms else (busy_ms, "device time")
  for kind, ms in by_kind.most_common():
    print(f"  {kind:20s} {ms:9.2f} ms {ms / whole:7.1%} of {of}")
  print(f"the {top} longest kernels (ms a step, share of {of}, runs a step, kind, "
        "name, HLO op):")
  for kernel, ms in by_kernel.most_common(top):
    op = op_of[kernel] if op_of[kernel] not in ("", kernel) else ""
    print(f"  {ms:8.2f} {ms / whole:6.1%} {counts[kernel] / steps:6.0f}  "
          f"{kind_of(kernel, op):18s} {kernel[:100]} {op}")
  return busy_ms


def traced_steps(step: bare_step.BareStep, steps: int, trace_dir: str):
  """(the trace's .xplane.pb, milliseconds a step, tokens/s) of `steps` bare steps run under
  jax.profiler, the trace written in `trace_dir`."""
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  tokens_per_second = step.tokens_per_second(steps)
  wall_ms = (time.perf_counter() - start) * 1e3 / steps
  jax.profiler.stop_trace()
  trace = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
              key=os.path.getmtime)
  return trace, wall_ms, tokens_per_second


def main():
  args = parser.parse_args()
  if args.trace:
    summarize(args.trace, args.steps, None, args.top)
    return
  on_cpu = jax.default_backend() == "cpu"
  preset = args.preset or ("tiny" if on_cpu else "pythia-410m")
  seq_len = args.seq_len or (128 if on_cpu else 2048)
  config = bare_step.preset_config(preset, seq_len, args.batch_per_device,
                                   head_matmul_dtype=args.head_matmul_dtype, remat=args.remat,
                                   loss_chunk_tokens=args.loss_chunk_tokens)
  step = bare_step.BareStep(config)  # Compiled and warmed up.
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="cpt_jax_profile_")
  trace, wall_ms, tokens_per_second = traced_steps(step, args.steps, trace_dir)
  print(f"{preset}, {args.batch_per_device} x {seq_len} per device on "
        f"{jax.devices()[0].device_kind} x {jax.local_device_count()}, "
        f"{config.model.compute_dtype}, head {args.head_matmul_dtype}, remat {args.remat}, "
        f"loss pieces {args.loss_chunk_tokens or 'none'}: {wall_ms:.1f} ms a step "
        f"({tokens_per_second:,.0f} tokens/s, under the profiler); trace in {trace}")
  busy_ms = summarize(trace, args.steps, wall_ms, args.top)
  print(f"busy: {busy_ms / wall_ms:.3f}")


if __name__ == "__main__":
  main()
