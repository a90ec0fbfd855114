"""A store for the results pages: the recorded runs of tests/fixtures/runs plus run folders made
with tests/fixtures/make_runs.py's builders (several vendors, topologies and precisions, repeats
over days with one regression, monitor samples, a campaign, hostile strings), all published
with `orchestrator ingest`; then a running and a queued run as `submit` and the queue write them.

`build_web_store(url, workdir)` is shared by the route tests (SQLite and PostgreSQL), the
browser tests and scripts/web_screenshots.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE_RUNS = REPO / "tests" / "fixtures" / "runs"
CAMPAIGN_ID = "c-0001-lab-sweep"
XSS = "<script>alert('xss')</script>"
XSS_RUN = "20260120-090000-1x8-metax-xss"
MONITORED_RUN = "20260118-101500-2x8-metax"
RUNNING_RUN = "20260201-080000-2x8-metax-running"
QUEUED_RUN = "20260201-081500-1x8-nvidia-queued"
REGRESSED_RUN = "20260126-101500-2x8-metax"
T0 = datetime(2026, 1, 16, 10, 15, tzinfo=timezone.utc)


def _folder(
    root: Path,
    run_id: str,
    vendor: str,
    label: str,
    topology: tuple[int, int],
    precision: str,
    start: datetime,
    p_core_per_rank: float,
    *,
    status: str = "succeeded",
    failure: dict[str, Any] | None = None,
    given: dict[str, str] | None = None,
    monitor_every_s: float | None = None,
    campaign_id: str | None = None,
) -> Path:
    from orchestrator.runfolder.folder import write_manifest
    from tests.fixtures.make_runs import (
        METAX_ENV,
        NVIDIA_ENV,
        NVIDIA_SOFTWARE,
        _manifest,
        build_run_docs,
        resolved_hparams,
    )
    from workload.faster_rcnn import result_format

    nnodes, nproc = topology
    given = given or {"epochs": "2"}
    manifest = _manifest(
        run_id,
        vendor,
        label,
        topology,
        status,
        start,
        20,
        given,
        precision,
        campaign_id=campaign_id,
    )
    if failure is not None:
        manifest = replace(manifest, failure=failure)
    hp = resolved_hparams({"batch_size": 16, "lr": 0.08, "epochs": 2}, precision)
    nvidia = vendor == "nvidia"
    docs = build_run_docs(
        run_id,
        nnodes,
        nproc,
        hparams=hp,
        p_core_per_rank=p_core_per_rank,
        device_name="NVIDIA A100-SXM4-40GB" if nvidia else "MetaX C500",
        software=NVIDIA_SOFTWARE if nvidia else None,
        host=f"{vendor[:2]}-node",
        start=start.timestamp(),
        failed_after_iterations=100 if status == "failed" else None,
        ranks=[0, 1] if status == "failed" else None,
    )
    folder = root / run_id
    (folder / "ranks").mkdir(parents=True)
    write_manifest(folder / "manifest.json", manifest)
    for doc in docs:
        result_format.dump(
            doc, str(folder / "ranks" / result_format.file_name(doc["identity"]["rank"]))
        )
    for node in manifest.nodes:
        (folder / "nodes" / node.name).mkdir(parents=True)
        env = NVIDIA_ENV if nvidia else METAX_ENV
        (folder / "nodes" / node.name / "env.json").write_text(json.dumps(env))
        if monitor_every_s:
            (folder / "nodes" / node.name / "monitor.jsonl").write_text(
                _monitor_lines(start, nproc, monitor_every_s, node.node_rank)
            )
    return folder


def _monitor_lines(start: datetime, devices: int, every_s: float, node_rank: int) -> str:
    """20 minutes of samples: host CPU and memory, and each device's memory, power,
    temperature and utilisation, as the node sampler writes them."""
    lines = []
    steps = int(20 * 60 / every_s)
    for i in range(steps):
        ts = start.timestamp() + i * every_s
        busy = 0.0 if i < steps * 0.1 else 1.0  # initialisation, then training
        lines.append(
            {"ts": ts, "metric": "host_cpu_util_percent", "value": 20 + 50 * busy, "device": None}
        )
        lines.append(
            {
                "ts": ts,
                "metric": "host_mem_used_bytes",
                "value": (80 + 40 * busy) * 2**30,
                "device": None,
            }
        )
        for d in range(devices):
            wave = (i + d + node_rank) % 7
            lines += [
                {
                    "ts": ts,
                    "metric": "device_mem_used_bytes",
                    "value": (2 + 35 * busy) * 2**30,
                    "device": d,
                },
                {
                    "ts": ts,
                    "metric": "device_power_w",
                    "value": 90 + 250 * busy + wave,
                    "device": d,
                },
                {
                    "ts": ts,
                    "metric": "device_temp_c",
                    "value": 35 + 30 * busy + wave / 2,
                    "device": d,
                },
                {
                    "ts": ts,
                    "metric": "device_util_percent",
                    "value": 95 * busy + wave / 2,
                    "device": d,
                },
            ]
    return "".join(json.dumps(line) + "\n" for line in lines)


def make_run_folders(root: Path) -> list[Path]:
    """The generated runs (the recorded ones are tests/fixtures/runs)."""
    root.mkdir(parents=True, exist_ok=True)
    made = []
    day = timedelta(days=1)
    # MetaX C500 fp32 at 1x8 and 2x8, repeated over days; 2x8's sixth repeat regressed.
    for i, p_core in enumerate((33.0, 33.4, 32.8, 33.1, 33.3, 26.0)):
        start = T0 + i * 2 * day
        made.append(
            _folder(
                root,
                f"{start:%Y%m%d-%H%M%S}-2x8-metax",
                "metax",
                "MXC500",
                (2, 8),
                "fp32",
                start,
                p_core,
                monitor_every_s=30.0 if i == 1 else None,
            )
        )
        made.append(
            _folder(
                root,
                f"{start:%Y%m%d-%H%M%S}-1x8-metax-b",
                "metax",
                "MXC500",
                (1, 8),
                "fp32",
                start + timedelta(hours=2),
                35.0 + i * 0.1,
            )
        )
    # NVIDIA A100 amp at 1x1, 1x8 and 2x8 (a campaign): the scaling page's second vendor.
    for j, (topology, p_core) in enumerate((((1, 1), 48.0), ((1, 8), 46.5), ((2, 8), 44.0))):
        for k in range(2):
            start = T0 + (j * 2 + k) * day + timedelta(hours=5)
            name = f"{start:%Y%m%d-%H%M%S}-{topology[0]}x{topology[1]}-nvidia"
            made.append(
                _folder(
                    root,
                    name,
                    "nvidia",
                    "A100",
                    topology,
                    "amp",
                    start,
                    p_core + k * 0.3,
                    campaign_id=CAMPAIGN_ID,
                )
            )
    # A failed run whose reason and --set value hold markup: the pages must show it as text.
    failure = {
        "node": "me-node1",
        "rank": 1,
        "exit_code": 1,
        "reason": f"rank 1 exited: {XSS}",
        "log_tail": f"Traceback ...\nRuntimeError: {XSS}",
    }
    made.append(
        _folder(
            root,
            XSS_RUN,
            "metax",
            "MXC500",
            (1, 8),
            "fp32",
            T0 + 4 * day,
            35.0,
            status="failed",
            failure=failure,
            given={"epochs": "2", "batch_size": XSS},
        )
    )
    return made


def build_web_store(url: str, workdir: Path) -> None:
    """Create the store at `url` and fill it; `orchestrator` runs as a subprocess, as a lab's."""
    from orchestrator.store import open_store, upgrade_store
    from orchestrator.store.campaigns import insert_campaign
    from orchestrator.store.models import NodeLease
    from tests.fixtures.make_runs import _manifest

    upgrade_store(url)
    with open_store(url) as store, store.transaction() as conn:
        insert_campaign(
            conn,
            CAMPAIGN_ID,
            "A100 scaling sweep",
            {"name": "A100 scaling sweep", "topologies": ["1x1", "1x8", "2x8"]},
            "alice",
        )
    folders = sorted(FIXTURE_RUNS.iterdir()) + make_run_folders(workdir / "runs")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--db", url, "ingest", *map(str, folders)],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    now = datetime.now(timezone.utc)
    with open_store(url) as store:
        running = _manifest(
            RUNNING_RUN,
            "metax",
            "MXC500",
            (2, 8),
            "running",
            now - timedelta(minutes=5),
            0,
            {"epochs": "2"},
        )
        store.create_run(replace(running, finished_at=None), status="running")
        queued = _manifest(
            QUEUED_RUN,
            "nvidia",
            "A100",
            (1, 8),
            "queued",
            now,
            0,
            {},
            "amp",
            campaign_id=CAMPAIGN_ID,
        )
        store.create_run(replace(queued, finished_at=None, started_at=None), status="queued")
        with store.transaction() as conn:
            conn.execute(
                NodeLease.__table__.insert(),
                [
                    {
                        "cluster": "metax-lab",
                        "node_name": n,
                        "run_id": RUNNING_RUN,
                        "holder": "worker-a:4242",
                        "acquired_at": now,
                        "expires_at": now + timedelta(minutes=1),
                    }
                    for n in ("me-node1", "me-node2")
                ],
            )


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path


