"""Scheduler benchmark: scheduling decisions and lease rounds with 1,000 queued runs on the store.

    .venv/bin/python bench/bench_scheduler.py                 # SQLite and PostgreSQL
    .venv/bin/python bench/bench_scheduler.py --no-postgres --queued 1000 --rounds 50

Prints numbers; asserts nothing. Target (issue 6): under 50 ms per scheduling decision on SQLite
and PostgreSQL.

What is timed (16-node cluster file, queued runs of 1x1, 2x1 and 4x1, some pinned to nodes):
- decision, head: every node is leased by a running run; the run ends (its leases released, as
  the worker's last transaction does) and the clock starts; it stops when `claim_next` has read
  the queue and the leases, decided, and claimed the FIFO head (run row moved to running, leases
  inserted). That is the store side of "nodes free -> run starts"; a worker adds its poll delay
  (up to POLL_S = 1 s, when idle) on top.
- decision, deep: the worst case: every queued run waits for one busy node except the LAST one,
  so the decision walks the whole queue before it finds the run it can start.
- lease round: acquire (claim one run, 2 nodes), renew, release; the run is put back untimed.
Each number is the median (and p90) over --rounds repetitions; the queue is kept at --queued.

PostgreSQL needs --pg-url or $ORCHESTRATOR_TEST_PG_URL (a role that may create databases): the
benchmark creates a scratch database and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One way to make and drop a throwaway Postgres database for the benches (bench/ is on sys.path).
from bench_store import scratch_postgres  # noqa: E402
from sqlalchemy import delete, text, update  # noqa: E402

from orchestrator.clock import utcnow  # noqa: E402
from orchestrator.config import load_cluster  # noqa: E402
from orchestrator.queue import claims  # noqa: E402
from orchestrator.queue.enqueue import enqueue_runs  # noqa: E402
from orchestrator.runs.lifecycle import SubmitRequest  # noqa: E402
from orchestrator.specs import ClusterSpec, Topology  # noqa: E402
from orchestrator.store import (  # noqa: E402
    Store,
    leases,
    open_store,
    orphans,
    upgrade_store,
)
from orchestrator.store import queue as stored_queue  # noqa: E402
from orchestrator.store.models import NodeLease, Run  # noqa: E402

NODES = 16
SETS = (("max_iters", "2"), ("epochs", "1"))


def write_cluster(folder: Path) -> Path:
    lines = ['[cluster]\nname = "bench"\nvendor = "cpu"\nruntime = "host"\n']
    for i in range(NODES):
        lines.append(
            f'[[nodes]]\nname = "node{i:02d}"\naddress = "10.0.0.{i + 1}"\naccelerators = 8\n'
        )
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


def requests(count: int, pinned_to: str | None = None) -> list[SubmitRequest]:
    """A mixed queue: 1x1, 2x1, 4x1 in turn; every fifth pinned to two named nodes."""
    out = []
    for i in range(count):
        topo = Topology.parse(("1x1", "2x1", "4x1")[i % 3])
        names: tuple[str, ...] | None = None
        if pinned_to:
            names = (pinned_to,)
            topo = Topology.parse("1x1")
        elif i % 5 == 0:
            names = tuple(f"node{(i + k) % NODES:02d}" for k in range(topo.nnodes))
        out.append(SubmitRequest(topo, names, "fp32", SETS))
    return out


def enqueue(store: Store, cluster: ClusterSpec, reqs: list[SubmitRequest]) -> list[str]:
    return enqueue_runs(store, [(cluster, r, {}) for r in reqs])


def occupy(store: Store, cluster: ClusterSpec, nodes: list[str]) -> str:
    """A running run holding `nodes` (what a busy cluster looks like)."""
    (run_id,) = enqueue(store, cluster, [SubmitRequest(Topology(len(nodes), 1), tuple(nodes))])
    # Make it the oldest so the claim below takes it, whatever else is queued.
    with store.transaction() as conn:
        conn.execute(
            update(Run).where(Run.run_id == run_id).values(submitted_at=utcnow().replace(year=2000))
        )
    claim = claims.claim_next(store, "occupier", 3600)
    assert claim is not None and claim.run_id == run_id, claim
    return run_id


class Timer:
    """Wall time and this process's CPU time of each timed block. On a loaded machine the wall
    time includes waiting for a core; the CPU time is what the decision itself costs here (on
    PostgreSQL the server's work is in the wall time only)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)

    def __str__(self) -> str:
        ms = sorted(s * 1000 for s in self.wall)
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        cpu = statistics.median(s * 1000 for s in self.cpu)
        return (
            f"wall median {statistics.median(ms):7.2f} ms  p90 {p90:7.2f} ms   "
            f"cpu median {cpu:6.2f} ms   (n={len(ms)})"
        )


def bench_backend(name: str, url: str, queued: int, rounds: int, folder: Path) -> None:
    upgrade_store(url)
    store = open_store(url)
    cluster = load_cluster(str(write_cluster(folder)))
    all_nodes = [n.name for n in cluster.nodes]
    try:
        t0 = time.perf_counter()
        enqueue(store, cluster, requests(queued))
        print(f"{name}: {queued} runs queued on {NODES} nodes in {time.perf_counter() - t0:.2f} s")

        # -- head: all nodes busy, one run ends, the FIFO head starts ---------------------------
        samples = Timer()
        for _ in range(rounds):
            blocker = occupy(store, cluster, all_nodes)
            orphans.end_run(store, blocker, "succeeded", "bench", ["running"])
            with samples():
                claim = claims.claim_next(store, "bench-worker", 60)
            assert claim is not None
            orphans.end_run(store, claim.run_id, "succeeded", "bench", ["running"])
            enqueue(store, cluster, requests(1))  # keep the queue at `queued`
        print(f"{name}: decision, FIFO head starts        {samples}")

        # -- deep: every queued run waits for node00 except the last one ------------------------
        with store.transaction() as conn:
            conn.execute(delete(NodeLease))
            conn.execute(update(Run).where(Run.status == "queued").values(status="cancelled"))
        enqueue(store, cluster, requests(queued - 1, pinned_to="node00"))
        samples = Timer()
        for _ in range(rounds):
            blocker = occupy(store, cluster, ["node00"])
            enqueue(store, cluster, requests(1, pinned_to="node01"))  # the last in the queue
            with samples():
                claim = claims.claim_next(store, "bench-worker", 60)
            assert claim is not None and claim.nodes == ("node01",), claim
            orphans.end_run(store, claim.run_id, "succeeded", "bench", ["running"])
            orphans.end_run(store, blocker, "succeeded", "bench", ["running"])
        with store.reading() as conn:
            waiting = conn.scalar(text("SELECT count(*) FROM runs WHERE status = 'queued'"))
        print(f"{name}: decision, the last of {waiting + 1:4d} starts  {samples}")

        # -- lease round: acquire + renew + release --------------------------------------------
        (run_id,) = enqueue(store, cluster, [SubmitRequest(Topology(2, 1), ("node02", "node03"))])
        with store.reading() as conn:
            run = next(q for q in claims.read_queue(conn) if q.run_id == run_id)
        samples = Timer()
        for _ in range(rounds):
            with samples():
                assert stored_queue.take(store, run, ("node02", "node03"), "bench-worker", 60)
                held, _ = leases.renew(store, run_id, "bench-worker", 60)
                leases.release(store, run_id, "bench-worker")
            assert held == 2
            with store.transaction() as conn:
                conn.execute(update(Run).where(Run.run_id == run_id).values(status="queued"))
        print(f"{name}: lease round (acquire+renew+release) {samples}")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("ORCHESTRATOR_TEST_PG_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench_backend(
            "sqlite", f"sqlite:///{folder / 'bench.db'}", args.queued, args.rounds, folder
        )
        if not args.no_postgres:
            if not args.pg_url:
                sys.exit("PostgreSQL: set $ORCHESTRATOR_TEST_PG_URL or --pg-url (or --no-postgres)")
            with scratch_postgres(args.pg_url) as url:
                bench_backend("postgres", url, args.queued, args.rounds, folder)


if __name__ == "__main__":
    main()
