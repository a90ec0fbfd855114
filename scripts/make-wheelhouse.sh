#!/usr/bin/env bash
# Gathers the wheels that stand in for a vendor's wheel set in the `cpu` profile and the tests:
# torch 2.14.1, torchvision 0.29.1, pycocotools and their dependencies, for the interpreter that
# runs this script, which must be CPython 3.11 (the Python of the bookworm base image). Reused when already complete.
#   scripts/make-wheelhouse.sh [DIR]      default DIR: /var/cache/orchestrator-test/wheelhouse
# Env: PYTHON (an interpreter whose pip downloads the wheels; default .venv/bin/python, else python3)
set -euo pipefail
log() { echo "$*" >&2; }

dir="${1:-/var/cache/orchestrator-test/wheelhouse}"
requirements="torch==2.14.1 torchvision==0.29.1 pycocotools"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  here="$(cd "$(dirname "$0")/.." && pwd)"
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
marker="$dir/.complete"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$requirements" ]; then
  log "wheelhouse $dir already complete"
  echo "$dir"
  exit 0
fi
mkdir -p "$dir"
log "pip download $requirements -> $dir"
# shellcheck disable=SC2086
"$python" -m pip download --quiet --only-binary=:all: -d "$dir" $requirements >&2
printf '%s' "$requirements" >"$marker"
echo "$dir"
