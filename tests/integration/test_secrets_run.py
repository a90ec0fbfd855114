"""No database password is stored or shown: a real `submit 1x1` over sshd with the password in
`--db`, and a queued run (its cluster file's [store] url holding the password as ?password=)
executed by a worker; then every artifact is searched for the password: each file of the run
folders and node folders, every column of every table, `runs show`, `query`, the web run pages
and everything the commands printed."""

from __future__ import annotations

import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.cluster_fixtures import TINY_SETS, run_cli, start_cli, write_cluster_file
from tests.support.store_fixtures import _admin_url, pg_reader

pytestmark = [pytest.mark.sshd, pytest.mark.torch, pytest.mark.postgres]


@pytest.fixture
def writer_db() -> Iterator[tuple[str, str]]:
    """(URL with the password, the password): a role of its own that owns a fresh database."""
    admin = make_url(_admin_url()).set(drivername="postgresql+psycopg")
    suffix = uuid.uuid4().hex[:10]
    role, db, password = f"orch_w_{suffix}", f"orch_secret_{suffix}", f"Pw{uuid.uuid4().hex}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'CREATE DATABASE "{db}" OWNER {role}'))
    try:
        yield f"postgresql://{role}:{password}@127.0.0.1:{admin.port or 5432}/{db}", password
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        engine.dispose()


def _every_cell(url: str) -> str:
    """Every row of every table and view of the store, as text."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            names = conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            ).scalars()
            return "\n".join(
                str(row[0])
                for name in list(names)
                for row in conn.execute(text(f'SELECT row_to_json(t)::text FROM "{name}" AS t'))
            )
    finally:
        engine.dispose()


def _files(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.timeout(900)
def test_no_artifact_of_a_real_and_a_queued_run_holds_the_password(
    writer_db, sshd_nodes, tiny_coco, tmp_path
):
    url, password = writer_db
    role_free = url.replace(f":{password}@", "@")  # what a worker uses, with $PGPASSWORD
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
        store_url=f"{role_free}?password={password}",  # the query-parameter form
    )
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    printed = []
    for args in (
        ["--db", url, "db", "upgrade"],
        ["--cluster", str(cfg), "--db", url, "submit", "1x1", "--nodes", "node1", *sets],
        ["--cluster", str(cfg), "submit", "1x1", "--nodes", "node2", "--detach", *sets],
    ):
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed.append(proc.stdout + proc.stderr)
    worker = start_cli(
        ["--db", role_free, "worker", "--id", "w1", "--idle-exit", "3s"],
        tmp_path,
        env={"PGPASSWORD": password},
    )
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-3000:]
    printed.append(out + err)

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT run_id, status FROM runs ORDER BY run_id")).all()
    engine.dispose()
    run_ids = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [tuple(r) for r in runs] == [(r, "succeeded") for r in run_ids] and len(run_ids) == 2
    cells = _every_cell(url)
    # The recorded command and the request's store URL are there, without the password.
    user = make_url(url).username
    assert f"postgresql://{user}:***@127.0.0.1" in cells
    assert re.search(rf'"url": ?"{re.escape(role_free)}"', cells), cells[:3000]
    for run_id in run_ids:
        shown = run_cli(["--db", url, "runs", "show", run_id], tmp_path)
        assert shown.returncode == 0, shown.stderr
        printed.append(shown.stdout + shown.stderr)
    with pg_reader(url.replace("postgresql://", "postgresql+psycopg://", 1)) as reader:
        query = run_cli(
            ["--read-db", reader, "query", "SELECT command, request FROM runs"], tmp_path
        )
        assert query.returncode == 0 and ":***@" in query.stdout, query.stderr
        printed.append(query.stdout + query.stderr)
        pages = _web_pages(reader, run_ids)
    assert any(f"{user}:***@" in page for page in pages)  # a run page shows the command
    printed += pages

    leaks = [
        str(p)
        for p, data in _files(tmp_path / "runs", tmp_path / "nodes").items()
        if password.encode() in data
    ]
    assert leaks == []
    assert password not in cells
    assert [text_ for text_ in printed if password in text_] == []
    for run_id in run_ids:  # the run folders are not world-readable
        folder = tmp_path / "runs" / run_id
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750
        assert stat.S_IMODE((folder / "manifest.json").stat().st_mode) == 0o640


def _web_pages(reader_url: str, run_ids: list[str]) -> list[str]:
    from starlette.testclient import TestClient

    from orchestrator.web.app import create_app

    pages = []
    with TestClient(create_app(reader_url)) as client:
        for path in ["/runs", "/queue", *(f"/runs/{r}" for r in run_ids)]:
            response = client.get(path)
            assert response.status_code == 200, path
            pages.append(response.text)
    return pages
