"""Host overhead of the training loop: tokens/s of the bare compiled step vs the real loop.

  python -m benchmarks.step_throughput [--devices=N] [--rounds=3] [--steps=30]
      [--preset=tiny] [--batch=32] [--seq_len=128]

Both run the same model, optimizer and batch shape on the same devices. The bare step feeds
one pre-split batch in a tight loop and waits once at the end; the loop is `cpt-jax train`
itself (data pipeline, token counting, metrics fetched a step late at log intervals) with its
tokens/s read from metrics.jsonl after warm-up. Timings on small shared CPUs drift by ~10%
within a minute, so the two alternate for several rounds and the median per-round ratio is
reported. Target: loop/step ratio >= 0.95. On a GPU or TPU it also prints MFU. The last line
reads `loop/step ratio: <x>`.
"""

import argparse
import os
import tempfile

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, default=0, help="Emulated CPU devices (0: as is).")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--steps", type=int, default=30, help="Steps per measurement.")
parser.add_argument("--preset", default="tiny")
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--seq_len", type=int, default=128)
parser.add_argument("--dtype", default="", help="Compute dtype; default bfloat16 off CPU.")
args = parser.parse_args()
if args.devices:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402
import numpy as np  # noqa: E402

# Each round's loop recompiles the same programs: the persistent cache makes that cheap.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(),
                                                            "cpt_jax_benchmark_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from configs import demo  # noqa: E402
from cpt_jax import device_peaks  # noqa: E402
from benchmarks.bare_step import BareStep  # noqa: E402

from cpt_jax import metrics_writer, model, model_config, trainer  # noqa: E402


def benchmark_config():
  config = demo.get_config("smoke")
  config.model = model_config.preset_config_dict(args.preset)
  if args.dtype or jax.default_backend() != "cpu":
    config.model.compute_dtype = args.dtype or "bfloat16"
  config.model.max_seq_len = max(config.model.max_seq_len, args.seq_len)
  config.data.tokenizer.kind = "bytes"  # No BPE training: the model is what is measured.
  config.data.seq_len = args.seq_len
  config.data.global_batch_size = args.batch
  config.stages[0].steps = args.steps + 10  # Records after the first 10 steps are timed.
  config.stages = config.stages[:1]
  config.log.every = 5
  config.log.progress_bar = False
  config.eval.every = config.checkpoint.every = args.steps
  config.eval.max_batches = 1
  return config


def loop_tokens_per_second(config) -> float:
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(config, workdir)
    records, _ = metrics_writer.read_records(workdir)
  # Skip compilation (the first 10 steps) and the stage's last record (eval and save).
  steady = [r["tokens_per_second"] for r in records[2:-1]]
  return float(np.median(steady))


def main():
  config = benchmark_config()
  total, _ = model.parameter_counts(model_config.from_config_dict(config.model))
  flops = model.training_flops_per_token(model_config.from_config_dict(config.model),
                                         args.seq_len)
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}; preset {args.preset} "
        f"({total:,} params), batch {args.batch} x {args.seq_len}, {config.model.compute_dtype}")
  bare = BareStep(config)
  steps, loops = [], []
  for round_index in range(args.rounds):
    steps.append(bare.tokens_per_second(args.steps))
    loops.append(loop_tokens_per_second(config))
    print(f"round {round_index}: bare step {steps[-1]:,.0f} tokens/s, training loop "
          f"{loops[-1]:,.0f} tokens/s, ratio {loops[-1] / steps[-1]:.3f}")
  step, loop = float(np.median(steps)), float(np.median(loops))
  ratio = float(np.median(np.array(loops) / np.array(steps)))
  print(f"bare step: {step:,.0f} tokens/s (median of {args.rounds})")
  print(f"training loop: {loop:,.0f} tokens/s (median of {args.rounds})")
  peak = device_peaks.peak_flops_per_device()
  if peak:
    print(f"MFU (bare step): {step * flops / (peak * jax.device_count()):.1%}; "
          f"(loop): {loop * flops / (peak * jax.device_count()):.1%}")
  print(f"loop/step ratio: {ratio:.3f}")


if __name__ == "__main__":
  main()