@contextmanager
def serving(
    store_url: str,
    workdir: Path,
    *options: str,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """`orchestrator serve` (uvicorn) on `host`, a free port, as a lab runs it, once its port
    answers. Its output goes to workdir/serve.log."""
    import os
    import socket
    import time

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    log = workdir / "serve.log"
    command = [sys.executable, "-m", "orchestrator", "--db", store_url, "serve"]
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*command, "--host", host, "--port", str(port), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield Served(process, host, port, log)
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- fixtures ------------------------------------------------------------------------------------


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards), for fixtures wider than one test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tests.support.store_fixtures import _admin_url

    admin = make_url(_admin_url())
    if admin.drivername in ("postgresql", "postgres"):
        admin = admin.set(drivername="postgresql+psycopg")
    name = f"orch_web_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def web_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The results pages' store, once per module and backend (on PostgreSQL: the URL of a
    SELECT-only role, as `serve` wants)."""
    workdir = tmp_path_factory.mktemp(f"web-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'results.db'}"
        build_web_store(url, workdir)
        yield url
        return
    from tests.support.store_fixtures import pg_reader

    with scratch_postgres() as url:
        build_web_store(url, workdir)
        with pg_reader(url) as reader:  # the pages connect as docs/security.md says
            yield reader


@pytest.fixture(scope="module")
def sqlite_web_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    workdir = tmp_path_factory.mktemp("web-sqlite")
    url = f"sqlite:///{workdir / 'results.db'}"
    build_web_store(url, workdir)
    return url
