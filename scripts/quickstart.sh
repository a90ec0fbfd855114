#!/usr/bin/env bash
# The first command of the README: on a fresh machine, set up and run the benchmark with the
# embedded defaults (this machine as the only node, SQLite store ./orchestrator.db), on a small
# synthetic COCO dataset, then print the seed's table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f data/coco-synth/annotations/instances_val2017.json ] ||
  python -m workload.faster_rcnn.synth --out data/coco-synth --images 32 --val-images 8 --size 128
orchestrator doctor 1x2
orchestrator submit 1x2 --set epochs=2 --set min_size=128 --set max_size=128 --set workers=0 \
  --set eval_max_images=8
orchestrator runs list --limit 5
