"""The training step against Hugging Face transformers (PyTorch) on the same model.

  python -m benchmarks.vs_transformers [--devices=N] [--cores=N] [--rounds=3] [--steps=10]
      [--preset=tiny] [--batch=16] [--seq_len=256] [--no_compile] [--no_eager] [--xla_attention]
      [--head_matmul_dtype=float32]
      [--onednn] [--torch_glibc_defaults] [--alone] [--peak_flops=F]

Both sides build the same GPT-NeoX (cpt_jax's preset, converted with hf_convert) and time a
full training step on one fixed batch: forward, backward, global-norm clipping at 1.0, AdamW
(b 0.9/0.95, eps 1e-8, decay 0.1). cpt_jax is its compiled bare step
(benchmarks/bare_step.py); PyTorch runs eager and, unless --no_compile, under torch.compile.
Each runs in its own process. On a CPU they alternate for several rounds, after an untimed one
(small shared CPUs drift by ~10% within a minute); on an accelerator (or with --alone) each
runs its rounds alone, since together they would not fit its memory. The per-contender medians
are reported; alternating, also each round's ratio of cpt_jax to the faster PyTorch and their
median. On a CPU each contender's line also gives the cores its process kept busy while timed
(CPU time over wall time, the median of its turns). PyTorch's OpenMP workers spin while they
wait, so its figure counts that waiting too.
On a CPU both use float32 and the tiny preset at 256 tokens; on a GPU bfloat16 (autocast for
PyTorch), SDPA, and pythia-410m at 2048 tokens unless --preset and --seq_len say otherwise.
Where the device's peak FLOP/s is known (cpt_jax/device_peaks.py, or --peak_flops) each
contender's MFU is printed too: model FLOPs per token (PaLM's convention, as
benchmarks/mfu.py) x tokens/s over the peak of the devices it runs on. Every contender runs
with the glibc tunables `cpt-jax` sets for itself (cpt_jax/cpu_runtime.py: huge pages, freed
memory kept for reuse), since PyTorch gains from them too; --torch_glibc_defaults also times
PyTorch eager without them, as a PyTorch script runs when started by hand. --cores=1 runs
every contender on one core: the frameworks' kernels compared without their threading, which
on two cores is where cpt_jax loses (README, "Benchmarks").
The last line reads `cpt_jax/transformers ratio: <x>`, against the faster PyTorch variant.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, default=0, help="Emulated CPU devices (0: as is).")
parser.add_argument("--cores", type=int, default=0,
                    help="Run every contender on the first N of the CPUs this process may "
                         "use (0: all of them).")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--steps", type=int, default=10, help="Steps per measurement.")
parser.add_argument("--preset", default="", help="Default: tiny on a CPU, else pythia-410m.")
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--seq_len", type=int, default=0, help="Default: 256 on a CPU, else 2048.")
parser.add_argument("--no_compile", action="store_true", help="Skip torch.compile.")
parser.add_argument("--no_eager", action="store_true", help="Skip PyTorch eager.")
parser.add_argument("--xla_attention", action="store_true",
                    help="Also time cpt_jax with model.attention=xla, side by side.")
parser.add_argument("--head_matmul_dtype", default="float32",
                    help="cpt_jax's model.head_matmul_dtype; compute: bfloat16 operands on a GPU, "
                         "as transformers' head under autocast.")
parser.add_argument("--onednn", action="store_true",
                    help="Also time cpt_jax with XLA:CPU's oneDNN matmuls (CPT_JAX_ONEDNN=1).")
parser.add_argument("--torch_glibc_defaults", action="store_true",
                    help="Also time PyTorch eager without cpt-jax's glibc tunables.")
parser.add_argument("--alone", action="store_true",
                    help="Each contender times its rounds alone and exits before the next "
                         "starts (the default on accelerators, whose memory they would not "
                         "fit together); else they alternate round by round.")
parser.add_argument("--peak_flops", type=float, default=0,
                    help="One device's peak FLOP/s for MFU (0: its datasheet figure where "
                         "cpt_jax/device_peaks.py knows the device).")
args = parser.parse_args()
if args.no_eager and args.no_compile:
  parser.error("--no_eager with --no_compile leaves no PyTorch contender")
if args.cores:  # Before XLA and OpenMP size their thread pools; the contenders inherit it.
  allowed = sorted(os.sched_getaffinity(0))
  if not 0 < args.cores <= len(allowed):
    parser.error(f"--cores={args.cores}: this process may use {len(allowed)} CPUs")
  os.sched_setaffinity(0, allowed[:args.cores])
# This process only looks at the accelerator: it must not take its memory from the contenders.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if args.devices and "device_count" not in os.environ.get("XLA_FLAGS", ""):  # Kept by children.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402

from benchmarks.bare_step import BareStep  # noqa: E402
from configs import demo  # noqa: E402
from cpt_jax import device_peaks, hf_convert, model_config  # noqa: E402
from cpt_jax import model as model_lib  # noqa: E402

ON_CPU = jax.default_backend() == "cpu"
PRESET = args.preset or ("tiny" if ON_CPU else "pythia-410m")
SEQ_LEN = args.seq_len or (256 if ON_CPU else 2048)
_XLA_ATTENTION = "cpt_jax (xla attention)"
_ONEDNN = "cpt_jax (oneDNN)"  # CPT_JAX_ONEDNN=1: see cpt_jax/cpu_runtime.py.
_TORCH_GLIBC_DEFAULTS = "torch eager (glibc defaults)"


def _import_torch() -> None:
  """torch and transformers, as module globals, in the processes that use them: a cpt_jax
  contender's process skips their import (~6 s each)."""
  global torch, transformers
  import torch
  import transformers


