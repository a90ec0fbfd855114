"""`orchestrator history CONFIG` and the history page over a 10,000-run store.

    .venv/bin/python bench/bench_history.py                  # SQLite and PostgreSQL
    .venv/bin/python bench/bench_history.py --no-postgres --repeat 10

Prints numbers; asserts nothing. Targets (issue 26): `history` under 1 s, the history page's
p95 under 200 ms. The store (tests/support/history_store.py, rows written directly) holds
10,000 succeeded runs: four configurations of 2,500 runs each (two planted steps apiece), and
the command and page are timed for one of them; then a second store where one configuration has
all 10,000 runs (the worst case: every run of the store is in the history). `history` is timed
as a lab runs it, a new process each time (median of --repeat, wall clock and the process's CPU time: on a
loaded machine the CPU time is what the command costs; Python's start and imports included, and
`orchestrator --help` timed beside it as the floor); the page through `orchestrator serve` over one keep-alive connection
(server time from the Server-Timing header, and the wall time the client waited).
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_web import p95, serve  # noqa: E402
from orchestrator.store import upgrade_store  # noqa: E402
from tests.support.history_store import LABEL, PRECISION, TOPOLOGY, plant_history  # noqa: E402
from tests.support.web_fixtures import scratch_postgres  # noqa: E402

VENDORS = ("metax-c500", "nvidia", "kunlunxin", "iluvatar")


def fill(url: str, per_config: int, configs: int) -> None:
    upgrade_store(url)
    for n, vendor in enumerate(VENDORS[:configs]):
        plant_history(url, runs=per_config, cv=0.02, seed=n, prefix=f"h{n}", vendor=vendor)


def time_command(url: str, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of each `orchestrator history` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spent, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--db",
                url,
                "history",
                f"{VENDORS[0]}:{TOPOLOGY}:{PRECISION}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        spent.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
    return spent, cpu


def time_help(repeat: int) -> tuple[list[float], list[float]]:
    """The command line's own start (Python, click, the command modules): the floor."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spent, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "--help"], env=env, capture_output=True
        )
        spent.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return spent, cpu


def time_page(url: str, repeat: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    process, port = serve(url)
    path = f"/history?vendor={VENDORS[0]}&config={LABEL.replace(' ', '+')}&precision={PRECISION}&fix_hp=epochs%3D2"
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        server, wall = [], []
        for i in range(warmup + repeat):
            began = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or b"change-points" not in body:
                raise SystemExit(f"{path}: HTTP {response.status}: {body[:300]!r}")
            if i >= warmup:
                wall.append((time.perf_counter() - began) * 1000)
                timing = response.getheader("server-timing") or "app;dur=nan"
                server.append(float(timing.split("dur=")[1]))
        return server, wall
    finally:
        process.terminate()
        process.wait(timeout=10)


def measure(name: str, url: str, per_config: int, configs: int, repeat: int) -> None:
    began = time.perf_counter()
    fill(url, per_config, configs)
    print(
        f"{name}: {per_config * configs:,} runs ({configs} configuration(s) of {per_config:,}) "
        f"made in {time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    command, cpu = time_command(url, repeat)
    baseline, baseline_cpu = time_help(repeat)
    print(
        f"{name}: orchestrator history ({per_config:,} runs): wall median {statistics.median(command):.2f} s "
        f"(max {max(command):.2f}), CPU median {statistics.median(cpu):.2f} s; `orchestrator --help` "
        f"alone: wall {statistics.median(baseline):.2f} s, CPU {statistics.median(baseline_cpu):.2f} s"
    )
    if url.startswith("postgresql"):
        from tests.support.store_fixtures import pg_reader

        with pg_reader(url) as reader:  # `serve` connects as a SELECT-only role
            server, wall = time_page(reader, repeat * 3)
    else:
        server, wall = time_page(url, repeat * 3)
    print(
        f"{name}: history page ({per_config:,} runs): server median {statistics.median(server):.0f} ms, "
        f"p95 {p95(server):.0f} ms; wall median {statistics.median(wall):.0f} ms, p95 {p95(wall):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    layouts = ((2_500, 4), (10_000, 1))
    with tempfile.TemporaryDirectory() as tmp:
        for per_config, configs in layouts:
            url = f"sqlite:///{Path(tmp) / f'history-{per_config}.db'}"
            measure("sqlite", url, per_config, configs, args.repeat)
    if args.no_postgres:
        return
    if not os.environ.get("ORCHESTRATOR_TEST_PG_URL"):
        print("postgresql: skipped (no ORCHESTRATOR_TEST_PG_URL)")
        return
    for per_config, configs in layouts:
        with scratch_postgres() as url:
            measure("postgresql", url, per_config, configs, args.repeat)


if __name__ == "__main__":
    main()
