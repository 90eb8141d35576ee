#!/usr/bin/env bash
# One-time (idempotent) setup of a Prefect server for dlm-triage, then workers on this machine.
#
#   deployments/setup.sh            # pools + GPU cap + deployments + one worker per pool (foreground)
#   deployments/setup.sh --no-workers
#   GPU_SLOTS=32 RESULT_STORAGE_URL=s3://bucket/dlm-triage/results deployments/setup.sh --no-workers
#
# Needs PREFECT_API_URL pointing at your server: `prefect server start --host 127.0.0.1` on this machine, then
# `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`. Other GPU machines only run
# `prefect worker start --pool gpu-pool --limit <their GPUs>` (see README.md); run this script once, anywhere.
#
# Security: whoever reaches the API can start deployments, and their parameters choose model_id (loaded with
# the checkpoint's own code for remote-code families), dataset, runs_dir, db and adapter paths. Keep the server
# on 127.0.0.1. To serve other machines, either start it with basic authentication
# (`PREFECT_SERVER_API_AUTH_STRING='user:password' prefect server start --host <LAN address>`; workers and
# clients then set `PREFECT_API_AUTH_STRING` to the same value) or put it behind an authenticating reverse
# proxy; `--host 0.0.0.0` without either exposes it to the whole network. Remote code runs only for model ids
# on the allow-list (the families' known checkpoints and local directories; add more with
# DLM_TRIAGE_TRUSTED_MODELS=org/model,org/* in the workers' environment, dlm_triage/trust.py).
#
# GPU_SLOTS: GPUs of ALL machines together (default: this machine's): the gpu-pool's concurrency limit, so at
#   most that many train-shard runs train at once, whichever workers hold them.
# RESULT_STORAGE_URL: shared Prefect result storage (the training cache): an fsspec URL (s3://, gs://) or an
#   absolute path every machine mounts; saved as the block 'dlm-triage-results' and set as
#   PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK in both pools' default env, so the flow runs of every worker on every
#   machine use it (deployments/result_storage.py).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export DLM_TRIAGE_REPO="${DLM_TRIAGE_REPO:-$REPO}"   # where workers find the code (resolved on each worker)
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
GPU_POOL="${GPU_POOL:-gpu-pool}"
CPU_POOL="${CPU_POOL:-cpu-pool}"

# GPUs on this machine: nvidia-smi when present, else 1 (one training at a time on CPU or MPS).
if command -v nvidia-smi >/dev/null 2>&1 && N=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU'); then
  LOCAL_GPUS=$(( N > 0 ? N : 1 ))
else
  LOCAL_GPUS=1
fi
GPU_SLOTS="${GPU_SLOTS:-$LOCAL_GPUS}"
echo "dlm-triage setup: repo $REPO, API ${PREFECT_API_URL:-<ephemeral>}, gpu slots $GPU_SLOTS"

# Work pools (process type: flow runs are subprocesses of the worker). 'create' fails when the pool exists.
for pool in "$GPU_POOL" "$CPU_POOL"; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
done

# The GPU cap: at most GPU_SLOTS flow runs of the gpu-pool (train-shard runs, one GPU each) at once, across all
# machines; each worker's --limit keeps its own machine at its GPU count.
prefect work-pool set-concurrency-limit "$GPU_POOL" "$GPU_SLOTS"

if [[ -n "${RESULT_STORAGE_URL:-}" ]]; then
  BLOCK=$(python "$REPO/deployments/result_storage.py" "$RESULT_STORAGE_URL" "$GPU_POOL" "$CPU_POOL")
  echo "result storage: $RESULT_STORAGE_URL (block $BLOCK, set as $GPU_POOL's and $CPU_POOL's default env)"
fi

prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

if [[ "${1:-}" == "--no-workers" ]]; then
  echo "deployed; start workers with: prefect worker start --pool $GPU_POOL --limit <GPUs>   (and --pool $CPU_POOL)"
  exit 0
fi

# One worker per pool on this machine; Ctrl-C stops both.
prefect worker start --pool "$CPU_POOL" --type process &
CPU_WORKER=$!
trap 'kill "$CPU_WORKER" 2>/dev/null || true' EXIT INT TERM
prefect worker start --pool "$GPU_POOL" --type process --limit "$LOCAL_GPUS"
