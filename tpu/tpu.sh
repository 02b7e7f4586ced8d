#!/usr/bin/env bash
# Run cpt_jax on a Cloud TPU VM slice: create, install, launch, follow logs, delete, and a
# relaunch loop that resumes from the run directory after preemption.
#
#   tpu/tpu.sh [--dry-run] create|install|launch|logs|delete|relaunch [-- TRAIN_FLAGS...]
#
# Settings come from the environment:
#   TPU_NAME (cpt-jax), ZONE (us-central2-b), ACCELERATOR_TYPE (v4-32),
#   RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default), SPOT (1: preemptible),
#   REPO_GIT (the cpt_jax repository the workers clone), CONFIG (configs/demo.py),
#   WORKDIR (the run directory; use a gs:// bucket so every worker and every relaunch sees it).
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

TPU_NAME=${TPU_NAME:-cpt-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-1}
REPO_GIT=${REPO_GIT:-https://github.com/your-org/cpt_jax.git}
CONFIG=${CONFIG:-configs/demo.py}
WORKDIR=${WORKDIR:-gs://your-bucket/cpt_jax/demo}

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
COMMAND=${1:-}
shift || true
if [[ "${1:-}" == "--" ]]; then shift; fi
TRAIN_FLAGS=("$@")

run() {  # Prints the command in dry-run mode, else runs it.
  if (( DRY_RUN )); then printf '%q ' "$@"; echo; else "$@"; fi
}

project_flag=()
if [[ -n "${PROJECT:-}" ]]; then project_flag=(--project="$PROJECT"); fi

on_all_workers() {  # Every host of the slice runs the same command (JAX's SPMD model).
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
    --worker=all --command="$1"
}

train_command() {
  # No --coordinator_address on TPU: jax.distributed.initialize() configures itself there.
  local flags=""
  if (( ${#TRAIN_FLAGS[@]} )); then flags=$(printf ' %q' "${TRAIN_FLAGS[@]}"); fi
  echo "cd ~/cpt_jax && ~/cpt_jax_venv/bin/cpt-jax train --config=$CONFIG" \
       "--workdir=$WORKDIR$flags 2>&1 | tee -a ~/cpt_jax_train.log"
}

self=("$0")
if (( DRY_RUN )); then self+=(--dry-run); fi

case "$COMMAND" in
  create)
    spot_flag=()
    if (( SPOT )); then spot_flag=(--spot); fi
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${spot_flag[@]}"
    ;;
  install)
    # The clone brings configs/; the jax[tpu] range matches pyproject.toml's jax pin.
    on_all_workers "(git clone -q $REPO_GIT ~/cpt_jax || git -C ~/cpt_jax pull -q) && \
python3 -m venv ~/cpt_jax_venv && ~/cpt_jax_venv/bin/pip install -q 'jax[tpu]>=0.10.2,<0.11' \
-e ~/cpt_jax[gcs] && ~/cpt_jax_venv/bin/python -c 'import cpt_jax, jax; print(jax.device_count())'"
    ;;
  launch)
    on_all_workers "$(train_command)"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
      --worker=0 --command="tail -n 100 -f ~/cpt_jax_train.log"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --quiet
    ;;
  relaunch)
    # A preempted spot slice loses its VMs: recreate, reinstall and rerun the same command,
    # which resumes from the latest checkpoint in WORKDIR. Stops once summary.json exists.
    for attempt in $(seq 1 "${MAX_ATTEMPTS:-20}"); do
      if (( ! DRY_RUN )) && gsutil -q stat "$WORKDIR/summary.json" 2>/dev/null; then
        echo "run complete: $WORKDIR/summary.json"; exit 0
      fi
      echo "attempt $attempt"
      "${self[@]}" delete || true
      "${self[@]}" create
      "${self[@]}" install
      "${self[@]}" launch -- "${TRAIN_FLAGS[@]}" || true
      if (( DRY_RUN )); then exit 0; fi
    done
    echo "gave up after ${MAX_ATTEMPTS:-20} attempts" >&2; exit 1
    ;;
  *)
    sed -n '2,15p' "$0" >&2; exit 2
    ;;
esac
