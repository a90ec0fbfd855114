#!/usr/bin/env bash
# The workload on one NVIDIA GPU, end to end, in one command on a bare machine (python3 with torch
# and torchvision, nothing else, no package index), in at most 8 minutes on one H100. docs/gpu.md.
#
#   bench/gpu_check.sh [--require-cuda] [--python PY] [--wheelhouse DIR] [--workdir DIR] [--dry-run]
#
# 1. installs what this Python lacks of the control plane's dependencies from the carried
#    wheelhouse (DIR/cp312 for Python 3.12; scripts/make-gpu-wheelhouse.sh) into WORKDIR/site;
# 2. makes a synthetic COCO set (64 images at 800 px; without CUDA 2 at 64 px);
# 3. `orchestrator submit 1x1` on the host runtime, vendor nvidia, for fp32, amp and fp16: 4
#    epochs each (without CUDA 3), the first one the warm-up, nvidia-smi sampled every 0.5 s;
# 4. bench/gpu_check_probe.py: DeviceOps.synchronize and the core region against CUDA events;
# 5. bench/gpu_check_report.py: one `PASS|FAIL|SKIP: check: values` line per check, a summary.
# Without CUDA only fp32 runs, and the GPU-only checks are `SKIP: ...: skipped: no CUDA`;
# --require-cuda makes no CUDA a FAIL. Exit status 1 when a check
# failed, 2 on a usage error. --dry-run prints what would run and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=0
REQUIRE_CUDA=0
WORKDIR=""
WHEELHOUSE=$ROOT/wheelhouse
PYTHON_BIN=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --require-cuda) REQUIRE_CUDA=1 ;;
    --python|--workdir|--wheelhouse)
      [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }
      case "$1" in --python) PYTHON_BIN=$2 ;; --workdir) WORKDIR=$2 ;; *) WHEELHOUSE=$2 ;; esac
      shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
found=$(command -v "$PYTHON_BIN") || {
  echo "error: no Python $PYTHON_BIN on PATH (pass --python /path/to/python3)" >&2; exit 2; }
PYTHON_BIN=$(cd "$(dirname "$found")" && pwd)/$(basename "$found")
CUDA=$("$PYTHON_BIN" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null) || {
  echo "error: $PYTHON_BIN cannot import torch (pass --python, the one with torch)" >&2; exit 2; }
found=$(cd "$WHEELHOUSE" 2>/dev/null && pwd) || {
  echo "error: no wheelhouse at $WHEELHOUSE (scripts/make-gpu-wheelhouse.sh; docs/gpu.md)" >&2
  exit 2; }
WHEELHOUSE=$found

if [ -z "$WORKDIR" ]; then
  WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
  [ "$DRY_RUN" = 1 ] && trap 'rm -rf "$WORKDIR"' EXIT  # a dry run leaves nothing behind
fi
mkdir -p "$WORKDIR" && WORKDIR=$(cd "$WORKDIR" && pwd)
SITE=$WORKDIR/site
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export ORCHESTRATOR_MONITOR_INTERVAL_S=0.5  # several nvidia-smi samples in a 10 s window
CLUSTER=$WORKDIR/cluster.toml
STORE=$WORKDIR/results.db
DATA=$WORKDIR/coco-synth
PRE=$WORKDIR/verdicts.txt
if [ "$CUDA" = 1 ]; then
  # 32 iterations an epoch at batch 2, 800 x 800 and 1200 x 800, the benchmark's resolution
  IMAGES=64 SIZE=800 MAX_SIZE=1333 EPOCHS=4 WORKERS=4 RUN_TIMEOUT=150
  PRECISIONS=(fp32 amp fp16)
else
  # the CPU: tiny, one iteration an epoch (a few seconds each on a busy core), fp32 only (amp on
  # the CPU is bfloat16 autocast, not the GPU's path, and minutes slower; fp16 is refused there)
  IMAGES=2 SIZE=64 MAX_SIZE=96 EPOCHS=3 WORKERS=1 RUN_TIMEOUT=300
  PRECISIONS=(fp32)
fi
# The first epoch is the warm-up (lazy CUDA start-up, cuDNN's and the allocator's first calls);
# the report's p_core is the epochs after it. From scratch (no ImageNet weights): lr 0.0025.
SETS=(--set "epochs=$EPOCHS" --set eval=false --set lr=0.0025 --set "min_size=$SIZE"
  --set "max_size=$MAX_SIZE" --set "workers=$WORKERS")

