"""One output convention: every listing command's JSON parses and has exactly the keys
docs/output.md documents; md is markdown; global options after the command; no store is ever
created by accident; a bad --set is refused before anything is written."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.store_fixtures import ALL_RUNS, RUN_2X8, RUN_2X8_FAILED

DOC = Path(__file__).resolve().parents[2] / "docs" / "output.md"


def documented_keys() -> dict[str, set[str]]:
    """`## `orchestrator X`` section -> the keys in the first column of its first table."""
    keys: dict[str, set[str]] = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading = re.match(r"`orchestrator (.+)`", section)
        table = re.search(r"((?:^\|.*\n)+)", section, flags=re.M)
        if heading and table:
            found = re.findall(r"^\| `([a-z_]+)` \|", table.group(1), flags=re.M)
            if found:
                keys[heading.group(1)] = set(found)
    return keys


@pytest.fixture
def history(sqlite_store: Any, sqlite_url: str, fixture_runs: Path) -> str:
    sqlite_store.ingest([fixture_runs / name for name in ALL_RUNS])
    return sqlite_url


def _json(run_cli: Any, *args: str, code: int = 0) -> Any:
    result = run_cli(*args, "--format", "json")
    assert result.exit_code == code, result.err
    return json.loads(result.out)


def test_every_listing_command_has_the_documented_json_keys(run_cli: Any, history: str) -> None:
    keys = documented_keys()  # query's keys are the query's own columns
    # `health` needs nodes: tests/integration/test_health_netns.py checks its keys
    assert set(keys) == {
        "runs list",
        "runs show",
        "queue",
        "doctor",
        "cluster show",
        "report",
        "health",
    }
    runs = _json(run_cli, "--db", history, "runs", "list")
    assert [r["run_id"] for r in runs][:1] == [RUN_2X8_FAILED]  # newest first
    assert all(set(r) == keys["runs list"] for r in runs) and len(runs) == 4
    p_core = next(r["p_core"] for r in runs if r["run_id"] == RUN_2X8)
    assert isinstance(p_core, float) and len(repr(p_core)) > 8  # full precision, not rounded

    shown = _json(run_cli, "--db", history, "runs", "show", RUN_2X8)
    assert set(shown) == keys["runs show"]
    assert shown["run"]["run_id"] == RUN_2X8 and "manifest" not in shown["run"]
    assert [e["epoch"] for e in shown["epochs"]] == [0, 1]  # the store's 0-based index

    # a queued run for the queue (submit --detach on this machine's embedded default)
    queued = run_cli("--db", history, "submit", "1x1", "--detach", "--set", "epochs=1")
    assert queued.exit_code == 0, queued.err
    listing = _json(run_cli, "--db", history, "queue")
    assert [(q["run_id"], q["status"]) for q in listing] == [(queued.out.strip(), "queued")]
    assert all(set(q) == keys["queue"] for q in listing)

    doctor = run_cli("doctor", "--format", "json")
    found = json.loads(doctor.out)
    assert set(found) == keys["doctor"] and doctor.exit_code == (0 if found["ok"] else 3)
    assert {"node", "check", "ok", "detail"} == set(found["checks"][0])

    cluster = _json(run_cli, "cluster", "show")
    assert set(cluster) == keys["cluster show"]
    assert cluster["source"] == "<embedded default>"
    assert (
        Path(cluster["case"]["data_dir"]).is_absolute() and Path(cluster["runs_dir"]).is_absolute()
    )
    assert cluster["store"] == f"sqlite:///{Path.cwd() / 'orchestrator.db'}"

    report = _json(run_cli, "--db", history, "report")
    assert set(report) == keys["report"]
    assert set(_json(run_cli, "--db", history, "report", "--no-group")) == {
        "environment",
        "runs",
        "warnings",
        "convergence",
    }

    rows = _json(run_cli, "--db", history, "query", "SELECT run_id, p_core FROM runs LIMIT 2")
    assert [set(r) for r in rows] == [{"run_id", "p_core"}] * 2


def test_md_table_and_csv_are_accepted_everywhere(run_cli: Any, history: str) -> None:
    for args in (
        ("runs", "list"),
        ("runs", "show", RUN_2X8),
        ("queue",),
        ("report",),
        ("query", "SELECT run_id FROM runs"),
        ("cluster", "show"),
    ):
        for fmt in ("table", "md", "markdown", "csv"):
            result = run_cli("--db", history, *args, "--format", fmt)
            assert result.exit_code == 0, (args, fmt, result.err)
    md = run_cli("--db", history, "runs", "list", "--format", "md").out
    assert md.splitlines()[0].startswith("| run | status | config |")
    assert "| p_core (img/s) |" in md.splitlines()[0]
    table = run_cli("--db", history, "runs", "list").out
    assert "p_core (img/s)" in table
    listed = list(
        csv.DictReader(io.StringIO(run_cli("--db", history, "runs", "list", "--format", "csv").out))
    )
    assert {r["run_id"] for r in listed} == set(ALL_RUNS)
    long_form = run_cli("--db", history, "runs", "show", RUN_2X8, "--format", "csv").out
    assert long_form.splitlines()[0] == "section,row,field,value"
    bad = run_cli("--db", history, "runs", "list", "--format", "xml")
    assert bad.exit_code == 2 and "xml" in bad.err


def test_runs_show_reads_with_units_and_counts_epochs_from_1(run_cli: Any, history: str) -> None:
    out = run_cli("--db", history, "runs", "show", RUN_2X8, "--format", "md").out
    assert "| e2e_time (s) | 829.6 |" in out
    assert "| p_whole (img/s) | 302 |" in out and "| p_core (img/s) | 519 |" in out
    assert "| mem_total | 64.0 GiB |" in out and "| mem (GiB) | 37.1/64.0 (allocator) |" in out
    assert "| mem_source | allocator |" in out
    epochs = out.split("#### epochs", 1)[1]
    assert "\n| 1 | 16 |" in epochs and "\n| 2 | 16 |" in epochs and "\n| 0 |" not in epochs


def test_global_options_are_accepted_after_the_command(run_cli: Any, history: str) -> None:
    after = run_cli("runs", "list", "--db", history, "--format", "json")
    assert after.exit_code == 0, after.err
    assert len(json.loads(after.out)) == 4
    eq = run_cli("query", f"--db={history}", "SELECT count(*) AS n FROM runs", "--format", "csv")
    assert eq.out.splitlines() == ["n", "4"]
    quiet = run_cli("runs", "list", "-q", "--db", history, "--format", "csv")
    assert quiet.exit_code == 0, quiet.err
    assert len(quiet.out.splitlines()) == 5  # header and 4 runs


def test_quiet_and_verbose_after_the_command_move_in_front_unless_the_command_owns_them() -> None:
    from orchestrator.cli import _declares, cli, move_global_options

    def owns(words: list[str], flag: str) -> bool:
        return _declares(cli, words, flag)

    assert move_global_options(["runs", "list", "-q", "--db", "x"], owns) == [
        "-q",
        "--db",
        "x",
        "runs",
        "list",
    ]
    assert move_global_options(["submit", "1x1", "-vv", "--", "-q"], owns) == [
        "-vv",
        "submit",
        "1x1",
        "--",
        "-q",
    ]
    assert move_global_options(["image", "build", "-v", "--quiet"], owns) == [
        "--quiet",
        "image",
        "build",
        "-v",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("report",),
        ("runs", "list"),
        ("runs", "show", "x"),
        ("query", "SELECT 1"),
        ("queue",),
        ("attach", "x"),
        ("cancel", "x"),
        ("db", "current"),
        ("db", "downgrade", "base"),
        ("worker", "--once"),
    ],
)
def test_a_missing_sqlite_file_is_an_error_and_is_not_created(
    run_cli: Any, tmp_path: Path, args: tuple[str, ...]
) -> None:
    missing = tmp_path / "never.db"
    result = run_cli("--db", f"sqlite:///{missing}", *args)
    assert result.exit_code == 2, result.err
    assert result.err == (
        f"error: results store file {missing} does not exist (check the path, or create the "
        f"store with: orchestrator --db sqlite:///{missing} db upgrade)\n"
    )
    assert not missing.exists() and list(tmp_path.glob("never.db*")) == []


@pytest.mark.parametrize("args", [("report",), ("db", "upgrade"), ("runs", "list")])
def test_a_string_that_is_not_a_url_is_refused_as_such(run_cli: Any, args: tuple[str, ...]) -> None:
    result = run_cli("--db", "not a url", *args)
    assert result.exit_code == 2
    assert result.err.startswith("error: results store URL 'not a url' is not a database URL")
    assert not Path("not a url").exists() and list(Path.cwd().iterdir()) == []
    plain = run_cli("--db", "results.db", "db", "upgrade")  # a SQLite file's path still works
    assert plain.exit_code == 0 and Path("results.db").is_file()


def test_a_bad_set_is_refused_before_anything_is_written(run_cli: Any, tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    for item, message in (
        ("epochs=0", "error: epochs=0 is below the minimum 1 (set a value >= 1)"),
        ("lr=-1", "error: lr=-1.0 must be positive (use e.g. lr=0.02)"),
        ("bs=0", "error: batch_size=0 is below the minimum 1 (set a value >= 1)"),
        ("epoch=2", "error: --set epoch: unknown hyper-parameter (did you mean epochs? known"),
    ):
        result = run_cli("--db", f"sqlite:///{db}", "submit", "1x1", "--set", item)
        assert result.exit_code == 2 and result.err.startswith(message), result.err
        assert result.err.count("\n") == 1
        assert not db.exists() and not Path("runs").exists()


def test_the_exit_code_table_matches_the_codes_submit_uses() -> None:
    from orchestrator.runs import stopping

    section = DOC.read_text().split("## Exit codes", 1)[1]
    codes = {
        row.split("|")[1].strip(): int(row.split("|")[2])
        for row in section.splitlines()
        if row.startswith("| ") and row.split("|")[2].strip().isdigit()
    }
    assert codes["succeeded"] == 0
    assert codes["failed, timed out, no progress, collection failed"] == stopping.EXIT_FAILED
    cancel = "cancelled by `orchestrator cancel` (from any shell), or scancel on Slurm"
    assert codes[cancel] == stopping.EXIT_CANCEL_REQUESTED == 4
    assert codes["cancelled: this `submit` got SIGINT (Ctrl-C)"] == stopping.EXIT_SIGINT == 130
    assert codes["cancelled: this `submit` got SIGTERM"] == stopping.EXIT_SIGTERM == 143


@pytest.mark.parametrize("installed", [True, False])
def test_export_suggests_a_checker_command_this_interpreter_can_run(
    run_cli: Any, history: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (real(name, *a) if installed else None) if name == "mlperf_logging" else real(name, *a)
        ),
    )
    out = tmp_path / "run.mllog"
    done = run_cli("--db", history, "export", RUN_2X8, "--mllog", str(out))
    assert done.exit_code == 0, done.err
    hint = done.err.splitlines()[-1]
    command = f"{sys.executable} -m mlperf_logging.compliance_checker --usage training"
    if installed:
        assert hint.startswith(f"check it with: {command}")
    else:  # the default install lacks the package: say how to get it, with this interpreter
        assert hint.startswith(
            f"to check it, install MLPerf's checker ({sys.executable} -m pip install "
            f"'mlperf-logging>=4.1'), then run: {command}"
        )
    assert hint.endswith(str(out))
