"""The step's products with weights, one at a time: cpt_jax's (XLA:CPU) against PyTorch's.

  python -m benchmarks.weight_products [--preset=tiny] [--tokens=4096] [--rounds=5]
      [--calls=20]

Each weight of a preset's block (the fused q/k/v projection, attention's output, the MLP's two,
or three in a Llama block) and the output head, at `--tokens` rows (the step's batch x
sequence: 16 x 256 by default), is timed in its three products: the forward (x @ W), the
input's gradient (dy @ W^T) and the weight's gradient (x^T @ dy, contracting the rows), each in
float32 on this machine's CPUs as cpt_jax's step and transformers' step run them (jitted JAX
products on the rows' 2-D view, as `model._Linear` gives them to XLA; torch's addmm and mm, as
its autograd runs nn.Linear). JAX and torch alternate for several rounds in one process, and
the per-round medians are reported per product, then summed over the model (the block's weights
once per layer): on the 2-core CPU of issue 14, the weight gradients were where transformers'
step gained on cpt_jax's (README, "Benchmarks"). The last line reads `cpt_jax/torch weight
products: <x>` (above 1: cpt_jax's are faster).
"""

import argparse
import statistics

from benchmarks import call_timing
from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="tiny", help="model_config's preset (its shapes).")
parser.add_argument("--tokens", type=int, default=16 * 256, help="Rows of each product.")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--calls", type=int, default=20, help="Calls per measurement.")
args = parser.parse_args()

cpu_runtime.configure()  # As `cpt-jax` runs (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cpt_jax import hf_convert  # noqa: E402
from cpt_jax import model_config  # noqa: E402

PRODUCTS = ("forward", "input gradient", "weight gradient")


def weights(config: model_config.ModelConfig) -> dict[str, tuple[int, int, int]]:
  """Each weight's (in, out, how many the model holds), read from the model's parameters: a
  block's kernels once per layer (a Llama block's MLP gate too), the output head once."""
  block_kernels = {}
  for path, shape in hf_convert.shapes(config).items():  # By dotted path, as checkpoints name them.
    *where, leaf = path.split(".")
    if where[:2] == ["blocks", "0"] and leaf == "kernel" and len(shape) == 2:
      block_kernels[" ".join(where[2:])] = (*shape, config.num_layers)
  return {**block_kernels, "head": (config.model_dim, config.vocab_size, 1)}  # Tied or not: (D, V).


def jax_calls(rows: int, fan_in: int, fan_out: int) -> dict:
  """The three products as the step's jitted program computes them, arguments not constants
  (XLA would fold constants into the program)."""
  rng = np.random.default_rng(0)
  x, w, dy = (jnp.asarray(rng.standard_normal(shape, np.float32))
              for shape in ((rows, fan_in), (fan_in, fan_out), (rows, fan_out)))
  forward = jax.jit(lambda x, w: jnp.dot(x, w))
  input_gradient = jax.jit(lambda dy, w: jnp.dot(dy, w.T))
  weight_gradient = jax.jit(lambda x, dy: jnp.dot(x.T, dy))
  return dict(zip(PRODUCTS, (lambda: forward(x, w).block_until_ready(),
                             lambda: input_gradient(dy, w).block_until_ready(),
                             lambda: weight_gradient(x, dy).block_until_ready())))


def torch_calls(rows: int, fan_in: int, fan_out: int) -> dict:
  """The three products as torch's autograd runs nn.Linear: the weight stored (out, in)."""
  import torch  # The test extra's CPU build; optional here.
  torch.manual_seed(0)
  x, w, dy = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in), torch.randn(rows, fan_out)
  bias = torch.randn(fan_out)
  return dict(zip(PRODUCTS, (lambda: torch.addmm(bias, x, w.t()), lambda: dy @ w,
                             lambda: dy.t() @ x)))


def main():
  config = model_config.preset(args.preset)
  shapes = weights(config)
  print(f"{args.preset}'s products with weights at {args.tokens} rows, float32; jax "
        f"{jax.__version__} on {jax.devices()[0].device_kind}")
  frameworks = {"cpt_jax": jax_calls}
  try:
    import torch
    frameworks["torch"] = torch_calls
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
  except ImportError:
    print("torch is not installed: cpt_jax's products only")
  calls = {(framework, weight): make(args.tokens, fan_in, fan_out)
           for framework, make in frameworks.items()
           for weight, (fan_in, fan_out, _) in shapes.items()}
  timings = {key: {product: [] for product in PRODUCTS} for key in calls}
  for round_index in range(args.rounds):
    for key, products in calls.items():
      for product, call in products.items():
        timings[key][product].append(call_timing.milliseconds_per_call(call, args.calls))
    print(f"round {round_index + 1} of {args.rounds} done", flush=True)
  totals = {framework: {product: 0.0 for product in PRODUCTS} for framework in frameworks}
  for (framework, weight), products in timings.items():
    medians = {product: statistics.median(values) for product, values in products.items()}
    count = shapes[weight][2]
    for product, value in medians.items():
      totals[framework][product] += value * count
    print(f"{framework:8s} {weight:14s} " + ", ".join(
        f"{product} {value:6.3f}" for product, value in medians.items()) + " ms")
  for framework, products in totals.items():
    print(f"{framework:8s} whole model    " + ", ".join(
        f"{product} {value:6.2f}" for product, value in products.items()) +
        f" ms; {sum(products.values()):.1f} ms a step")
  if "torch" in totals:
    ratio = sum(totals["torch"].values()) / sum(totals["cpt_jax"].values())
    print(f"cpt_jax/torch weight products: {ratio:.3f}")


if __name__ == "__main__":
  main()
