"""Attention alone, forward and backward: each of cpt_jax's kernels and PyTorch's SDPA.

  python -m benchmarks.attention [--batch=16] [--seq_len=256] [--heads=4] [--kv_heads=4]
      [--head_dim=32] [--documents=4] [--rounds=5] [--calls=10]

The attention kernels were most of what separated cpt_jax's step from transformers' on a CPU
(README, "Benchmarks"), and timing them inside the step drowns a change in the step's noise. Each
contender computes the gradient of sum(attention * cotangent) with respect to q, k and v; the
cpt_jax kernels (model.attention choices that run here) see rows packed with `--documents`
documents each, torch SDPA the plain causal mask (its fused CPU kernel takes no document
mask). They alternate for several rounds in one process and the per-round medians are
reported; torch's threads may slow the JAX kernels after them a little (benchmarks/
vs_transformers.py gives each framework its own process). On a CPU: float32, `chunked`
against `xla`; the last line reads `chunked/xla: <x>` (the speed-up of the CPU default over
XLA's attention). On a GPU: bfloat16 at pythia-410m's shape (8 x 2048, 16 heads of 64) unless
told otherwise, `cudnn` (the GPU default: cuDNN's packed form, each document a sequence, on
Hopper), cuDNN given the document mask as a bias, and cuDNN's causal kernel without the mask,
against `xla`; the last line reads `cudnn/xla: <x>`.
"""

import argparse
import statistics

from benchmarks import call_timing
from cpt_jax import cpu_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=0, help="Default: 16 on a CPU, else 8.")
parser.add_argument("--seq_len", type=int, default=0, help="Default: 256 on a CPU, else 2048.")
parser.add_argument("--heads", type=int, default=0, help="Default: 4 on a CPU, else 16.")
parser.add_argument("--kv_heads", type=int, default=0, help="Default: --heads.")
parser.add_argument("--head_dim", type=int, default=0, help="Default: 32 on a CPU, else 64.")
parser.add_argument("--documents", type=int, default=4, help="Documents packed in each row.")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--calls", type=int, default=10, help="Calls per measurement.")
args = parser.parse_args()
_CUDNN_CAUSAL = "cudnn (causal only)"  # cuDNN's causal kernel, no document mask: its floor.
_CUDNN_MASKED = "cudnn (mask as bias)"  # The document mask as cuDNN's bias, on any batch.

cpu_runtime.configure()  # As `cpt-jax` runs (cpt_jax/cpu_runtime.py).
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cpt_jax import attention  # noqa: E402

ON_CPU = jax.default_backend() == "cpu"
args.batch = args.batch or (16 if ON_CPU else 8)
args.seq_len = args.seq_len or (256 if ON_CPU else 2048)
args.heads = args.heads or (4 if ON_CPU else 16)
args.kv_heads = args.kv_heads or args.heads
args.head_dim = args.head_dim or (32 if ON_CPU else 64)
DTYPE = np.float32 if ON_CPU else jnp.bfloat16
# The kernels timed, and the one the last line sets against XLA's: the backend's default.
KERNELS = ("chunked", "xla") if ON_CPU else ("cudnn", _CUDNN_MASKED, _CUDNN_CAUSAL, "xla")


def cpt_jax_contender(implementation: str):
  rng = np.random.default_rng(0)
  shape = (args.batch, args.seq_len)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), DTYPE)
  q = normal(*shape, args.heads, args.head_dim)
  k, v = (normal(*shape, args.kv_heads, args.head_dim) for _ in range(2))
  segment_ids = jnp.asarray(np.sort(rng.integers(0, args.documents, shape), axis=1))
  cotangent = normal(*q.shape)

  def attend(q, k, v, segment_ids):
    if implementation == _CUDNN_CAUSAL:
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    if implementation == _CUDNN_MASKED:
      return attention._cudnn(q, k, v, segment_ids)
    return attention.attend(q, k, v, segment_ids, implementation)

  # Arguments, not constants: XLA would fold the constants into the program, slowly.
  loss = lambda q, k, v, segment_ids, cotangent: jnp.sum(
      (attend(q, k, v, segment_ids) * cotangent).astype(jnp.float32))
  gradients = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return lambda: jax.block_until_ready(gradients(q, k, v, segment_ids, cotangent))


def torch_contender():
  import torch  # The test extra's CPU build; optional here.
  torch.manual_seed(0)
  device, dtype = ("cpu", torch.float32) if ON_CPU else ("cuda", torch.bfloat16)
  normal = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
  q = normal(args.batch, args.heads, args.seq_len, args.head_dim)
  k, v = (normal(args.batch, args.kv_heads, args.seq_len, args.head_dim) for _ in range(2))
  cotangent = torch.randn_like(q)

  def call():
    y = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=args.heads != args.kv_heads)
    y.backward(cotangent)
    if device == "cuda":
      torch.cuda.synchronize()
  return call


def main():
  print(f"attention forward and backward, batch {args.batch} x {args.seq_len}, {args.heads} "
        f"query / {args.kv_heads} key-value heads of {args.head_dim}, "
        f"{jnp.dtype(DTYPE).name}; jax {jax.__version__} on {jax.devices()[0].device_kind}")
  contenders = {name: cpt_jax_contender(name) for name in KERNELS}
  try:
    contenders["torch sdpa (causal only)"] = torch_contender()
  except ImportError:
    print("torch is not installed: cpt_jax's kernels only")
  for call in contenders.values():
    call()  # Compile and warm up.
  rounds = {name: [] for name in contenders}
  for round_index in range(args.rounds):
    for name, call in contenders.items():
      rounds[name].append(call_timing.milliseconds_per_call(call, args.calls))
    print(f"round {round_index + 1}: " + ", ".join(
        f"{name} {values[-1]:.1f} ms" for name, values in rounds.items()))
  medians = {name: statistics.median(values) for name, values in rounds.items()}
  for name, value in medians.items():
    print(f"{name:<26} {value:7.2f} ms (median of {args.rounds})")
  print(f"{KERNELS[0]}/xla: {medians['xla'] / medians[KERNELS[0]]:.3f}")


if __name__ == "__main__":
  main()
