"""The configuration summaries and downsampled monitor series always equal a recomputation from
the raw rows (store/summaries.py's `recompute`, plain Python over `SELECT * FROM runs`), after
every kind of write: ingest, re-publish (--replace), status changes, delete, db copy both ways,
a migration over a store with history, and `db rebuild-summaries`; on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from orchestrator.regressions import flag_history
from orchestrator.reports.convergence_reads import convergence_checks
from orchestrator.store import derived, downgrade_store, open_store, upgrade_store, verdicts
from orchestrator.store.delete import delete_runs
from orchestrator.store.environments import parts_of_runs
from orchestrator.store.ingest import WritePolicy
from orchestrator.store.models import MonitorSample, Run, RunNode
from orchestrator.store.monitor_series import downsample
from orchestrator.store.monitor_series import stored as stored_series
from orchestrator.store.queries import SEED_TABLE, run_warnings
from orchestrator.store.summaries import recompute, refresh, scopes_of, stored
from tests.support.web_fixtures import FIXTURE_RUNS, MONITORED_RUN, T0, _folder, make_run_folders

SCOPE = ("vendor", "topology", "precision", "config_label", "fix_hp")
REPLACE = WritePolicy(replace_published=True, adopt_campaigns=True)
ADOPT = WritePolicy(replace_published=False, adopt_campaigns=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    yield request.getfixturevalue("pg_url")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, int) and isinstance(b, float) or isinstance(a, float) and isinstance(b, int):
        return math.isclose(a, b, rel_tol=1e-9)
    return bool(a == b)


def assert_summaries_match(url: str) -> list[dict[str, Any]]:
    """The stored summaries and monitor series are what the raw rows give; returns the
    summaries (so a test can check values too)."""
    with open_store(url) as store, store.engine.connect() as conn:
        runs = [dict(r) for r in conn.execute(select(Run.__table__)).mappings()]
        have = stored(conn)
        samples: dict[str, list[Any]] = {}
        for row in conn.execute(select(MonitorSample.__table__)).mappings():
            samples.setdefault(row["run_id"], []).append(row)
        series = {run_id: stored_series(conn, run_id) for run_id in samples}
    want = recompute(runs)
    assert [_key(r) for r in have] == [_key(r) for r in want]
    for got, expected in zip(have, want):
        different = [k for k in expected if not _same(got[k], expected[k])]
        assert not different, (_key(got), {k: (got[k], expected[k]) for k in different})
    for run_id, rows in samples.items():
        assert _same(series[run_id], downsample(run_id, rows)), run_id
    assert_environments_match(url, have)
    assert_verdicts_match(url)
    return have


def assert_environments_match(url: str, have: list[dict[str, Any]]) -> None:
    """Each summary row's environment parts are those read over its succeeded runs."""
    with open_store(url) as store, store.engine.connect() as conn:
        for row in have:
            ids = conn.scalars(
                select(Run.run_id).where(
                    *(Run.__table__.c[k] == row[k] for k in SCOPE),
                    func.coalesce(Run.hardware_label, Run.vendor) == row["hardware"],
                    Run.status == "succeeded",
                )
            )
            assert row["environment"] == parts_of_runs(conn, list(ids)).document(), _key(row)


def recomputed_verdicts(url: str) -> dict[str, tuple[list[Any], Any, list[str]]]:
    """Every succeeded run's regression flags, flagged convergence check and warnings as the
    reports compute them from the raw rows (each configuration's whole history), for the runs
    with one of them: {run_id: (flags, check, warnings)}."""
    with open_store(url) as store, store.engine.connect() as conn:
        rows = list(conn.execute(select(SEED_TABLE)).mappings())
        checks = convergence_checks(conn, rows)
        succeeded = [r["run_id"] for r in rows if r["status"] == "succeeded"]
        warned = run_warnings(conn, succeeded)
    flags = flag_history(rows)
    ids = set(flags) | {i for i, c in checks.items() if c.flagged} | set(warned)
    found = {}
    for run_id in ids:
        check = checks.get(run_id)
        found[run_id] = (
            flags.get(run_id, []),
            check if check and check.flagged else None,
            warned.get(run_id, []),
        )
    return found


