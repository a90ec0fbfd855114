#!/usr/bin/env bash
# Runs every test against real services: starts PostgreSQL and Docker (scripts/start-services.sh),
# then pytest. Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/start-services.sh)"
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
