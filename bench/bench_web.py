"""Results pages benchmark: server time per page, median and p95, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_web.py                    # 10,000 runs x 16 ranks, both backends
    .venv/bin/python bench/bench_web.py --runs 100000 --repeat 10   # 10,000, then 100,000
    .venv/bin/python bench/bench_web.py --runs 2000 --no-postgres
    .venv/bin/python bench/bench_web.py --db sqlite:///big.db --repeat 10   # a store built before

Prints numbers; asserts nothing. Targets (issue 27): every page's server p95 < 100 ms at 100,000
runs x 16 ranks, and pages that show a fixed amount (runs pages, one run, 90 days of one
configuration, compare) at most 1.5 times their time at 10,000 runs.

The store is bench/bench_store.py's runs (succeeded, 16 ranks, four vendors, two topologies, two
precisions) at a lab's pace: each 10,000 runs span two more years back, so a 90-day window holds
as many runs in a store of 100,000 as in one of 10,000. On top, what a lab's store also holds: 5 %
of the runs failed with a reason, two campaigns of 200 runs, one run with 10,000 monitor samples
and one with 100,000. With --runs above --baseline (10,000), the pages are measured at the
baseline first, the rest of the runs are added, and measured again: the last column is the
ratio of the two p95s. `orchestrator serve` runs as a subprocess; each page is requested
--repeat times over one keep-alive connection after warm-ups. "server" is the handler's time
from the Server-Timing header (query, render), "wall" what the client waited (adds HTTP and
uvicorn). `report` (the CLI, in-process) of one configuration's whole history is timed too.
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

from bench.bench_store import Templates, scratch_postgres  # noqa: E402
from orchestrator.store import open_store, upgrade_store  # noqa: E402
from orchestrator.store.models import Campaign, MonitorSample  # noqa: E402
from tests.support.store_fixtures import pg_reader  # noqa: E402

try:  # the store before issue 27 has no summaries: the benchmark measures both
    from orchestrator.store.derived import rebuild_all
except ImportError:  # pragma: no cover
    rebuild_all = None  # type: ignore[assignment]

MONITORED = {"bench-0000001": 10_000, "bench-0000002": 100_000}


RUNS_PER_TWO_YEARS = 10_000


def add_runs(url: str, first: int, last: int, now: datetime, batch: int = 1000) -> None:
    """bench_store's runs first..last-1 through the store's write path (bulk inserts, the
    summaries kept as every publish keeps them); each 10,000 runs two more years back."""
    templates = Templates()
    with open_store(url) as store:
        for start in range(first, last, batch):
            folders = [
                templates.folder(i, now - timedelta(days=730 * (i // RUNS_PER_TWO_YEARS)), days=730)
                for i in range(start, min(last, start + batch))
            ]
            store.write_folders(folders)


def add_lab_data(url: str, runs: int, first: bool) -> None:
    """Failures, campaigns and monitor samples on top of bench_store's runs (campaigns and
    monitors once); the failures are SQL by hand, so the summaries are rebuilt after them."""
    now = datetime.now(timezone.utc)
    with open_store(url) as store, store.transaction() as conn:
        conn.execute(
            text(
                "UPDATE runs SET status = 'failed', reason = 'rank 3 on node2 exited with code 1: "
                "NCCL timeout', p_core = NULL, p_train = NULL, p_whole = NULL, map = NULL "
                "WHERE run_id LIKE '%5' AND run_id LIKE 'bench-%' AND run_id NOT LIKE '%05'"
            )
        )
        for c in range(2 if first else 0):
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
            if not ids:  # a store too small for campaigns
                continue
            conn.execute(
                text("UPDATE runs SET campaign_id = :c WHERE run_id = :r"),
                [{"c": campaign_id, "r": r} for r in ids],
            )
        for run_id, count in MONITORED.items() if first else ():
            conn.execute(insert(MonitorSample), list(_samples(run_id, count, now)))
        if rebuild_all is not None:
            rebuild_all(conn)
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
        ("runs, text in 9% of reasons", "/runs?q=NCCL+timeout"),
        ("runs, text in every run id", "/runs?q=bench-"),
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
        ("campaign, 200 runs", "/campaigns/bench-campaign-1"),
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


def cpu_ms(pid: int) -> float:
    """CPU time the process's threads have run (Linux schedstat, ns resolution): on a loaded
    machine wall times stretch with the load, CPU times much less. On SQLite the database works
    inside the server process; PostgreSQL's backends are other processes, not counted."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            continue
    return total / 1e6


