"""Time from SIGKILL of `orchestrator submit` to adoption by a worker, and to clean nodes
without any adopter (the node guards alone), against the configured follower grace.

Two sshd nodes on loopback addresses, the real workload under real torchrun, SQLite. For each
grace: a 2x1 run is SIGKILLed mid-training (1) with a worker running, which adopts it and
finishes it; (2) with no orchestrator process left, until no process of the run is left on any
node. Prints one row per grace with both times and their ratio to the grace.

    .venv/bin/python bench/bench_follower_grace.py --grace 10 --grace 30
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cluster_fixtures import (  # noqa: E402
    cli_env,
    run_processes,
    set_args,
    wait_for,
    write_cluster_file,
)
from tests.support.sshd_fixtures import SshdCluster  # noqa: E402
from tests.support.workload_fixtures import make_synth  # noqa: E402

SETS = ["max_iters=400", "epochs=400", "eval=false", "lr=0.0005"]


def _cli(root: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.Popen(
        argv, cwd=root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rows(db: Path, sql: str) -> list[tuple]:
    if not db.exists():  # sqlite3.connect would create it empty, before submit does
        return []
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def _start(root: Path, cfg: Path, db: Path, sets: list[str]) -> tuple[subprocess.Popen[str], str]:
    before = {r for (r,) in _rows(db, "SELECT run_id FROM runs")}
    proc = _cli(root, "--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *sets)

    def started() -> list[str]:
        if proc.poll() is not None:
            raise SystemExit(f"submit exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        return [r for (r,) in _rows(db, "SELECT run_id FROM runs") if r not in before]

    new = wait_for(started, 120, "run")
    run_id = new[0]
    wait_for(
        lambda: len([p for p in run_processes(run_id) if p["local_rank"] is not None]) == 2,
        180,
        "both ranks",
    )
    return proc, run_id


def _adoption(root: Path, cfg: Path, db: Path) -> float:
    proc, run_id = _start(root, cfg, db, set_args("max_iters=30", "epochs=30", "eval=false"))
    worker = _cli(root, "--db", f"sqlite:///{db}", "worker", "--max-runs", "1", "--id", "bench")
    proc.send_signal(signal.SIGKILL)
    killed = time.time()
    proc.communicate(timeout=30)
    wait_for(
        lambda: _rows(
            db,
            f"SELECT 1 FROM run_status_history WHERE run_id = '{run_id}' "
            "AND reason LIKE 'follow by bench%'",
        ),
        300,
        "adoption",
    )
    adopted = time.time() - killed
    worker.communicate(timeout=600)
    return adopted


def _clean(root: Path, cfg: Path, db: Path, grace: float) -> float:
    proc, run_id = _start(root, cfg, db, set_args(*SETS))
    proc.send_signal(signal.SIGKILL)
    killed = time.time()
    proc.communicate(timeout=30)
    wait_for(lambda: run_processes(run_id) == [], grace + 120, "clean nodes")
    return time.time() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, action="append", help="seconds (repeatable)")
    args = parser.parse_args()
    graces = args.grace or [10.0, 30.0]
    with tempfile.TemporaryDirectory(prefix="bench-grace-") as tmp:
        root = Path(tmp)
        data = make_synth(root / "coco", images=8, val_images=4, size=64)
        nodes = SshdCluster(root / "sshd", 2, first_host=40).start()
        try:
            print("grace_s  adopted_after_s  adopted/grace  clean_after_s  clean/grace")
            for grace in graces:
                cfg = write_cluster_file(
                    root / f"cluster-{grace:g}.toml",
                    nodes.nodes,
                    nodes.ssh,
                    data_dir=data,
                    workdir_root=root / "nodes",
                    follower_grace_s=grace,
                )
                db = root / f"results-{grace:g}.db"
                adopted = _adoption(root, cfg, db)
                clean = _clean(root, cfg, db, grace)
                print(
                    f"{grace:7.0f}  {adopted:15.1f}  {adopted / grace:13.2f}  "
                    f"{clean:13.1f}  {clean / grace:11.2f}",
                    flush=True,
                )
        finally:
            nodes.stop()


if __name__ == "__main__":
    main()
