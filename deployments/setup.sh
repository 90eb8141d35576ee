#!/usr/bin/env bash
# One-time (idempotent) setup of a Prefect server for dlm-triage, then workers on this machine.
#
#   deployments/setup.sh            # pools + 'gpu' limit + deployments + one worker per pool (foreground)
#   deployments/setup.sh --no-workers
#
# Needs PREFECT_API_URL pointing at your server (e.g. `prefect server start --host 0.0.0.0` elsewhere, then
# `prefect config set PREFECT_API_URL=http://<server>:4200/api`). Other GPU machines only run
# `prefect worker start --pool gpu-pool` (see README.md); run this script once, anywhere.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export DLM_TRIAGE_REPO="${DLM_TRIAGE_REPO:-$REPO}"   # where workers find the code (resolved on each worker)
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
GPU_POOL="${GPU_POOL:-gpu-pool}"
CPU_POOL="${CPU_POOL:-cpu-pool}"

# GPUs on this machine: nvidia-smi when present, else 1 (one training at a time on CPU or MPS).
if command -v nvidia-smi >/dev/null 2>&1 && N=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU'); then
  GPU_SLOTS="${GPU_SLOTS:-$(( N > 0 ? N : 1 ))}"
else
  GPU_SLOTS="${GPU_SLOTS:-1}"
fi
echo "dlm-triage setup: repo $REPO, API ${PREFECT_API_URL:-<ephemeral>}, gpu slots $GPU_SLOTS"

# Work pools (process type: flow runs are subprocesses of the worker). 'create' fails when the pool exists.
for pool in "$GPU_POOL" "$CPU_POOL"; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
done

# Tag concurrency limit: at most GPU_SLOTS task runs tagged 'gpu' (training) run at once across all flow runs.
# With several GPU machines on one server, set GPU_SLOTS to the total number of GPUs. ('create' upserts.)
prefect concurrency-limit create gpu "$GPU_SLOTS"

prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

if [[ "${1:-}" == "--no-workers" ]]; then
  echo "deployed; start workers with: prefect worker start --pool $GPU_POOL   (and --pool $CPU_POOL)"
  exit 0
fi

# One worker per pool on this machine; Ctrl-C stops both.
prefect worker start --pool "$CPU_POOL" --type process &
CPU_WORKER=$!
trap 'kill "$CPU_WORKER" 2>/dev/null || true' EXIT INT TERM
prefect worker start --pool "$GPU_POOL" --type process
