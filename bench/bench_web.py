"""Results pages benchmark: server time per page, median and p95, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_web.py                    # 10,000 runs x 16 ranks, both backends
    .venv/bin/python bench/bench_web.py --runs 2000 --no-postgres

Prints numbers; asserts nothing. Targets (issue 15): p95 < 100 ms for the runs, run, seed-table,
compare and history pages; < 200 ms for the page of a run with 10,000 monitor samples.

The store is bench/bench_store.py's (10,000 succeeded runs x 16 ranks over two years, four
vendors, two topologies, two precisions), plus what a lab's store also holds: 5 % of the runs
failed with a reason, two campaigns of 200 runs, one run with 10,000 monitor samples and one
with 100,000. `orchestrator serve` runs as a subprocess; each page is requested --repeat times
over one keep-alive connection after warm-ups. "server" is the handler's time from the
Server-Timing header (query, render), "wall" what the client waited (adds HTTP and uvicorn).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from bench.bench_store import Templates, ingest, scratch_postgres  # noqa: E402
from orchestrator.store import open_store, upgrade_store  # noqa: E402
from orchestrator.store.models import Campaign, MonitorSample  # noqa: E402
from tests.support.store_fixtures import pg_reader  # noqa: E402

MONITORED = {"bench-0000001": 10_000, "bench-0000002": 100_000}


def add_lab_data(url: str, runs: int) -> None:
    """Failures, campaigns and monitor samples on top of bench_store's runs."""
    now = datetime.now(timezone.utc)
    with open_store(url) as store, store.transaction() as conn:
        conn.execute(
            text(
                "UPDATE runs SET status = 'failed', reason = 'rank 3 on node2 exited with code 1: "
                "NCCL timeout', p_core = NULL, p_train = NULL, p_whole = NULL, map = NULL "
                "WHERE run_id LIKE '%5' AND run_id LIKE 'bench-%' AND run_id NOT LIKE '%05'"
            )
        )
        for c in range(2):
            campaign_id = f"bench-campaign-{c}"
            conn.execute(
                insert(Campaign),
                [
                    {
                        "campaign_id": campaign_id,
                        "name": f"sweep {c}",
                        "spec": {},
                        "status": "finished",
                        "created_by": "bench",
                        "created_at": now,
                    }
                ],
            )
            ids = [f"bench-{i:07d}" for i in range(1000 + c * 200, 1200 + c * 200) if i < runs]
            conn.execute(
                text("UPDATE runs SET campaign_id = :c WHERE run_id = :r"),
                [{"c": campaign_id, "r": r} for r in ids],
            )
        for run_id, count in MONITORED.items():
            conn.execute(insert(MonitorSample), list(_samples(run_id, count, now)))
        # Statistics, as a lab's store has them (SQLite: PRAGMA optimize when a command that
        # ran queries closes; PostgreSQL: autovacuum); the read-only server cannot make them.
        conn.execute(text("ANALYZE"))


