"""The orchestrator's own overhead for a 2-node run through Slurm: starts the two-node test
Slurm (tests/support/slurm_fixtures.py), runs the real CLI `orchestrator submit 2x1` on a tiny
synthetic dataset a few times and prints, per run, the CLI's wall time and the phases from
runs/RUN/timings.json (stage, submit, queue = sbatch to RUNNING, workload, collect, publish).
With --campaign N it then times `campaign submit` of N 1x1 runs on Slurm (every run planned,
staged and sbatched held, one transaction, then released) and one worker following all N jobs
until every run is stored.

    .venv/bin/python bench/bench_slurm_overhead.py [--runs 3] [--campaign 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cluster_fixtures import TINY_SETS, cli_env  # noqa: E402
from tests.support.slurm_fixtures import SlurmCluster  # noqa: E402
from tests.support.workload_fixtures import free_port, make_synth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--campaign", type=int, default=0, help="also time a campaign of N runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        root = Path(tmp)
        data = make_synth(root / "coco", images=8, val_images=4, size=64)
        cluster = SlurmCluster(root / "slurm")
        try:
            cluster.start()
            cfg = root / "cluster.toml"
            cfg.write_text(
                f'[cluster]\nname = "bench"\nvendor = "cpu"\nbackend = "slurm"\n'
                f"master_port = {free_port()}\n[case]\ndata_dir = {json.dumps(str(data))}\n"
                f'[slurm]\npartition = "test"\nshared_dir = {json.dumps(str(root / "shared"))}\n'
                f'python = {json.dumps(sys.executable)}\nsocket_ifname = "lo"\n'
                "poll_interval_s = 0.5\n"
            )
            sets = [x for s in TINY_SETS for x in ("--set", s)]
            env = {**cli_env(), "SLURM_CONF": str(cluster.conf)}
            print("run  wall_s  " + "  ".join(f"{p:>9}" for p in PHASES))
            for i in range(args.runs):
                t0 = time.monotonic()
                res = subprocess.run(
                    [sys.executable, "-m", "orchestrator", "--cluster", str(cfg), "--db",
                     f"sqlite:///{root / 'results.db'}", "submit", "2x1", *sets],
                    cwd=root, env=env, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                wall = time.monotonic() - t0
                if res.returncode != 0:
                    raise SystemExit(f"run {i} failed: {res.stderr[-2000:]}")
                newest = max((root / "runs").iterdir(), key=os.path.getmtime)
                phases = json.loads((newest / "timings.json").read_text())
                print(
                    f"{i:>3}  {wall:6.2f}  "
                    + "  ".join(f"{phases.get(p, 0.0):9.2f}" for p in PHASES)
                )
            if args.campaign:
                _campaign(root, cfg, env, args.campaign)
        finally:
            cluster.stop()


def _campaign(root: Path, cfg: Path, env: dict[str, str], n: int) -> None:
    db = f"sqlite:///{root / 'campaign.db'}"
    sets = "\n".join(f"{k} = {json.dumps(v)}" for k, v in (s.split("=", 1) for s in TINY_SETS))
    camp = root / "campaign.toml"
    camp.write_text(
        f'[campaign]\nname = "bench"\nclusters = [{json.dumps(str(cfg))}]\n'
        f'topologies = ["1x1"]\nrepeats = {n}\n[campaign.set]\n{sets}\n'
    )

    def cli(*argv: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        t0 = time.monotonic()
        res = subprocess.run(
            [sys.executable, "-m", "orchestrator", "--db", db, *argv],
            cwd=root, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {res.stderr[-2000:]}")
        return time.monotonic() - t0, res

    submit_s, _ = cli("campaign", "submit", str(camp))
    worker_s, res = cli("worker", "--idle-exit", "1s")
    print(
        f"campaign of {n} Slurm runs: submit {submit_s:.2f} s ({1000 * submit_s / n:.0f} ms/run, "
        f"CLI start included); one worker following all {n} jobs until stored: {worker_s:.1f} s "
        f"({res.stdout.strip()})"
    )


PHASES = ("stage", "submit", "queue", "workload", "collect", "publish", "overhead")

if __name__ == "__main__":
    main()
