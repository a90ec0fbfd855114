# run 20260115-131500-abc123: faster_rcnn on cluster lab (vendor cpu), topology 2x8, precision amp, backend slurm
# stage: workload source -> /local/orchestrator/workload/0123456789abcdef
# script -> /home/alice/.cache/orchestrator/slurm-scripts/20260115-131500-abc123.sbatch
#!/bin/bash
#SBATCH --job-name=orchestrator-20260115-131500-abc123
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --chdir=/tmp
#SBATCH --output=/dev/null
#SBATCH --partition=gpu
#SBATCH --gres=gpu:8
set -euo pipefail

# the run's identity and the vendor environment (every task inherits them)
export OMP_NUM_THREADS=1
export ORCHESTRATOR_RUN_ID=20260115-131500-abc123
export PYTHONPATH=/local/orchestrator/workload/0123456789abcdef
export PYTHONUNBUFFERED=1
# node_dir: only this user may write there (or the workload could be swapped)
r=/local/orchestrator; umask 077; mkdir -p -- "$r" && [ ! -L "$r" ] && [ -O "$r" ] && [ -z "$(find "$r" -maxdepth 0 -perm /022)" ] || { echo "orchestrator: slurm.node_dir $r on $(hostname) is not a folder only you can write: remove it or change node_dir" >&2; exit 1; }
RUN_DIR=/local/orchestrator/runs/20260115-131500-abc123
mkdir -p "$RUN_DIR/ranks" "$RUN_DIR/logs" "$RUN_DIR/nodes" "$RUN_DIR/nccl"
# the batch shell's own output, in the run folder (not at a guessable /tmp name)
exec >>"$RUN_DIR/slurm-job.out" 2>&1
# at the end, however it ends: the exit status, then wait (up to 600 s) until the
# follower has fetched every node's run folder, then remove them
finish() {
  rc=$?
  set +e
  echo "$rc" > "$RUN_DIR/job.exit"
  scontrol update JobId="$SLURM_JOB_ID" Comment=orchestrator-fetch-ready
  for _ in $(seq 600); do
    scontrol -o show job "$SLURM_JOB_ID" | grep -q "Comment=orchestrator-fetched" && break
    sleep 1
  done
  srun --ntasks-per-node=1 rm -rf "$RUN_DIR"
  exit "$rc"
}
trap finish EXIT
# no shared file system: the workload travels inside this script; every node unpacks it
cat > "$RUN_DIR/workload.b64" <<'ORCHESTRATOR_WORKLOAD'
H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ8HFAAAAAAAAAAA
ORCHESTRATOR_WORKLOAD
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --input=all bash -c 'r="$2"; umask 077; mkdir -p -- "$r" && [ ! -L "$r" ] && [ -O "$r" ] && [ -z "$(find "$r" -maxdepth 0 -perm /022)" ] || { echo "orchestrator: slurm.node_dir $r on $(hostname) is not a folder only you can write: remove it or change node_dir" >&2; exit 1; }; mkdir -p "$1/ranks" "$1/logs" "$1/nodes" "$1/nccl" "${0%/*}" && if [ -e "$0/.complete" ]; then cat > /dev/null; else t=$(mktemp -d "$0.XXXXXX") && base64 -d | tar -xzf - -C "$t" && touch "$t/.complete" && { mv -T "$t" "$0" 2> /dev/null || rm -rf "$t"; }; fi' /local/orchestrator/workload/0123456789abcdef "$RUN_DIR" /local/orchestrator < "$RUN_DIR/workload.b64"
# the monitor sampler (docs/monitors.md): one file per node, nodes/monitor-<i>.jsonl
export ORCHESTRATOR_MONITOR=/local/orchestrator/workload/0123456789abcdef/monitor_probe.py
export ORCHESTRATOR_MONITOR_ARGS='{"columns": null, "follow_parent": true, "interval_s": 5.0, "out": "/local/orchestrator/runs/20260115-131500-abc123/nodes/monitor-@NODE@.jsonl", "tool": null}'

# the allocation's hosts in node-rank order; master: the first host's address, a port
# of this job's own (master_port + job id modulo the span)
scontrol show hostnames "$SLURM_JOB_NODELIST" > "$RUN_DIR/nodelist"
FIRST_HOST=$(head -n 1 "$RUN_DIR/nodelist")
MASTER_ADDR=$(scontrol -o show node "$FIRST_HOST" | tr " " "\n" | sed -n 's/^NodeAddr=//p')
export MASTER_ADDR="${MASTER_ADDR:-$FIRST_HOST}"
export MASTER_PORT=$(( 29500 + SLURM_JOB_ID % 1000 ))
echo "orchestrator: allocation $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"

# environment and preflight on every allocated node
srun --ntasks-per-node=1 bash -c 'p="$1/nodes/probe-$SLURM_NODEID.json"; "$0" "$2" "$3" > "$p" && "$0" "$4" "$p"' python3 "$RUN_DIR" /local/orchestrator/workload/0123456789abcdef/node_probe.py '{"count_accelerators": false, "data_dir": "/shared/data/coco", "docker_host": null, "ib_hcas": [], "min_free_gb": 1.0, "need_docker": false, "need_torch": true, "nproc": 8, "smi": null, "weights": "none", "workdir": "/local/orchestrator"}' /local/orchestrator/workload/0123456789abcdef/probe_check.py

# the benchmark: torchrun on every node, one failing task ends them all
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --output=/local/orchestrator/runs/20260115-131500-abc123/logs/node-%n.log bash -c '"$0" "$ORCHESTRATOR_MONITOR" "${ORCHESTRATOR_MONITOR_ARGS//@NODE@/$SLURM_NODEID}" & exec "$0" -m torch.distributed.run --node-rank="$SLURM_NODEID" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" "$@"' python3 --nnodes=2 --nproc-per-node=8 --max-restarts=0 -m workload.faster_rcnn --data-dir /shared/data/coco --backbone-weights none --output-dir /local/orchestrator/runs/20260115-131500-abc123/ranks --run-id 20260115-131500-abc123 --precision amp --set batch_size=16 --set epochs=2 --set lr=0.16

# submitted with:
sbatch --parsable /home/alice/.cache/orchestrator/slurm-scripts/20260115-131500-abc123.sbatch
