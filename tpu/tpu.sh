#!/usr/bin/env bash
# Run cpt_jax on a Cloud TPU VM slice: create, install, launch, follow logs, delete, and a
# relaunch loop that recreates the slice only when it was preempted.
#
#   tpu/tpu.sh [--dry-run] create|install|launch|logs|status|delete|relaunch [-- TRAIN_FLAGS...]
#
# `launch` detaches the run on every worker (nohup: it keeps going when the laptop sleeps or
# the ssh session drops); its output goes to ~/cpt_jax_train.log, which `logs` follows, and
# its exit code to ~/cpt_jax_train.exit. `relaunch` polls the slice: PREEMPTED (or gone) ->
# recreate, reinstall and rerun the same command, which resumes from WORKDIR; an exit code
# of 0 -> done; 2 (bad input) or 1 (divergence, a lost save) -> stop with that code and the
# log's last lines, never retrying a run that cannot succeed.
#
# Settings come from the environment:
#   TPU_NAME (cpt-jax), ZONE (us-central2-b), ACCELERATOR_TYPE (v4-32),
#   RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default), SPOT (1: preemptible),
#   REPO_GIT (the cpt_jax repository the workers clone), CONFIG (configs/demo.py),
#   WORKDIR (the run directory; use a gs:// bucket so every worker and every relaunch sees it),
#   RUN (train: the cpt-jax command `launch` runs; `study` runs a study config's grid, whose
#   rerun resumes it as a train rerun does).
# --dry-run prints the gcloud commands instead of running them; for `relaunch` it walks the
# preempted path once and then the stop path, with the exit code DRY_RUN_EXIT (default 2).
set -euo pipefail

TPU_NAME=${TPU_NAME:-cpt-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-1}
REPO_GIT=${REPO_GIT:-https://github.com/your-org/cpt_jax.git}
CONFIG=${CONFIG:-configs/demo.py}
WORKDIR=${WORKDIR:-gs://your-bucket/cpt_jax/demo}
RUN=${RUN:-train}
if [[ "$RUN" != train && "$RUN" != study ]]; then
  echo "tpu.sh: RUN=$RUN: expected train or study" >&2; exit 2
fi

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

on_worker_0() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
    --worker=0 --command="$1"
}

train_command() {
  # No --coordinator_address on TPU: jax.distributed.initialize() configures itself there.
  # nohup + setsid: the run survives the ssh session; its exit code is kept for `relaunch`.
  local flags=""
  if (( ${#TRAIN_FLAGS[@]} )); then flags=$(printf ' %q' "${TRAIN_FLAGS[@]}"); fi
  local train="cd ~/cpt_jax && ~/cpt_jax_venv/bin/cpt-jax $RUN"
  train+=" --config=$CONFIG --workdir=$WORKDIR$flags"
  echo "rm -f ~/cpt_jax_train.exit && setsid nohup bash -c" \
       "$(printf '%q' "$train >> ~/cpt_jax_train.log 2>&1; echo \$? > ~/cpt_jax_train.exit")" \
       "> /dev/null 2>&1 < /dev/null &"
}

polls=0
read_slice_state() {  # Sets STATE: READY, PREEMPTED, ... or "" when the slice is gone.
  if (( DRY_RUN )); then
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
      --format='value(state)'
    if (( polls++ == 0 )); then STATE=PREEMPTED; else STATE=READY; fi
    return
  fi
  STATE=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
    --format='value(state)' 2>/dev/null || true)
}

read_exit_code() {  # Sets CODE: the run's exit code on worker 0, or "" while it runs.
  if (( DRY_RUN )); then
    on_worker_0 "cat ~/cpt_jax_train.exit 2>/dev/null"; CODE=${DRY_RUN_EXIT:-2}; return
  fi
  CODE=$(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
    --worker=0 --command="cat ~/cpt_jax_train.exit 2>/dev/null" 2>/dev/null || true)
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
    # The clone brings configs/; the [tpu] extra brings libtpu with a JAX in pyproject's range.
    on_all_workers "(git clone -q $REPO_GIT ~/cpt_jax || git -C ~/cpt_jax pull -q) && \
python3 -m venv ~/cpt_jax_venv && ~/cpt_jax_venv/bin/pip install -q -e ~/cpt_jax'[tpu,gcs]' \
&& ~/cpt_jax_venv/bin/python -c 'import cpt_jax, jax; print(jax.device_count())'"
    ;;
  launch)
    on_all_workers "$(train_command)"
    ;;
  logs)
    on_worker_0 "tail -n 100 -F ~/cpt_jax_train.log"
    ;;
  status)
    read_slice_state; read_exit_code
    echo "slice: ${STATE:-gone}; run exit code: ${CODE:-none yet (running)}"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --quiet
    ;;
  relaunch)
    # Recreate only a preempted (or vanished) slice; stop on the run's own exit code.
    attempt=1
    echo "attempt $attempt"
    "${self[@]}" delete || true
    "${self[@]}" create
    "${self[@]}" install
    "${self[@]}" launch -- "${TRAIN_FLAGS[@]}"
    while true; do
      if (( ! DRY_RUN )); then sleep "${POLL_SECONDS:-60}"; fi
      read_slice_state
      if [[ "$STATE" == "PREEMPTED" || "$STATE" == "TERMINATED" || -z "$STATE" ]]; then
        attempt=$((attempt + 1))
        if (( attempt > ${MAX_ATTEMPTS:-20} )); then
          echo "gave up after ${MAX_ATTEMPTS:-20} attempts" >&2; exit 1
        fi
        echo "slice ${STATE:-gone}: recreating it, attempt $attempt (the run resumes from $WORKDIR)"
        "${self[@]}" delete || true
        "${self[@]}" create
        "${self[@]}" install
        "${self[@]}" launch -- "${TRAIN_FLAGS[@]}"
        continue
      fi
      read_exit_code
      case "$CODE" in
        "") continue ;;  # Still running.
        0) echo "run finished: $WORKDIR"; exit 0 ;;
        *)
          echo "the run exited with code $CODE (2: bad input, 1: diverged or a save failed);" \
               "not relaunching. Last lines of its log:" >&2
          on_worker_0 "tail -n 20 ~/cpt_jax_train.log" >&2 || true
          exit "$CODE" ;;
      esac
    done
    ;;
  *)
    sed -n '2,22p' "$0" >&2; exit 2
    ;;
esac