# The workload's PYTHONPATH is set by the plan (its staged source); the node's Python appends the
# installed wheels to it, so the workload sees pycocotools as the control plane does.
mkdir -p "$WORKDIR/bin"
NODE_PYTHON=$WORKDIR/bin/python
cat >"$NODE_PYTHON" <<EOF
#!/bin/sh
PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}$SITE" exec "$PYTHON_BIN" "\$@"
EOF
chmod +x "$NODE_PYTHON"
cat >"$CLUSTER" <<EOF
# bench/gpu_check.sh: this machine, one NVIDIA GPU, the host runtime
[cluster]
name = "gpu-check"
vendor = "nvidia"
runtime = "host"

[store]
url = "sqlite:///$STORE"

[case]
data_dir = "$DATA"
backbone_weights = "none"

[[nodes]]
name = "gpu0"
address = "local"
accelerators = 1
python = "$NODE_PYTHON"
workdir = "$WORKDIR/node"
EOF

say() { printf '%s\n' "$*"; }
show() { say "+ $(printf '%q ' "$@")"; }
DEPS=("$PYTHON_BIN" bench/gpu_check_deps.py --wheelhouse "$WHEELHOUSE" --target "$SITE")
SYNTH=("$PYTHON_BIN" -m workload.faster_rcnn.synth --out "$DATA" --images "$IMAGES"
  --val-images 2 --size "$SIZE")
UPGRADE=("$PYTHON_BIN" -m orchestrator --cluster "$CLUSTER" db upgrade)
submit_argv() {
  SUBMIT=(timeout $((RUN_TIMEOUT + 20)) "$PYTHON_BIN" -m orchestrator --cluster "$CLUSTER"
    submit 1x1 --precision "$1" "${SETS[@]}" --timeout "${RUN_TIMEOUT}s" --runs-dir "$WORKDIR/runs")
}
PROBE=(timeout 120 "$PYTHON_BIN" bench/gpu_check_probe.py --out "$WORKDIR/probe.json"
  --size "$SIZE" --max-size "$MAX_SIZE")
report_argv() {
  REPORT=("$PYTHON_BIN" bench/gpu_check_report.py --store "$STORE" --probe "$WORKDIR/probe.json"
    --cuda "$CUDA" --pre "$PRE" --elapsed "$1")
  [ "$REQUIRE_CUDA" = 1 ] && REPORT+=(--require-cuda)
}

say "== gpu check in $WORKDIR: $PYTHON_BIN, CUDA $([ "$CUDA" = 1 ] && echo yes || echo no)," \
  "precisions ${PRECISIONS[*]}, $IMAGES images at $SIZE px"
if [ "$DRY_RUN" = 1 ]; then
  say "== would run (dry run: nothing below is started)"
  show "${DEPS[@]}"
  show "${SYNTH[@]}"
  show "${UPGRADE[@]}"
  for precision in "${PRECISIONS[@]}"; do submit_argv "$precision"; show "${SUBMIT[@]}"; done
  show "${PROBE[@]}"
  report_argv SECONDS
  show "${REPORT[@]}"
  exit 0
fi

started=$SECONDS
: >"$PRE"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version \
  --format=csv,noheader
show "${DEPS[@]}"
"${DEPS[@]}" | tee -a "$PRE"
show "${SYNTH[@]}"
if "${SYNTH[@]}" >"$WORKDIR/synth.log" 2>&1; then
  say "PASS: data: $IMAGES training images at $SIZE px in $DATA" | tee -a "$PRE"
else
  say "FAIL: data: synth failed: $(tail -n 1 "$WORKDIR/synth.log")" | tee -a "$PRE"
fi
show "${UPGRADE[@]}"
"${UPGRADE[@]}" || say "   db upgrade failed (exit $?)"
for precision in "${PRECISIONS[@]}"; do
  say "== $precision ($((SECONDS - started)) s so far)"
  submit_argv "$precision"
  show "${SUBMIT[@]}"
  "${SUBMIT[@]}" || say "   $precision run failed (exit $?): the report says why"
done
say "== probe ($((SECONDS - started)) s so far)"
show "${PROBE[@]}"
"${PROBE[@]}" >"$WORKDIR/probe.log" 2>&1 || say "   probe failed (exit $?): $(tail -n 1 "$WORKDIR/probe.log")"
say "== report ($((SECONDS - started)) s)"
report_argv $((SECONDS - started))
"${REPORT[@]}"
status=$?
say "== done in $((SECONDS - started)) s; runs in $WORKDIR/runs, store $STORE"
exit "$status"
