"""The output head and loss in pieces (`model.loss_chunk_tokens`): memory and speed.

  python -m benchmarks.loss_chunks [--preset=tiny] [--vocab_size=131072] [--batch=8]
      [--seq_len=256] [--chunks=0,256,1024] [--rounds=3] [--steps=5]

For each piece size (0: the whole batch at once), the train step's memory per device as XLA
plans it (`cpt_jax/step_memory.py`) and its tokens/s, the sizes timed in turn each round
(median over rounds). A large vocabulary is where pieces pay: Llama 3's 128k logits of a
2048-token row are 1 GiB in float32, and their gradient as much again. On a CPU the tiny
preset with a 131,072-token vocabulary (the default); on an accelerator pythia-410m's shape
at 2048 tokens in bfloat16 with the same vocabulary.
The last line reads `loss pieces of <n>: memory x<m>, speed x<s>` for the last size against 0.
"""

import argparse
import statistics

from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="", help="Default: tiny on a CPU, else pythia-410m.")
parser.add_argument("--vocab_size", type=int, default=131072)
parser.add_argument("--batch", type=int, default=8, help="Rows per device.")
parser.add_argument("--seq_len", type=int, default=0, help="Default: 256 on a CPU, else 2048.")
parser.add_argument("--chunks", default="0,256,1024", help="Piece sizes in tokens; 0 first.")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--steps", type=int, default=5, help="Steps per measurement.")
args = parser.parse_args()

cpu_runtime.configure()  # The step as `cpt-jax` runs it (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402

from benchmarks import bare_step  # noqa: E402
from cpt_jax import step_memory  # noqa: E402

# The timed step was compiled once already, for its memory plan.
bare_step.use_persistent_compile_cache()


def chunked_config(preset: str, seq_len: int, chunk: int):
  return bare_step.preset_config(preset, seq_len, args.batch, vocab_size=args.vocab_size,
                                 loss_chunk_tokens=chunk)


def main():
  on_cpu = jax.default_backend() == "cpu"
  preset = args.preset or ("tiny" if on_cpu else "pythia-410m")
  seq_len = args.seq_len or (256 if on_cpu else 2048)
  chunks = [int(chunk) for chunk in args.chunks.split(",")]
  configs = {chunk: chunked_config(preset, seq_len, chunk) for chunk in chunks}
  memory = {chunk: step_memory.of_train_step(config) for chunk, config in configs.items()}
  steps = {chunk: bare_step.BareStep(config) for chunk, config in configs.items()}
  speeds = {chunk: [] for chunk in chunks}
  for round_index in range(args.rounds):
    for chunk in chunks:
      speeds[chunk].append(steps[chunk].tokens_per_second(args.steps))
    print(f"round {round_index + 1}: " + ", ".join(
        f"pieces of {chunk or 'all'} {speeds[chunk][-1]:,.0f} tok/s" for chunk in chunks))
  print(f"{preset} with a {args.vocab_size:,}-token vocabulary, {args.batch} x {seq_len} per "
        f"device on {jax.devices()[0].device_kind} x {jax.local_device_count()}:")
  for chunk in chunks:
    print(f"  pieces of {chunk or 'all'}: {memory[chunk].describe()}, "
          f"{statistics.median(speeds[chunk]):,.0f} tok/s")
  first, last = chunks[0], chunks[-1]
  print(f"loss pieces of {last}: memory x{memory[last].total / memory[first].total:.2f}, "
        f"speed x{statistics.median(speeds[last]) / statistics.median(speeds[first]):.2f}")


if __name__ == "__main__":
  main()
