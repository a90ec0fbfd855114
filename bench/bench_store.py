"""Results-store benchmark: bulk ingest into SQLite and PostgreSQL, then the admins' two queries.

    .venv/bin/python bench/bench_store.py                  # 10,000 runs x 16 ranks, both backends
    .venv/bin/python bench/bench_store.py --runs 2000 --no-postgres

Prints numbers; asserts nothing. Targets (issue 2): >= 50,000 rank rows/s into SQLite and >= 20,000
into PostgreSQL; the seed-table report and "best p_core per vendor and topology over the last 90
days" each under 50 ms on both.

What is timed:
- ingest: `Store.write_folders()`, the store's write path (cross-rank checks, metrics, row
  building, one transaction per batch of runs), on run folders already read into memory. Reading
  and validating the JSON files is measured separately ("from files", a smaller sample), because
  it costs the same whatever the database.
- queries: the median of several runs over the whole history, on a warm connection.

PostgreSQL needs --pg-url or $ORCHESTRATOR_TEST_PG_URL (a role that may create databases): the
benchmark creates a scratch database and drops it afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from orchestrator.reports.report import render_report  # noqa: E402
from orchestrator.runfolder.folder import RankFile, RunFolder, RunManifest, write_manifest  # noqa: E402
from orchestrator.store import Store, open_store, upgrade_store  # noqa: E402
from orchestrator.store.queries import Selection, environment, seed_rows  # noqa: E402
from tests.fixtures.make_runs import (  # noqa: E402
    METAX_ENV,
    _manifest,
    build_run_docs,
    resolved_hparams,
)
from workload.faster_rcnn import result_format  # noqa: E402

VENDORS = (("metax", "MXC500"), ("nvidia", "A100"), ("kunlunxin", "R300"), ("iluvatar", "BI-V100"))
TOPOLOGIES = ((2, 8), (4, 4))  # 16 ranks each
PRECISIONS = ("fp32", "amp")
BEST_P_CORE = {
    "sqlite": """
        SELECT vendor, topology, MAX(p_core) AS best_p_core
        FROM runs
        WHERE status = 'succeeded' AND finished_at >= datetime('now', '-90 days')
        GROUP BY vendor, topology ORDER BY vendor, topology""",
    "postgresql": """
        SELECT vendor, topology, MAX(p_core) AS best_p_core
        FROM runs
        WHERE status = 'succeeded' AND finished_at >= now() - interval '90 days'
        GROUP BY vendor, topology ORDER BY vendor, topology""",
}


class Templates:
    """A few dozen distinct 16-rank runs as JSON text; each benchmark run is one of them with
    its own run id and times, parsed back as `orchestrator ingest` would parse the files."""

    def __init__(self) -> None:
        self.items: list[tuple[RunManifest, list[str], dict[str, Any]]] = []
        for v, (vendor, label) in enumerate(VENDORS):
            for t, (nnodes, nproc) in enumerate(TOPOLOGIES):
                for p, precision in enumerate(PRECISIONS):
                    run_id = "TEMPLATE-RUN-ID"
                    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
                    hp = resolved_hparams({"batch_size": 16, "lr": 0.08, "epochs": 2}, precision)
                    docs = build_run_docs(
                        run_id,
                        nnodes,
                        nproc,
                        hparams=hp,
                        p_core_per_rank=20.0 + 7 * v + 3 * t + 5 * p,
                        host=f"{vendor[:2]}-node",
                        start=start.timestamp(),
                    )
                    manifest = _manifest(
                        run_id,
                        vendor,
                        label,
                        (nnodes, nproc),
                        "succeeded",
                        start,
                        15,
                        {"epochs": "2"},
                        precision,
                    )
                    texts = [json.dumps(d, indent=2, sort_keys=True) + "\n" for d in docs]
                    self.items.append((manifest, texts, METAX_ENV))

    def folder(self, index: int, now: datetime, days: int = 730) -> RunFolder:
        manifest, texts, env = self.items[index % len(self.items)]
        run_id = f"bench-{index:07d}"
        finished = now - timedelta(minutes=(index * 104_729) % (days * 24 * 60))
        manifest = replace(
            manifest,
            run_id=run_id,
            submitted_at=finished - timedelta(minutes=18),
            started_at=finished - timedelta(minutes=15),
            finished_at=finished,
        )
        manifest_text = json.dumps(manifest.to_dict(), indent=2)
        ranks = []
        digest = hashlib.sha256(manifest_text.encode())
        for rank, template in enumerate(texts):
            body = template.replace("TEMPLATE-RUN-ID", run_id)
            ranks.append(
                RankFile(
                    f"{run_id}/ranks/{result_format.file_name(rank)}", rank, json.loads(body), body
                )
            )
            digest.update(body.encode())
        envs = {node.name: env for node in manifest.nodes}
        env_text = json.dumps(env, indent=2)
        env_texts = {node.name: env_text for node in manifest.nodes}
        return RunFolder(
            run_id, manifest, manifest_text, tuple(ranks), envs, digest.hexdigest(), env_texts
        )


def ingest(
    store: Store, templates: Templates, runs: int, batch: int, now: datetime
) -> tuple[float, float, int]:
    """Seconds (wall, and this process's CPU) spent in write_folders, and rank rows written."""
    spent, cpu, rows = 0.0, 0.0, 0
    for start in range(0, runs, batch):
        folders = [templates.folder(i, now) for i in range(start, min(runs, start + batch))]
        began, began_cpu = time.perf_counter(), time.process_time()
        store.write_folders(folders)
        spent += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
        rows += sum(len(f.ranks) for f in folders)
    return spent, cpu, rows


def ingest_from_files(
    store: Store, templates: Templates, runs: int, now: datetime, offset: int
) -> tuple[float, int]:
    """The whole `orchestrator ingest` path on folders written to disk: read, validate, write."""
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        dirs = []
        for i in range(offset, offset + runs):
            folder = templates.folder(i, now)
            root = Path(tmp) / folder.manifest.run_id
            (root / "ranks").mkdir(parents=True)
            write_manifest(root / "manifest.json", folder.manifest)
            for rank in folder.ranks:
                (root / "ranks" / result_format.file_name(rank.rank)).write_text(rank.text)
            for name, env in folder.envs.items():
                (root / "nodes" / name).mkdir(parents=True)
                (root / "nodes" / name / "env.json").write_text(json.dumps(env))
            dirs.append(root)
        began = time.perf_counter()
        store.ingest(dirs)
        return time.perf_counter() - began, runs * 16


def median_ms(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = call()  # warm-up (and the result to show)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def measure(name: str, url: str, args: argparse.Namespace) -> None:
    upgrade_store(url)
    store = open_store(url)
    backend = store.backend
    now = datetime.now(timezone.utc)
    templates = Templates()
    try:
        seconds, cpu, rows = ingest(store, templates, args.runs, args.batch, now)
        print(
            f"{name}: ingested {args.runs} runs x 16 ranks = {rows} rank rows in {seconds:.1f} s "
            f"-> {rows / seconds:,.0f} rank rows/s ({args.runs / seconds:,.0f} runs/s, "
            f"{args.batch} runs per transaction; this process used {cpu:.1f} CPU-s: "
            f"{rows / cpu:,.0f} rank rows per CPU-second)"
        )
        sample = max(1, args.file_runs)
        seconds, rows = ingest_from_files(store, templates, sample, now, offset=args.runs)
        print(
            f"{name}: from files (read + validate + write, {sample} runs in one call): "
            f"{rows / seconds:,.0f} rank rows/s"
        )
        # Statistics, as a lab's store has them: Postgres's autovacuum analyzes on its own
        # schedule (run it now); SQLite's come from PRAGMA optimize when a store that ran
        # queries closes (the first report after a big ingest plans without them).
        if backend == "postgresql":
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
        selection = Selection(vendor="metax", topology="2x8")
        recent = Selection(
            vendor="metax", topology="2x8", precision="fp32", since=now - timedelta(days=90)
        )
        with store.reading() as conn:
            seed_rows(conn, selection)
            environment(conn, selection)
        store.close()
        store = open_store(url)

        def report(chosen: Selection) -> int:
            with store.reading() as conn:
                rows = seed_rows(conn, chosen)
                env = environment(conn, chosen)
            render_report(env, rows, "markdown")
            return len(rows)

        def whole_seed_table() -> list[Any]:
            with store.engine.connect() as conn:
                return conn.execute(
                    text("SELECT * FROM seed_table WHERE status = 'succeeded'")
                ).all()

        def best_p_core() -> list[Any]:
            with store.engine.connect() as conn:
                return conn.execute(text(BEST_P_CORE[backend])).all()

        ms, shown = median_ms(lambda: report(recent), args.repeat)
        print(
            f"{name}: seed-table report, one configuration over 90 days (metax 2x8 fp32, {shown} runs, "
            f"environment block, markdown): {ms:.1f} ms"
        )
        ms, shown = median_ms(lambda: report(selection), args.repeat)
        print(
            f"{name}: seed-table report, metax 2x8 whole history ({shown} runs, environment block, "
            f"markdown): {ms:.1f} ms"
        )
        ms, rows_all = median_ms(whole_seed_table, args.repeat)
        print(f"{name}: seed_table view, whole history ({len(rows_all)} rows fetched): {ms:.1f} ms")
        ms, best = median_ms(best_p_core, args.repeat)
        print(
            f"{name}: best p_core per vendor and topology, last 90 days ({len(best)} groups): {ms:.1f} ms"
        )
    finally:
        store.close()


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    admin = make_url(admin_url)
    if admin.drivername in ("postgresql", "postgres"):
        admin = admin.set(drivername="postgresql+psycopg")
    name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def measure_copy(sqlite_url: str, back_url: str, pg_admin_url: str) -> None:
    """`orchestrator db copy` of the whole store: SQLite -> PostgreSQL, then back to SQLite."""
    from orchestrator.store.copy import copy_store

    with scratch_postgres(pg_admin_url) as pg_url:
        for name, source, target in (
            ("sqlite -> postgres", sqlite_url, pg_url),
            ("postgres -> sqlite", pg_url, back_url),
        ):
            started = time.perf_counter()
            report = copy_store(source, target)
            seconds = time.perf_counter() - started
            rows = sum(t.copied for t in report.tables)
            print(
                f"db copy {name}: {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)"
            )
        started = time.perf_counter()
        again = copy_store(sqlite_url, pg_url)
        print(
            f"db copy sqlite -> postgres again (nothing new): {sum(t.copied for t in again.tables)}"
            f" rows in {time.perf_counter() - started:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="runs per transaction")
    parser.add_argument("--file-runs", type=int, default=200, help="runs for the from-files sample")
    parser.add_argument("--repeat", type=int, default=9, help="query repetitions (median)")
    parser.add_argument(
        "--sqlite-dir", default=None, help="folder for the SQLite file (default: a temp dir)"
    )
    parser.add_argument("--pg-url", default=os.environ.get("ORCHESTRATOR_TEST_PG_URL"))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--copy",
        action="store_true",
        help="then time `db copy` of the SQLite store to PostgreSQL and back (skips the PG ingest)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.sqlite_dir) as tmp:
        measure("sqlite", f"sqlite:///{tmp}/results.db", args)
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"sqlite: file size {size / 2**20:,.0f} MiB")
        if args.copy and args.pg_url:
            measure_copy(f"sqlite:///{tmp}/results.db", f"sqlite:///{tmp}/back.db", args.pg_url)
    if args.no_postgres or args.copy:
        return
    if not args.pg_url:
        print("postgres: skipped (no --pg-url and no $ORCHESTRATOR_TEST_PG_URL)")
        return
    with scratch_postgres(args.pg_url) as url:
        measure("postgres", url, args)


if __name__ == "__main__":
    main()
