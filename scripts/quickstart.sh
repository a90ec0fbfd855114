#!/usr/bin/env bash
# The first command of the README: on a fresh machine, set up and run the benchmark with the
# embedded defaults (this machine as the only node, SQLite store ./orchestrator.db), on a small
# synthetic COCO dataset, then print the seed's table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f data/coco-synth/annotations/instances_val2017.json ] ||
  python -m workload.faster_rcnn.synth --out data/coco-synth --images 16 --val-images 8 --size 96
orchestrator doctor 1x2
# From scratch (no ImageNet backbone here) the reference lr of 0.02 diverges: use 0.0025.
orchestrator submit 1x2 --set epochs=2 --set lr=0.0025 --set min_size=96 --set max_size=96 \
  --set workers=0 --set box_batch_size_per_image=64
orchestrator runs list --limit 5
