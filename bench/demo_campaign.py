"""Issue 6's "done when", end to end on this machine: a campaign of a dozen tiny runs over three
real sshd nodes, two workers, one of them SIGKILLed mid-run and replaced; then the report with
plots. Prints what happened; exits non-zero if the campaign did not end with every run final.

    .venv/bin/python bench/demo_campaign.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cluster_fixtures import TINY_SETS, cli_env, run_processes, write_cluster_file  # noqa: E402
from tests.support.sshd_fixtures import SshdCluster  # noqa: E402
from tests.support.workload_fixtures import make_synth  # noqa: E402


def cli(root: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], cwd=root, env=cli_env(), text=True, **kw
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the working folder here")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="demo-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    data = make_synth(root / "coco", images=8, val_images=4, size=64)
    db = f"sqlite:///{root / 'results.db'}"
    with SshdCluster(root / "sshd", 3).start() as cluster:
        write_cluster_file(
            root / "cluster.toml",
            cluster.nodes,
            cluster.ssh,
            data_dir=data,
            workdir_root=root / "nodes",
        )
        sets = "\n".join(f"{k} = {json.dumps(v)}" for k, v in (s.split("=", 1) for s in TINY_SETS))
        (root / "campaign.toml").write_text(
            '[campaign]\nname = "demo"\nclusters = ["cluster.toml"]\n'
            'topologies = ["1x1", "2x1"]\nprecisions = ["fp32", "amp"]\nrepeats = 3\n\n'
            f'[campaign.set]\n{sets}\nlr = "0.0025"\n'
        )
        t0 = time.monotonic()
        sub = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--db",
                db,
                "campaign",
                "submit",
                "campaign.toml",
            ],
            cwd=root,
            env=cli_env(),
            capture_output=True,
            text=True,
        )
        print(sub.stdout.strip().splitlines()[-1] if sub.stdout.strip() else sub.stderr)
        if sub.returncode:
            sys.exit(sub.stderr)
        worker = ["--db", db, "worker", "--idle-exit", "20s"]
        logs = [open(root / f"worker{i}.log", "w") for i in range(3)]
        w1 = cli(root, *worker, "--id", "w1", stdout=logs[0], stderr=subprocess.STDOUT)
        w2 = cli(root, *worker, "--id", "w2", stdout=logs[1], stderr=subprocess.STDOUT)
        # Kill w1 in the middle of its second run.
        deadline = time.monotonic() + 600
        started = 0
        while time.monotonic() < deadline:
            with sqlite3.connect(root / "results.db") as conn:
                started = conn.execute(
                    "SELECT count(*) FROM runs WHERE status != 'queued'"
                ).fetchone()[0]
            if started >= 3 and run_processes():
                break
            time.sleep(0.5)
        time.sleep(3)
        os.kill(w1.pid, signal.SIGKILL)
        print(f"SIGKILLed worker w1 after {time.monotonic() - t0:.0f}s with {started} runs started")
        w3 = cli(root, *worker, "--id", "w3", stdout=logs[2], stderr=subprocess.STDOUT)
        for w in (w2, w3):
            w.wait(timeout=1800)
        print(f"workers done after {time.monotonic() - t0:.0f}s")
        with sqlite3.connect(root / "results.db") as conn:
            rows = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
            lost = conn.execute("SELECT reason FROM runs WHERE status = 'lost'").fetchall()
            camp = conn.execute("SELECT campaign_id, status FROM campaigns").fetchall()
        print("runs by status:", dict(rows))
        for (reason,) in lost:
            print("lost:", reason)
        print("campaign:", camp)
        print("processes left:", len(run_processes()))
        report = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--db",
                db,
                "report",
                "--campaign",
                camp[0][0],
                "--plots",
                "plots",
            ],
            cwd=root,
            env=cli_env(),
            capture_output=True,
            text=True,
        )
        print(report.stdout)
        print(report.stderr[-1000:])
        print("plots:", sorted(p.name for p in (root / "plots").glob("*.png")))
        print("folder:", root)
        final = sum(n for s, n in rows if s in ("succeeded", "failed", "lost", "cancelled"))
        sys.exit(0 if final == 12 and report.returncode == 0 else 1)


if __name__ == "__main__":
    main()