def measure_pages(
    name: str, url: str, args: argparse.Namespace, read_url: str | None
) -> dict[str, tuple[float, float]]:
    """(p95 server time, p95 server CPU time) of every page, printed and returned; `report`
    timed in-process."""
    process, port = serve(read_url or url)
    found: dict[str, tuple[float, float]] = {}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for label, path in pages(url):
            server, wall, cpu, size = [], [], [], 0
            for i in range(args.warmup + args.repeat):
                t0, c0 = time.perf_counter(), cpu_ms(process.pid)
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                spent = (time.perf_counter() - t0) * 1000
                used = cpu_ms(process.pid) - c0
                if response.status != 200:
                    raise SystemExit(f"{path}: HTTP {response.status}: {body[:300]!r}")
                timing = response.getheader("server-timing") or "app;dur=nan"
                if i >= args.warmup:
                    server.append(float(timing.split("dur=")[1]))
                    wall.append(spent)
                    cpu.append(used)
                size = len(body)
            found[label] = (p95(server), p95(cpu))
            _line(
                name, label, statistics.median(server), found[label], statistics.median(wall), size
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
    times, cpu_times = time_report(read_url or url, args)
    found[REPORT] = (p95(times), p95(cpu_times))
    _line(name, REPORT, statistics.median(times), found[REPORT], statistics.median(times), 0)
    return found


REPORT = "report CLI, 1 config, all history"


def time_report(url: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """`orchestrator report` of one configuration's whole history, in-process (no start-up)."""
    from click.testing import CliRunner

    from orchestrator.cli import _register, cli

    _register()

    argv = ["--db", url, "report", "--vendor", "metax", "--topology", "2x8", "--precision", "fp32"]
    runner = CliRunner()
    spent, cpu = [], []
    for i in range(args.warmup + args.repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        result = runner.invoke(cli, argv)
        if result.exit_code != 0:
            raise SystemExit(f"report: exit {result.exit_code}: {result.output[-300:]}")
        if i >= args.warmup:
            spent.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
    return spent, cpu


def _line(
    name: str, label: str, median: float, p95s: tuple[float, float], wall: float, size: int
) -> None:
    p95_ms, cpu_p95 = p95s
    verdict = "ok" if p95_ms < 100 else "OVER 100 ms"
    print(
        f"{name}: {label:<34} {median:>8.1f} ms {p95_ms:>7.1f} ms {cpu_p95:>7.1f} ms "
        f"{wall:>8.1f} ms {size:>9,}  {verdict}",
        flush=True,
    )


def measure(name: str, url: str, args: argparse.Namespace, read_url: str | None = None) -> None:
    """`read_url`: the SELECT-only role `serve` connects as on PostgreSQL (docs/security.md)."""
    upgrade_store(url)
    now = datetime.now(timezone.utc)
    stages = [n for n in (args.baseline, args.runs) if n <= args.runs]
    stages = sorted(set(stages))
    results: dict[int, dict[str, tuple[float, float]]] = {}
    made = 0
    for runs in stages:
        began = time.perf_counter()
        add_runs(url, made, runs, now)
        add_lab_data(url, runs, first=made == 0)
        made = runs
        print(
            f"{name}: store of {runs:,} runs x 16 ranks + monitors made in "
            f"{time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} CPUs (uptime: {_uptime()})",
            flush=True,
        )
        print(
            f"{name}: {'page (server time)':<34} {'median':>11} {'p95':>10} {'CPU p95':>10} "
            f"{'wall median':>11} {'bytes':>9}"
        )
        results[runs] = measure_pages(name, url, args, read_url)
        print(f"{name}: load average after {os.getloadavg()[0]:.1f}", flush=True)
    if len(stages) == 2:
        small, big = stages
        print(
            f"{name}: p95 at {big:,} runs against 100 ms, and its ratio to {small:,} runs "
            "(server time; server CPU time)"
        )
        for label, (ms, cpu) in results[big].items():
            ms0, cpu0 = results[small][label]
            print(
                f"{name}: {label:<34} {ms:>7.1f} ms x{_ratio(ms, ms0)} ({ms0:.1f} ms); "
                f"CPU {cpu:>6.1f} ms x{_ratio(cpu, cpu0)} ({cpu0:.1f} ms)  "
                f"{'ok' if ms < 100 else 'OVER 100 ms'}"
            )


def _ratio(big: float, small: float) -> str:
    return f"{big / small:.2f}" if small > 0 else "n/a"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument(
        "--baseline", type=int, default=10_000, help="measure at this many runs first"
    )
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("ORCHESTRATOR_TEST_PG_URL"))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--db",
        help="measure this store as it is (upgraded first, nothing added): one built earlier, "
        "to measure it again after a change of code",
    )
    args = parser.parse_args()
    if args.db:
        upgrade_store(args.db)
        name = "postgres" if args.db.startswith("postgres") else "sqlite"
        print(f"{name}: {args.db.split('@')[-1]}: load average {os.getloadavg()[0]:.1f}")
        if name == "sqlite":
            measure_pages(name, args.db, args, None)
        else:  # `serve` reads as a SELECT-only role, as a lab's does (docs/security.md)
            with pg_reader(args.db, args.pg_url) as reader:
                measure_pages(name, args.db, args, reader)
        return
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
