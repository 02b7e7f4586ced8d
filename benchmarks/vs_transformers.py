"""The training step against Hugging Face transformers (PyTorch) on the same model.

  python -m benchmarks.vs_transformers [--devices=N] [--rounds=3] [--steps=10]
      [--preset=tiny] [--batch=16] [--seq_len=256] [--no_compile]

Both sides build the same GPT-NeoX (cpt_jax's preset, converted with hf_convert) and time a
full training step on one fixed batch: forward, backward, global-norm clipping at 1.0, AdamW
(b 0.9/0.95, eps 1e-8, decay 0.1). cpt_jax is its compiled bare step (benchmarks/bare_step.py);
PyTorch runs eager and, unless --no_compile, under torch.compile. The three alternate for
several rounds (small shared CPUs drift by ~10% within a minute) and the per-round medians are
reported. On a CPU both use float32; on a GPU bfloat16 (autocast for PyTorch) and SDPA.
The last line reads `cpt_jax/transformers ratio: <x>`, against the faster PyTorch variant.
"""

import argparse
import os
import statistics
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, default=0, help="Emulated CPU devices (0: as is).")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--steps", type=int, default=10, help="Steps per measurement.")
parser.add_argument("--preset", default="tiny")
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--seq_len", type=int, default=256)
parser.add_argument("--no_compile", action="store_true", help="Skip torch.compile.")
args = parser.parse_args()
if args.devices:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

import jax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.bare_step import BareStep  # noqa: E402
from configs import demo  # noqa: E402
from cpt_jax import hf_convert, model_config  # noqa: E402

ON_CPU = jax.default_backend() == "cpu"


def cpt_jax_config():
  config = demo.get_config("smoke")
  config.model = model_config.preset_config_dict(
      args.preset, max_seq_len=max(args.seq_len, model_config.preset(args.preset).max_seq_len),
      compute_dtype="float32" if ON_CPU else "bfloat16")
  config.data.tokenizer.kind = "bytes"
  config.data.seq_len, config.data.global_batch_size = args.seq_len, args.batch
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
    self.tokens = torch.randint(0, model.vocab_size, (args.batch, args.seq_len), device=device)
    self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=not ON_CPU)
    self.device = device
    self.tokens_per_second(2)  # Warm up (and compile).

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
    return steps * args.batch * args.seq_len / (time.perf_counter() - start)


def main():
  config = cpt_jax_config()
  model = model_config.from_config_dict(config.model)
  print(f"{args.preset}, batch {args.batch} x {args.seq_len}, {model.compute_dtype}; jax "
        f"{jax.__version__} on {jax.devices()[0].device_kind} x {jax.device_count()}; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}")
  contenders = {"cpt_jax": BareStep(config), "torch eager": TorchStep(model, False)}
  if not args.no_compile:
    try:
      contenders["torch.compile"] = TorchStep(model, True)
    except Exception as error:  # No C++ toolchain, an unsupported op, ...: say so, go on.
      print(f"torch.compile unavailable here: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}")
  rounds = {name: [] for name in contenders}
  for round_index in range(args.rounds):
    for name, contender in contenders.items():
      rounds[name].append(contender.tokens_per_second(args.steps))
    print(f"round {round_index + 1}: " + ", ".join(
        f"{name} {values[-1]:,.0f} tok/s" for name, values in rounds.items()))
  medians = {name: statistics.median(values) for name, values in rounds.items()}
  best_torch = max((name for name in medians if name != "cpt_jax"), key=medians.get)
  for name, value in medians.items():
    print(f"{name:14s} {value:>10,.0f} tok/s (median of {args.rounds})")
  print(f"cpt_jax/transformers ratio: {medians['cpt_jax'] / medians[best_torch]:.3f} "
        f"(against {best_torch})")


if __name__ == "__main__":
  main()