def assert_verdicts_match(url: str) -> dict[str, tuple[list[Any], Any, list[str]]]:
    """run_verdicts holds exactly the recomputed verdicts, with the current rule recorded."""
    with open_store(url) as store, store.engine.connect() as conn:
        kept = {v.run_id: v for v in verdicts.stored(conn)}
        assert derived.current(conn)
    want = recomputed_verdicts(url)
    assert sorted(kept) == sorted(want)
    for run_id, (flags, check, warnings) in want.items():
        got = kept[run_id]
        assert got.regressions == flags, run_id
        assert (got.convergence.as_dict() if got.convergence else None) == (
            check.as_dict() if check else None
        ), run_id
        assert got.warnings == warnings, run_id
    return want


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in ("vendor", "hardware", "config_label", "topology"))


def _p_core(summaries: list[dict[str, Any]], config: str) -> tuple[int, float]:
    row = next(r for r in summaries if r["config_label"] == config)
    return row["p_core_n"], row["p_core_sum"] / row["p_core_n"]


@pytest.fixture
def folders(tmp_path: Path) -> list[Path]:
    return sorted(FIXTURE_RUNS.iterdir()) + make_run_folders(tmp_path / "runs")


def test_summaries_follow_every_write(url: str, folders: list[Path], tmp_path: Path) -> None:
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(folders[:10], ADOPT)
        assert_summaries_match(url)
        store.ingest(folders[10:], ADOPT)
    summaries = assert_summaries_match(url)
    n, mean = _p_core(summaries, "MXC500 2x8")
    assert n >= 7  # the recorded 2x8 runs and six made ones

    # A re-publish with another p_core moves the mean by exactly the difference / n.
    old = next(f for f in folders if f.name == MONITORED_RUN)
    day = timedelta(days=1)
    again = _folder(
        tmp_path / "again", MONITORED_RUN, "metax", "MXC500", (2, 8), "fp32", T0 + 2 * day, 40.0
    )
    with open_store(url) as store, store.engine.connect() as conn:
        before = conn.scalar(select(Run.p_core).where(Run.run_id == old.name))
    with open_store(url) as store:
        store.ingest([again], REPLACE)
        with store.engine.connect() as conn:
            after = conn.scalar(select(Run.p_core).where(Run.run_id == old.name))
    summaries = assert_summaries_match(url)
    assert before != after
    assert _p_core(summaries, "MXC500 2x8") == (n, pytest.approx(mean + (after - before) / n))

    # Status changes out of and back into `succeeded`.
    with open_store(url) as store:
        store.set_status(old.name, "failed", reason="marked failed by hand")
        assert _p_core(assert_summaries_match(url), "MXC500 2x8")[0] == n - 1
        store.set_status(old.name, "succeeded", reason="it was fine")
        assert _p_core(assert_summaries_match(url), "MXC500 2x8")[0] == n

    # Deletes, in the delete's transaction; a configuration whose runs are all gone has no row.
    with open_store(url) as store, store.transaction() as conn:
        gone = list(conn.scalars(select(Run.run_id).where(Run.config_label == "A100 1x1")))
        delete_runs(conn, gone + [old.name])
    summaries = assert_summaries_match(url)
    assert "A100 1x1" not in {r["config_label"] for r in summaries}
    assert _p_core(summaries, "MXC500 2x8")[0] == n - 1


def test_two_writers_refreshing_one_configuration_wait_for_each_other(
    url: str, folders: list[Path]
) -> None:
    """Two workers publishing runs of one configuration at once: the second refresh waits for
    the first's commit (on PostgreSQL a lock per configuration, on SQLite the write lock), then
    recomputes the row; without that wait it failed on the primary key of config_summaries."""
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(folders, ADOPT)
        with store.engine.connect() as conn:
            scopes = scopes_of(conn, [MONITORED_RUN])
        first = store.engine.connect()
        held = first.begin()
        refresh(first, scopes)
        errors: list[BaseException] = []

        def second() -> None:
            try:
                with store.engine.begin() as conn:
                    refresh(conn, scopes)
            except BaseException as error:  # the assertion below reports it
                errors.append(error)

        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive(), "the second refresh did not wait for the first"
        held.commit()
        first.close()
        waiter.join(timeout=30)
        assert not waiter.is_alive() and errors == []
    assert_summaries_match(url)