def cpt_jax_config():
  config = demo.get_config("smoke")
  config.model = model_config.preset_config_dict(
      PRESET, max_seq_len=max(SEQ_LEN, model_config.preset(PRESET).max_seq_len),
      compute_dtype="float32" if ON_CPU else "bfloat16",
      head_matmul_dtype=args.head_matmul_dtype)
  config.data.tokenizer.kind = "bytes"
  config.data.seq_len, config.data.global_batch_size = SEQ_LEN, args.batch
  config.stages = config.stages[:1]
  return config


class TorchStep:
  """transformers' GPTNeoXForCausalLM with the same shape, optimizer and clipping."""

  def __init__(self, model: model_config.ModelConfig, compile_model: bool):
    device = "cpu" if ON_CPU else "cuda"
    hf = hf_convert.hf_config_from_model(model, bos_token_id=0, eos_token_id=0,
                                         dtype="float32")
    hf_config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(0)
    self.model = transformers.AutoModelForCausalLM.from_config(
        hf_config, attn_implementation="sdpa").to(device).train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4, betas=(0.9, 0.95),
                                       eps=1e-8, weight_decay=0.1)
    self.forward = torch.compile(self.model) if compile_model else self.model
    self.tokens = torch.randint(0, model.vocab_size, (args.batch, SEQ_LEN), device=device)
    self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=not ON_CPU)
    self.device = device
    self.tokens_per_second(2)  # Warm up (and compile).
    if compile_model:  # Its idle compile workers would take CPU from the other contenders.
      from torch._inductor import async_compile
      async_compile.shutdown_compile_workers()

  def step(self):
    with self.autocast:
      loss = self.forward(input_ids=self.tokens, labels=self.tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss

  def tokens_per_second(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      loss = self.step()
    loss.item()  # Waits for the device.
    if self.device == "cuda":
      torch.cuda.synchronize()
    return steps * args.batch * SEQ_LEN / (time.perf_counter() - start)


def _build(name: str, config):
  if name == _XLA_ATTENTION:
    config.model.attention = "xla"
  if name.startswith("cpt_jax"):
    return BareStep(config)
  _import_torch()
  return TorchStep(model_config.from_config_dict(config.model),
                   compile_model=name == "torch.compile")


def _environment_changes(name: str) -> dict[str, str]:
  """What a contender's process changes in this one's environment: XLA reads its flags and
  glibc its tunables when the child starts."""
  if name.startswith("cpt_jax") and not ON_CPU:
    # Alone on the accelerator (main): its memory taken at once, as `cpt-jax` takes it. Grown
    # piece by piece, pythia-410m's step at 32 x 2048 found no free block for its 70 GB of
    # temporaries on an H200, where taken at once it runs.
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
  if name == _ONEDNN:
    return {"XLA_FLAGS": cpu_runtime.xla_flags_with_onednn(os.environ)}
  if name == _TORCH_GLIBC_DEFAULTS:
    ours = {**cpu_runtime.HUGE_PAGES, **cpu_runtime.MEMORY_REUSE}
    return {"GLIBC_TUNABLES": ":".join(
                item for item in os.environ.get("GLIBC_TUNABLES", "").split(":")
                if item.split("=")[0] not in ours),
            cpu_runtime.HUGE_PAGES_OPT_OUT: "0", cpu_runtime.MEMORY_REUSE_OPT_OUT: "0"}
  return {}


def _serve(name: str, connection) -> None:
  """A contender in its own process: builds (and warms up), then per request takes one
  untimed step and times `steps`."""
  try:
    contender = _build(name, cpt_jax_config())
  except Exception as error:  # torch.compile without a C++ toolchain, ...: say so, go on.
    connection.send(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
    return
  connection.send(("ready", os.environ.get("GLIBC_TUNABLES") or "(none)",
                   len(os.sched_getaffinity(0))))
  while steps := connection.recv():
    contender.tokens_per_second(1)  # Untimed: a turn's first step, after the other
    # contenders' turns, ran 3-10% slower for every contender (caches, freed pages).
    # process_time: the CPU time of all this process's threads, the workers included.
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    tokens_per_second = contender.tokens_per_second(steps)
    connection.send((tokens_per_second,
                     (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)))


def _start(context, name: str):
  """(process, connection) of contender `name`, its process started with its environment."""
  parent, child = context.Pipe()
  process = context.Process(target=_serve, args=(name, child), daemon=True)
  changes = _environment_changes(name)
  kept = {key: os.environ.get(key) for key in changes}
  os.environ.update(changes)
  process.start()
  child.close()  # Only the child holds its end: recv() raises EOFError if the child dies.
  for key, value in kept.items():
    if value is None:
      os.environ.pop(key)
    else:
      os.environ[key] = value
  return process, parent


def _ready(name: str, process, connection) -> bool:
  """Waits for contender `name` to be built; says how it runs, or why it does not."""
  try:
    answer = connection.recv()
  except EOFError:  # It died without a word: XLA aborted while compiling, say.
    process.join()
    answer = f"its process exited with code {process.exitcode}"
  if answer[0] == "ready":
    cpus = f"{answer[2]} CPU" + ("s" if answer[2] > 1 else "")
    print(f"{name} runs on {cpus} with GLIBC_TUNABLES {answer[1]}")
    return True
  print(f"{name} unavailable here: {answer}")
  return False


def _turn(connection) -> tuple[float, float]:
  """One timed turn of a contender: its tokens/s over --steps steps, and the cores its process
  kept busy meanwhile (CPU time over wall time)."""
  connection.send(args.steps)
  return connection.recv()


def main():
  _import_torch()
  config = cpt_jax_config()
  model = model_config.from_config_dict(config.model)
  print(f"{PRESET}, batch {args.batch} x {SEQ_LEN}, {model.compute_dtype}; jax "
        f"{jax.__version__} on {jax.devices()[0].device_kind} x {jax.device_count()}; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}; attention {model.attention}, head matmuls "
        f"{model.head_dtype}")
  # One process per contender, as a user runs one framework: in one process, torch's
  # OpenMP workers and allocator slowed the JAX step after them by 7-12%.
  context = multiprocessing.get_context("spawn")
  names = (("cpt_jax",) + ((_XLA_ATTENTION,) if args.xla_attention else ())
           + ((_ONEDNN,) if args.onednn else ()) + (() if args.no_eager else ("torch eager",))
           + ((_TORCH_GLIBC_DEFAULTS,) if args.torch_glibc_defaults else ())
           + (() if args.no_compile else ("torch.compile",)))
  turns = {}  # Contender -> its turns' (tokens/s, cores busy).
  alternating = not args.alone and jax.default_backend() == "cpu"
  if alternating:
    # All alive, taking turns round by round: small shared CPUs drift by ~10% within a
    # minute. They build (compile, warm up) at once; only the build's time sees that.
    started = [(name, *_start(context, name)) for name in names]
    contenders = {name: connection for name, process, connection in started
                  if _ready(name, process, connection)}
    turns = {name: [] for name in contenders}
    # One untimed round first: with torch.compile built beside it, torch eager's first turn
    # after the builds ran 5-10% below its later turns (round 1 gave cpt_jax its best ratio in
    # 6 runs of 6; the untimed round was torch eager's slowest turn in 3 of 3).
    for connection in contenders.values():
      _turn(connection)
    for round_index in range(args.rounds):
      for name, connection in contenders.items():
        turns[name].append(_turn(connection))
      print(f"round {round_index + 1}: " + ", ".join(
          f"{name} {values[-1][0]:,.0f} tok/s" for name, values in turns.items()))
    for connection in contenders.values():
      connection.send(0)
  else:
    # One after another, each exiting before the next starts: together the contenders
    # would not fit one accelerator's memory.
    for name in names:
      process, connection = _start(context, name)
      if _ready(name, process, connection):
        turns[name] = [_turn(connection) for _ in range(args.rounds)]
        connection.send(0)
        process.join()
        print(f"{name}: rounds " + ", ".join(f"{value:,.0f}" for value, _ in turns[name])
              + " tok/s")
  rounds = {name: [value for value, _ in values] for name, values in turns.items()}
  medians = {name: statistics.median(values) for name, values in rounds.items()}
  torch_names = [name for name in medians if not name.startswith("cpt_jax")]
  if "cpt_jax" not in medians or not torch_names:
    sys.exit("cpt_jax/transformers ratio: n/a (a side did not run; its reason is above)")
  best_torch = max(torch_names, key=medians.get)
  if alternating:  # Rounds side by side in time: their ratios are free of the machine's drift.
    ratios = [ours / theirs for ours, theirs in zip(rounds["cpt_jax"], rounds[best_torch])]
    print(f"cpt_jax/{best_torch} round by round: " + " / ".join(f"{r:.3f}" for r in ratios)
          + f" (median {statistics.median(ratios):.3f})")
  peak = args.peak_flops or device_peaks.peak_flops_per_device()
  flops_per_token = model_lib.training_flops_per_token(model, SEQ_LEN)
  for name, value in medians.items():
    share = (f", {value / medians[best_torch]:.3f} of {best_torch}"
             if name.startswith("cpt_jax") else "")
    devices = jax.device_count() if name.startswith("cpt_jax") else 1  # PyTorch: one.
    mfu = f", MFU {value * flops_per_token / (peak * devices):.1%}" if peak else ""
    busy = (f", {statistics.median(cores for _, cores in turns[name]):.2f} cores busy"
            if ON_CPU else "")
    print(f"{name:30s} {value:>10,.0f} tok/s (median of {args.rounds}{share}{busy}{mfu})")
  print(f"cpt_jax/transformers ratio: {medians['cpt_jax'] / medians[best_torch]:.3f} "
        f"(against {best_torch})")


if __name__ == "__main__":
  main()
