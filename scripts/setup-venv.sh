#!/usr/bin/env bash
# Creates ./.venv with the control plane, the workload's packages (torch, torchvision,
# pycocotools: needed to run the workload on this machine), the results pages (web) and, with
# --dev, the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="workload,plots,web"
[ "${1:-}" = "--dev" ] && extras="workload,plots,web,dev"
py=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$py" -m venv .venv
# torch 2.14.1 + torchvision 0.29.1 pair (see shared/TESTBED.md); any torch >= 2.0 works.
log=$(mktemp)
if ! .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[${extras}]" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
  echo "error: pip install failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
.venv/bin/python -c "import torch, torchvision, orchestrator" >/dev/null
echo "venv ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
