#!/usr/bin/env bash
# The workload on one NVIDIA GPU, end to end, in at most 8 minutes (docs/gpu.md): synthetic COCO
# at the real resolution (shorter side 800, longer side up to 1333), `orchestrator submit 1x1`
# with the nvidia profile on the host runtime for fp32, amp and fp16, a fixed number of
# iterations each, nvidia-smi sampled every second; then bench/gpu_check_probe.py (is core_s
# synchronised: GPU time vs wall) and bench/gpu_check_report.py (p_core, allocator peak,
# nvidia-smi's device peak, GradScaler's skipped steps, monitor samples from the real tool).
#
#   bench/gpu_check.sh [--dry-run] [--iters N] [--workdir DIR] [--python PYTHON]
#
# --dry-run prints every command and the plan `submit --dry-run` gives for each precision, and
# runs nothing else (it works without a GPU). Exit status: 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=0
ITERS=40
WORKDIR=""
PYTHON_BIN=${PYTHON:-$ROOT/.venv/bin/python}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --iters) ITERS=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --python) PYTHON_BIN=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$ITERS" in ''|*[!0-9]*) echo "error: --iters $ITERS is not a whole number" >&2; exit 2 ;; esac
if [ ! -x "$PYTHON_BIN" ]; then
  echo "error: no Python at $PYTHON_BIN (run scripts/setup-venv.sh, or pass --python)" >&2
  exit 2
fi

OWN_WORKDIR=0
if [ -z "$WORKDIR" ]; then
  WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
  OWN_WORKDIR=1
fi
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
if [ "$DRY_RUN" = 1 ] && [ "$OWN_WORKDIR" = 1 ]; then
  trap 'rm -rf "$WORKDIR"' EXIT  # a dry run leaves nothing behind
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export ORCHESTRATOR_MONITOR_INTERVAL_S=1  # nvidia-smi every second: a short run still has samples
CLUSTER=$WORKDIR/cluster.toml
STORE=$WORKDIR/results.db
DATA=$WORKDIR/coco-synth
# Fixed work: ITERS iterations of batch 2 at 800 x (800..1200), no evaluation; from scratch (no
# ImageNet weights here), so the reference lr 0.02 would diverge: 0.0025 as the quickstart uses.
SETS=(--set "max_iters=$ITERS" --set epochs=100 --set eval=false --set lr=0.0025
  --set min_size=800 --set max_size=1333 --set workers=4)

cat > "$CLUSTER" <<EOF
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
python = "$PYTHON_BIN"
workdir = "$WORKDIR/node"
EOF

say() { printf '%s\n' "$*"; }
show() { say "+ $(printf '%q ' "$@")"; }
orchestrator() { "$PYTHON_BIN" -m orchestrator --cluster "$CLUSTER" "$@"; }

say "== gpu check in $WORKDIR (iterations per precision: $ITERS)"
say "== cluster file $CLUSTER"
cat "$CLUSTER"

SYNTH=("$PYTHON_BIN" -m workload.faster_rcnn.synth --out "$DATA" --images 64 --val-images 4 --size 800)
PROBE=("$PYTHON_BIN" bench/gpu_check_probe.py --out "$WORKDIR/probe.json")
REPORT=("$PYTHON_BIN" bench/gpu_check_report.py --store "$STORE" --probe "$WORKDIR/probe.json")

if [ "$DRY_RUN" = 1 ]; then
  say "== would run (dry run: nothing below is started)"
  show "${SYNTH[@]}"
  show "$PYTHON_BIN" -m orchestrator --cluster "$CLUSTER" db upgrade
  for precision in fp32 amp fp16; do
    show timeout 125 "$PYTHON_BIN" -m orchestrator --cluster "$CLUSTER" submit 1x1 \
      --precision "$precision" "${SETS[@]}" --timeout 110s --runs-dir "$WORKDIR/runs"
    say "   its plan:"
    orchestrator submit 1x1 --precision "$precision" "${SETS[@]}" --timeout 110s \
      --runs-dir "$WORKDIR/runs" --dry-run | sed 's/^/   | /'
  done
  show timeout 80 "${PROBE[@]}"
  show "${REPORT[@]}"
  exit 0
fi

command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi is not on PATH: is this an NVIDIA GPU node?" >&2; exit 2; }
"$PYTHON_BIN" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
  { echo "error: torch sees no CUDA device ($PYTHON_BIN)" >&2; exit 2; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader

started=$SECONDS
show "${SYNTH[@]}"
"${SYNTH[@]}"
orchestrator db upgrade
failed=0
for precision in fp32 amp fp16; do
  say "== $precision ($((SECONDS - started)) s so far)"
  SUBMIT=(timeout 125 "$PYTHON_BIN" -m orchestrator --cluster "$CLUSTER" submit 1x1
    --precision "$precision" "${SETS[@]}" --timeout 110s --runs-dir "$WORKDIR/runs")
  show "${SUBMIT[@]}"
  "${SUBMIT[@]}" || { say "   $precision run failed (exit $?): the report says why"; failed=1; }
done
say "== probe: the core region timed against CUDA events ($((SECONDS - started)) s so far)"
timeout 80 "${PROBE[@]}" || say "   probe failed (exit $?)"
say "== report ($((SECONDS - started)) s)"
"${REPORT[@]}" || failed=1
say "== done in $((SECONDS - started)) s; runs in $WORKDIR/runs, store $STORE"
exit "$failed"
