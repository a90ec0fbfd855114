"""Passwords hidden in every form a store URL or connection string takes (orchestrator/redact.py),
wherever the orchestrator records one: the command line, the queued request, messages; and run
folders that other users cannot read."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.config import parse_cluster, resolve_read_url
from orchestrator.redact import redact_argv, redact_text, without_password
from orchestrator.runs.request import without_secrets
from orchestrator.store.engine import redact_url
from tests.support.store_fixtures import CliResult


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:S3cret@db/results", "postgresql://u:***@db/results"),
        ("postgresql+psycopg://u:p@ss:w/rd@db:5432/r", "postgresql+psycopg://u:***@db:5432/r"),
        (
            "postgresql://u@db/r?sslmode=require&password=S3cret&x=1",
            "postgresql://u@db/r?sslmode=require&password=***&x=1",
        ),
        ("postgresql://u@db/r?PassWord=S3cret", "postgresql://u@db/r?PassWord=***"),
        ("postgresql://u@db/r?sslpassword=S3cret", "postgresql://u@db/r?sslpassword=***"),
        ("host=db user=u password=S3cret dbname=r", "host=db user=u password=*** dbname=r"),
        ("host=db password = 'S3 cr\\'et' user=u", "host=db password = *** user=u"),
        ("PGPASSWORD=S3cret orchestrator worker", "PGPASSWORD=*** orchestrator worker"),
        (
            "cannot connect to postgresql://u:S3cret@db/r: timeout",
            "cannot connect to postgresql://u:***@db/r: timeout",
        ),
        ("sqlite:///tmp/results.db", "sqlite:///tmp/results.db"),
        ("postgresql://u@db/r", "postgresql://u@db/r"),
        ("--set lr=0.1 --set bs=16", "--set lr=0.1 --set bs=16"),
    ],
)
def test_redact_text_hides_every_form(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_redact_argv_hides_a_password_with_spaces_and_keeps_the_rest() -> None:
    argv = ["--db", "postgresql://u:a b@c@db/r", "submit", "1x1", "--db=host=db password=x"]
    assert redact_argv(argv) == [
        "--db",
        "postgresql://u:***@db/r",
        "submit",
        "1x1",
        "--db=host=db password=***",
    ]


def test_command_line_records_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli.context import command_line

    monkeypatch.setattr(
        sys, "argv", ["x", "--db", "postgresql://u:S3cret@db/r?password=Q2", "submit", "1x1"]
    )
    line = command_line()
    assert "S3cret" not in line and "Q2" not in line
    assert shlex.split(line) == [
        "orchestrator",
        "--db",
        "postgresql://u:***@db/r?password=***",
        "submit",
        "1x1",
    ]


def test_redact_url_hides_userinfo_and_query_passwords() -> None:
    assert redact_url("postgresql://u:S3cret@db/r?password=Q2") == (
        "postgresql://u:***@db/r?password=***"
    )
    assert redact_url("not a url ://u:S3cret@db") == "not a url ://u:***@db"


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("postgresql://u:S3cret@db:5432/r", "postgresql://u@db:5432/r"),
        (
            "postgresql://u@db/r?sslmode=require&password=S3cret",
            "postgresql://u@db/r?sslmode=require",
        ),
        ("host=db password=S3cret user=u", "host=db user=u"),
        ("sqlite:////tmp/r.db", "sqlite:////tmp/r.db"),
    ],
)
def test_without_password_drops_it_entirely(url: str, stored: str) -> None:
    assert without_password(url) == stored


def test_the_queued_cluster_data_keeps_no_store_password() -> None:
    data = {
        "cluster": {"name": "lab"},
        "store": {"url": "postgresql://w:S3cret@db/r", "read_url": "postgresql://r@db/r?pwd=Q2"},
        "nodes": [{"name": "n1", "address": "10.0.0.1"}],
    }
    cleaned = without_secrets(data)
    assert cleaned == {
        **data,
        "store": {"url": "postgresql://w@db/r", "read_url": "postgresql://r@db/r"},
    }
    assert data["store"]["url"] == "postgresql://w:S3cret@db/r"  # the caller's copy unchanged
    assert without_secrets(None) is None


def test_read_url_precedence(tmp_path: Path) -> None:
    cluster = parse_cluster(
        {
            "store": {"url": "postgresql://w@db/r", "read_url": "postgresql://reader@db/r"},
            "nodes": [{"name": "n1", "address": "10.0.0.1"}],
        },
        str(tmp_path / "c.toml"),
    )
    assert resolve_read_url(None, None, cluster) == "postgresql://reader@db/r"
    assert resolve_read_url(None, "sqlite:///x.db", cluster) == "sqlite:///x.db"
    assert resolve_read_url("postgresql://ro@h/r", "sqlite:///x.db", cluster) == (
        "postgresql://ro@h/r"
    )
    plain = parse_cluster(
        {"store": {"url": "postgresql://w@db/r"}, "nodes": [{"name": "n1", "address": "a"}]},
        str(tmp_path / "c.toml"),
    )
    assert resolve_read_url(None, None, plain) == "postgresql://w@db/r"


def test_run_folders_and_manifests_are_not_world_readable(tmp_path: Path) -> None:
    import os
    import stat

    from orchestrator.runfolder.folder import load_manifest, make_run_dir, write_manifest
    from tests.support.store_fixtures import FIXTURE_RUNS, RUN_1X1

    old = os.umask(0o002)  # a permissive umask: the modes must not depend on it
    try:
        folder = tmp_path / "runs" / "r1"
        make_run_dir(folder)
        write_manifest(
            folder / "manifest.json", load_manifest(FIXTURE_RUNS / RUN_1X1 / "manifest.json")
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((folder / "manifest.json").stat().st_mode) == 0o640
    with pytest.raises(FileExistsError):
        make_run_dir(folder)
    folder.chmod(0o755)
    make_run_dir(folder, exist_ok=True)  # an existing folder (adoption) is left as it is
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("host=db user=u password=S3cret", "host=db user=u password=***"),
        ("postgresql://u:S3cret@db:port/r", "postgresql://u:***@db:port/r"),
        ("mysql://u:S3cret@db/r?password=S3cret", "mysql://u:***@db/r?password=***"),
    ],
)
def test_a_refused_store_url_is_named_without_its_password(
    run_cli: Callable[..., CliResult], url: str, shown: str
) -> None:
    for args in (("runs", "list"), ("query", "SELECT 1")):
        result = run_cli("--db", url, *args)
        assert result.exit_code != 0 and "Traceback" not in result.err
        assert "S3cret" not in result.out + result.err
        assert shown in result.err, result.err
