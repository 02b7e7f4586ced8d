"""Training throughput per device and model FLOPs utilization (MFU).

  python -m benchmarks.mfu [--presets=pythia-160m,pythia-410m] [--batch_per_device=8]
      [--seq_len=2048] [--steps=20]

On a GPU or TPU: the given presets at sequence length 2048 in bfloat16 (remat on), MFU =
model FLOPs per token (`model_config.flops_per_token`, PaLM's convention) x tokens/s over the
devices' peak dense bf16 FLOP/s (`cpt_jax/device_peaks.py`). On a CPU: the tiny preset at 128 tokens
in float32, with no MFU (no known peak). Target on one H100: MFU >= 45% for pythia-410m.
The last line reads `mfu: <x>` for the last preset (or `mfu: n/a`).
"""

import argparse

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", default="")
parser.add_argument("--batch_per_device", type=int, default=8)
parser.add_argument("--seq_len", type=int, default=0)
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402

from configs import demo  # noqa: E402
from cpt_jax import device_peaks  # noqa: E402
from benchmarks.bare_step import BareStep  # noqa: E402

from cpt_jax import model as model_lib  # noqa: E402
from cpt_jax import model_config  # noqa: E402


def main():
  on_cpu = jax.default_backend() == "cpu"
  presets = (args.presets or ("tiny" if on_cpu else "pythia-160m,pythia-410m")).split(",")
  seq_len = args.seq_len or (128 if on_cpu else 2048)
  peak = device_peaks.peak_flops_per_device()
  mfu = None
  for preset in presets:
    config = demo.get_config("smoke")
    overrides = dict(max_seq_len=max(seq_len, model_config.preset(preset).max_seq_len))
    if not on_cpu:
      overrides.update(compute_dtype="bfloat16", remat="full")
    config.model = model_config.preset_config_dict(preset, **overrides)
    config.data.tokenizer.kind = "bytes"
    config.data.seq_len = seq_len
    config.data.global_batch_size = args.batch_per_device * jax.local_device_count()
    model = model_config.from_config_dict(config.model)
    total, _ = model_lib.parameter_counts(model)
    flops = model_lib.training_flops_per_token(model, seq_len)
    per_device = BareStep(config).tokens_per_second(args.steps) / jax.local_device_count()
    mfu = per_device * flops / peak if peak else None
    print(f"{preset} ({total:,} params) on {jax.devices()[0].device_kind}: {per_device:,.0f} "
          f"tokens/s per device, {flops:.3g} FLOPs/token, MFU "
          f"{f'{mfu:.1%}' if mfu is not None else 'n/a (unknown peak)'}")
  print(f"mfu: {mfu:.3f}" if mfu is not None else "mfu: n/a")


if __name__ == "__main__":
  main()