def test_summaries_after_copy_both_ways_and_rebuild(
    folders: list[Path], tmp_path: Path, pg_url: str, run_cli: Callable[..., Any]
) -> None:
    from orchestrator.store.copy import copy_store

    sqlite = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade_store(sqlite)
    upgrade_store(pg_url)
    with open_store(sqlite) as store:
        store.ingest(folders[::2], ADOPT)
    with open_store(pg_url) as store:
        store.ingest(folders[1::2], ADOPT)  # the target has runs of its own
    copy_store(sqlite, pg_url)
    both = assert_summaries_match(pg_url)
    assert sum(r["runs"] for r in both) == len(folders)
    back = f"sqlite:///{tmp_path / 'b.db'}"
    copy_store(pg_url, back)
    assert_summaries_match(back)

    # Summaries spoiled by hand (SQL outside the store's writers) come back with the command.
    with open_store(back) as store, store.transaction() as conn:
        conn.execute(text("UPDATE config_summaries SET p_core_sum = 0, succeeded = 99"))
        conn.execute(text("DELETE FROM run_monitor_series"))
    with pytest.raises(AssertionError):
        assert_summaries_match(back)
    result = run_cli("--db", back, "db", "rebuild-summaries")
    assert result.exit_code == 0, result.err
    assert "the monitor series of 1 run(s) rebuilt" in result.out
    assert _same(assert_summaries_match(back), both)


def test_migrations_0009_and_0010_fill_the_summaries_and_verdicts_of_a_store_with_history(
    url: str, folders: list[Path]
) -> None:
    """0009 fills the summaries; the upgrade to the head then derives the rest (0010's
    columns, the verdicts) with this version's definitions (store/derived.py)."""
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(folders, ADOPT)
    expected = assert_summaries_match(url)
    flagged = assert_verdicts_match(url)
    assert flagged, "the fixture store has no flagged run: the verdicts are not exercised"
    downgrade_store(url, "0008")  # the runs keep their energy (0008), nothing derived is left
    assert upgrade_store(url).after is not None
    assert _same(assert_summaries_match(url), expected)
    assert assert_verdicts_match(url).keys() == flagged.keys()


def test_a_publish_that_only_adds_runs_updates_the_peak_and_environment_from_the_old_row(
    url: str, folders: list[Path]
) -> None:
    """`added_only` (a publish of new runs): the memory peak and the environment come from the
    stored row and the new runs alone; a new higher peak, a peak tied by another label (which
    needs every run: the earlier one wins) and a lower one each equal a recomputation."""
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(folders, ADOPT)
    with open_store(url) as store, store.engine.connect() as conn:
        template = dict(
            conn.execute(select(Run.__table__).where(Run.run_id == MONITORED_RUN)).mappings().one()
        )
        peak = max(float(r["mem_peak"].split("/")[0]) for r in stored(conn) if r["mem_peak"])
        nodes = [
            dict(n)
            for n in conn.execute(
                select(RunNode.__table__).where(RunNode.run_id == MONITORED_RUN)
            ).mappings()
        ]
    labels = [
        (f"{peak + 1:.1f}/64.0", "device"),  # a new peak
        (f"{peak + 1:.1f}/80.0", "allocator"),  # the same GiB used, another label: a tie
        ("1.0/64.0", "device"),  # below the peak
    ]
    for i, (label, source) in enumerate(labels):
        run = {
            **template,
            "run_id": f"added-{i}",
            "mem_label": label,
            "mem_source": source,
            "finished_at": template["finished_at"] + timedelta(days=30 + i),
            "manifest": None,
        }
        with open_store(url) as store, store.transaction() as conn:
            conn.execute(Run.__table__.insert(), [run])
            # the new run's nodes ran another driver: a new value in the environment block
            driver = {"driver": f"9.9.{i}", "run_id": run["run_id"]}
            conn.execute(RunNode.__table__.insert(), [{**n, **driver} for n in nodes])
            refresh(conn, scopes_of(conn, [run["run_id"]]), added_only=True)
        have = assert_summaries_match(url)
        row = next(r for r in have if r["config_label"] == template["config_label"])
        assert row["mem_peak"] == labels[0][0]  # the earlier of the two tied labels
        assert f"9.9.{i}" in row["environment"]["fields"]["driver"]
