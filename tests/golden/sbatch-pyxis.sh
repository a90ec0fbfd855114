# run 20260115-131500-abc123: faster_rcnn on cluster lab (vendor cpu), topology 2x8, precision amp, backend slurm
# stage: workload source -> /shared/orchestrator/workload/0123456789abcdef
# script -> /shared/orchestrator/runs/20260115-131500-abc123/job.sbatch
#!/bin/bash
#SBATCH --job-name=orchestrator-20260115-131500-abc123
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --chdir=/shared/orchestrator/runs/20260115-131500-abc123
#SBATCH --output=/shared/orchestrator/runs/20260115-131500-abc123/slurm-job.out
#SBATCH --partition=gpu
#SBATCH --gres=gpu:8
set -euo pipefail

# the run's identity and the vendor environment (every task inherits them)
export OMP_NUM_THREADS=1
export ORCHESTRATOR_RUN_ID=20260115-131500-abc123
export PYTHONPATH=/shared/orchestrator/workload/0123456789abcdef
export PYTHONUNBUFFERED=1
RUN_DIR=/shared/orchestrator/runs/20260115-131500-abc123
mkdir -p "$RUN_DIR/ranks" "$RUN_DIR/logs" "$RUN_DIR/nodes" "$RUN_DIR/nccl"
# the exit status, for a follower that comes after Slurm has forgotten the job
trap 'echo "$?" > "$RUN_DIR/job.exit"' EXIT
# the monitor sampler (docs/monitors.md): one file per node, nodes/monitor-<i>.jsonl
export ORCHESTRATOR_MONITOR=/shared/orchestrator/workload/0123456789abcdef/monitor_probe.py
export ORCHESTRATOR_MONITOR_ARGS='{"columns": null, "follow_parent": true, "interval_s": 5.0, "out": "/shared/orchestrator/runs/20260115-131500-abc123/nodes/monitor-@NODE@.jsonl", "tool": null}'

# the allocation's hosts in node-rank order; master: the first host's address, a port
# of this job's own (master_port + job id modulo the span)
scontrol show hostnames "$SLURM_JOB_NODELIST" > "$RUN_DIR/nodelist"
FIRST_HOST=$(head -n 1 "$RUN_DIR/nodelist")
MASTER_ADDR=$(scontrol -o show node "$FIRST_HOST" | tr " " "\n" | sed -n 's/^NodeAddr=//p')
export MASTER_ADDR="${MASTER_ADDR:-$FIRST_HOST}"
export MASTER_PORT=$(( 29500 + SLURM_JOB_ID % 1000 ))
echo "orchestrator: allocation $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"

# environment and preflight on every allocated node
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --container-image=/shared/images/metax-c500.sqsh --container-mounts=/shared/orchestrator:/shared/orchestrator,/shared/data/coco:/shared/data/coco:ro,/dev/infiniband:/dev/infiniband --container-workdir=/shared/orchestrator/runs/20260115-131500-abc123 --output=/shared/orchestrator/runs/20260115-131500-abc123/nodes/probe-%n.json python3 /shared/orchestrator/workload/0123456789abcdef/node_probe.py '{"count_accelerators": false, "data_dir": "/shared/data/coco", "docker_host": null, "ib_hcas": [], "min_free_gb": 1.0, "need_docker": false, "need_torch": true, "nproc": 8, "smi": null, "weights": "none", "workdir": "/shared/orchestrator"}'
python3 /shared/orchestrator/workload/0123456789abcdef/probe_check.py "$RUN_DIR"/nodes/probe-*.json

# the benchmark: torchrun on every node, one failing task ends them all
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --container-image=/shared/images/metax-c500.sqsh --container-mounts=/shared/orchestrator:/shared/orchestrator,/shared/data/coco:/shared/data/coco:ro,/dev/infiniband:/dev/infiniband --container-workdir=/shared/orchestrator/runs/20260115-131500-abc123 --output=/shared/orchestrator/runs/20260115-131500-abc123/logs/node-%n.log bash -c '"$0" "$ORCHESTRATOR_MONITOR" "${ORCHESTRATOR_MONITOR_ARGS//@NODE@/$SLURM_NODEID}" & exec "$0" -m torch.distributed.run --node-rank="$SLURM_NODEID" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" "$@"' python3 --nnodes=2 --nproc-per-node=8 --max-restarts=0 -m workload.faster_rcnn --data-dir /shared/data/coco --backbone-weights none --output-dir /shared/orchestrator/runs/20260115-131500-abc123/ranks --run-id 20260115-131500-abc123 --precision amp --set batch_size=16 --set epochs=2 --set lr=0.16

# submitted with:
sbatch --parsable /shared/orchestrator/runs/20260115-131500-abc123/job.sbatch
