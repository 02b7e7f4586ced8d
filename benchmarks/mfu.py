"""Training throughput per device and model FLOPs utilization (MFU).

  python -m benchmarks.mfu [--presets=pythia-160m,pythia-410m] [--batch_per_device=0]
      [--seq_len=2048] [--remat=none] [--loss_chunk_tokens=0] [--head_matmul_dtype=float32]
      [--steps=20] [--device_memory=BYTES]

On a GPU or TPU: the given presets at sequence length 2048 in bfloat16, each at the largest
batch per device whose compiled step fits the device (`cpt_jax/step_memory.py`: XLA's plan; a
line through two planned sizes predicts the next, four or five compiles in all;
--batch_per_device skips them), and MFU = model FLOPs per token (`model_config.flops_per_token`,
PaLM's convention) x tokens/s over the devices' peak dense bf16 FLOP/s
(`cpt_jax/device_peaks.py`). No remat by default: recomputed
FLOPs count for nothing in MFU, so remat pays only where it lets a batch fit that would not.
On a CPU: the tiny preset at 128 tokens in float32, batch 8 per device (the host reports no
capacity unless --device_memory gives one), with no MFU (no known peak). Target on one H100:
MFU >= 45% for pythia-410m.
The last line reads `mfu: <x>` for the last preset (or `mfu: n/a`).
"""

import argparse

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", default="")
parser.add_argument("--batch_per_device", type=int, default=0,
                    help="Rows per device (0: the most that fit; 8 where "
                         "the device reports no capacity).")
parser.add_argument("--seq_len", type=int, default=0, help="Default: 128 on a CPU, else 2048.")
parser.add_argument("--remat", default="none", help="model.remat: none, dots or full.")
parser.add_argument("--loss_chunk_tokens", type=int, default=0,
                    help="model.loss_chunk_tokens: the head and loss in pieces (0: at once).")
parser.add_argument("--head_matmul_dtype", default="float32",
                    help="model.head_matmul_dtype: float32, or compute (bfloat16 operands).")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--device_memory", type=float, default=0,
                    help="One device's memory in bytes (0: what the device reports); the "
                         "batch is planned for step_memory.FITTING_SHARE of it.")
args = parser.parse_args()

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402

from benchmarks import bare_step  # noqa: E402
from cpt_jax import device_peaks  # noqa: E402
from cpt_jax import model as model_lib  # noqa: E402
from cpt_jax import model_config  # noqa: E402
from cpt_jax import step_memory  # noqa: E402

# The timed step was compiled once already, while planning the batch.
bare_step.use_persistent_compile_cache()


def preset_config(preset: str, seq_len: int, batch_per_device: int):
  return bare_step.preset_config(preset, seq_len, batch_per_device, remat=args.remat,
                                 loss_chunk_tokens=args.loss_chunk_tokens,
                                 head_matmul_dtype=args.head_matmul_dtype)


def batch_per_device(preset: str, seq_len: int, capacity: float | None) -> int:
  """--batch_per_device, or the most rows that fit `capacity`; says what it planned."""
  if args.batch_per_device or not capacity:
    return args.batch_per_device or 8
  rows, planned = step_memory.rows_that_fit(preset_config(preset, seq_len, 1), capacity)
  print(f"{preset}: planned per device (" + ", ".join(
      f"{tried} x {seq_len}: {size:,} bytes" for tried, size in sorted(planned.items()))
      + f") of {capacity:,.0f}")
  if not rows:
    raise SystemExit(f"{preset}: one row of {seq_len} tokens does not fit the device; try "
                     "--remat=full or a shorter --seq_len")
  return rows


def main():
  on_cpu = jax.default_backend() == "cpu"
  presets = (args.presets or ("tiny" if on_cpu else "pythia-160m,pythia-410m")).split(",")
  seq_len = args.seq_len or (128 if on_cpu else 2048)
  peak = device_peaks.peak_flops_per_device()
  capacity = args.device_memory or step_memory.device_capacity()
  mfu = None
  for preset in presets:
    rows = batch_per_device(preset, seq_len, capacity)
    config = preset_config(preset, seq_len, rows)
    model = model_config.from_config_dict(config.model)
    total, _ = model_lib.parameter_counts(model)
    flops = model_lib.training_flops_per_token(model, seq_len)
    per_device = bare_step.BareStep(config).tokens_per_second(args.steps) / jax.local_device_count()
    mfu = per_device * flops / peak if peak else None
    print(f"{preset} ({total:,} params) on {jax.devices()[0].device_kind}, {rows} x {seq_len} "
          f"per device, remat {args.remat}, head {args.head_matmul_dtype}: "
          f"{per_device:,.0f} tokens/s per device, "
          f"{flops:.3g} FLOPs/token, MFU "
          f"{f'{mfu:.1%}' if mfu is not None else 'n/a (unknown peak)'}")
  print(f"mfu: {mfu:.3f}" if mfu is not None else "mfu: n/a")


if __name__ == "__main__":
  main()
