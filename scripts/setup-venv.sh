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
# Apache Otava's change-point detector (orchestrator history, docs/reports.md) without its
# command-line tool's requirements: those pin numpy==2.2.0 and scipy<1.17 and pull the BigQuery,
# Slack and PostgreSQL clients, none of which otava.change_point_divisive imports (numpy only).
if ! .venv/bin/python -m pip install -q --no-deps "apache-otava==0.8.0" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
  echo "error: pip install apache-otava failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
.venv/bin/python -c "import torch, torchvision, orchestrator, otava.change_point_divisive.detector" >/dev/null
echo "venv ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