def _samples(run_id: str, count: int, now: datetime):  # type: ignore[no-untyped-def]
    """2 nodes x (host CPU, host memory, 8 devices x 4 metrics) = 68 series, every 5 s."""
    series = [
        (n, None, m)
        for n in ("node1", "node2")
        for m in ("host_cpu_util_percent", "host_mem_used_bytes")
    ]
    series += [
        (n, d, m)
        for n in ("node1", "node2")
        for d in range(8)
        for m in ("device_mem_used_bytes", "device_power_w", "device_temp_c", "device_util_percent")
    ]
    start = now - timedelta(hours=3)
    for i in range(count):
        node, device, metric = series[i % len(series)]
        ts = start + timedelta(seconds=5 * (i // len(series)))
        yield {
            "run_id": run_id,
            "node_name": node,
            "ts": ts,
            "device_index": device,
            "metric": metric,
            "value": float(i % 97),
        }


def pages(url: str) -> list[tuple[str, str]]:
    with open_store(url) as store, store.engine.connect() as conn:
        config = conn.execute(
            text(
                "SELECT vendor, config_label, precision, fix_hp FROM runs WHERE vendor = 'metax' "
                "AND topology = '2x8' AND precision = 'fp32' AND status = 'succeeded' LIMIT 1"
            )
        ).one()
        a, b = (
            conn.execute(
                text(
                    "SELECT run_id FROM runs WHERE vendor = 'metax' AND topology = '2x8' AND "
                    "precision = 'fp32' AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 2"
                )
            )
            .scalars()
            .all()
        )
    history = urlencode(
        {"vendor": config[0], "config": config[1], "precision": config[2], "fix_hp": config[3]}
    )
    return [
        ("runs, first page", "/runs"),
        ("runs, 4 filters", "/runs?vendor=metax&topology=2x8&status=succeeded&since=90d"),
        ("runs, by p_core, page 20", "/runs?sort=p_core&order=desc&page=20"),
        ("runs, text search", "/runs?q=bench-00099"),
        ("run (16 ranks)", "/runs/bench-0000003"),
        ("run, 10,000 monitor samples", "/runs/bench-0000001"),
        ("run, 100,000 monitor samples", "/runs/bench-0000002"),
        (
            "seed table, 1 config, 90 days",
            "/seed?vendor=metax&topology=2x8&precision=fp32&since=90d",
        ),
        ("seed table, metax 2x8, all", "/seed?vendor=metax&topology=2x8"),
        (
            "seed table CSV, 1 config 90 d",
            "/seed.csv?vendor=metax&topology=2x8&precision=fp32&since=90d",
        ),
        ("compare, 2 runs", f"/compare?run={a}&run={b}"),
        ("compare, 2 configurations", "/compare?config=metax:2x8:fp32&config=nvidia:2x8:fp32"),
        ("history, configurations", "/history"),
        ("history, 1 config (all runs)", f"/history?{history}"),
        ("scaling and vendors", "/scaling"),
        ("campaigns and queue", "/queue"),
    ]


def serve(url: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--db", url, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                died = process.stderr.read().decode() if process.stderr else "serve died"
                raise SystemExit(died) from None
            time.sleep(0.1)
    raise SystemExit("orchestrator serve did not start in 30 s")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(name: str, url: str, args: argparse.Namespace, read_url: str | None = None) -> None:
    """`read_url`: the SELECT-only role `serve` connects as on PostgreSQL (docs/security.md)."""
    upgrade_store(url)
    began = time.perf_counter()
    with open_store(url) as store:
        ingest(store, Templates(), args.runs, 500, datetime.now(timezone.utc))
    add_lab_data(url, args.runs)
    print(
        f"{name}: store of {args.runs:,} runs x 16 ranks + monitors made in {time.perf_counter() - began:.0f} s"
    )
    print(
        f"{name}: load average before the requests {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    process, port = serve(read_url or url)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        print(
            f"{name}: {'page':<32} {'server median':>13} {'server p95':>10} {'wall median':>11}  bytes"
        )
        for label, path in pages(url):
            server, wall, size = [], [], 0
            for i in range(args.warmup + args.repeat):
                t0 = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                spent = (time.perf_counter() - t0) * 1000
                if response.status != 200:
                    raise SystemExit(f"{path}: HTTP {response.status}: {body[:300]!r}")
                timing = response.getheader("server-timing") or "app;dur=nan"
                if i >= args.warmup:
                    server.append(float(timing.split("dur=")[1]))
                    wall.append(spent)
                size = len(body)
            print(
                f"{name}: {label:<32} {statistics.median(server):>10.1f} ms {p95(server):>7.1f} ms "
                f"{statistics.median(wall):>8.1f} ms  {size:,}"
            )
        print(f"{name}: load average after {os.getloadavg()[0]:.1f}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("ORCHESTRATOR_TEST_PG_URL"))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        measure("sqlite", f"sqlite:///{tmp}/results.db", args)
    if args.no_postgres:
        return
    if not args.pg_url:
        print("postgres: skipped (no --pg-url and no $ORCHESTRATOR_TEST_PG_URL)")
        return
    with scratch_postgres(args.pg_url) as url, pg_reader(url, args.pg_url) as reader:
        measure("postgres", url, args, reader)


if __name__ == "__main__":
    main()
