"""`orchestrator ingest` never loses or silently replaces a lab's data, on SQLite and PostgreSQL:
a stored run with other content is refused (naming what differs) unless --replace, which the
run's history records; many folders are ingested one by one; campaign runs bring their campaign;
impossible timings are refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.store import open_store, upgrade_store
from orchestrator.store.models import Campaign, Run, RunStatusChange
from tests.support.store_fixtures import RUN_1X1, RUN_1X8, RUN_2X8

RANK0 = "ranks/rank-00000.json"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade_store(url)
    return url


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def _select(url: str, query: Any) -> list[Any]:
    store = open_store(url)
    try:
        with store.reading() as conn:
            return list(conn.execute(query))
    finally:
        store.close()


def _slow_core(doc: dict[str, Any]) -> None:
    for name in ("core_s", "train_no_eval_s", "train_s", "e2e_s"):  # every rate 20 times lower
        doc["timings"][name] = doc["timings"][name] * 20


def test_a_stored_run_with_other_content_is_refused_naming_what_differs(
    run_cli, store_url, run_copy
):
    folder = run_copy(RUN_1X1)
    assert run_cli("--db", store_url, "ingest", folder).exit_code == 0
    (p_core_before,) = _select(store_url, select(Run.p_core))[0]
    _edit(folder / RANK0, _slow_core)
    result = run_cli("--db", store_url, "ingest", folder)
    assert result.exit_code == 2
    assert result.out == ""
    line = result.err.strip()
    assert line.startswith(f"error: run {RUN_1X1} is already stored with other content ({folder}:")
    assert f"p_core {p_core_before:.4g} -> {p_core_before / 20:.4g}" in line
    assert "ingest --replace replaces it" in line
    assert _select(store_url, select(Run.p_core))[0][0] == p_core_before


def test_replace_replaces_and_the_history_says_so(run_cli, store_url, run_copy):
    folder = run_copy(RUN_1X1)
    run_cli("--db", store_url, "ingest", folder)
    (p_core_before,) = _select(store_url, select(Run.p_core))[0]
    _edit(folder / RANK0, _slow_core)
    result = run_cli("--db", store_url, "ingest", "--replace", folder)
    assert result.exit_code == 0, result.err
    assert f"{RUN_1X1}: succeeded, 1 rank file(s), p_core " in result.out
    assert _select(store_url, select(Run.p_core))[0][0] == pytest.approx(p_core_before / 20)
    reasons = [
        r
        for (r,) in _select(
            store_url,
            select(RunStatusChange.reason)
            .where(RunStatusChange.run_id == RUN_1X1)
            .order_by(RunStatusChange.id),
        )
    ]
    assert reasons[-1].startswith("replaced by ingest --replace (digest ")
    assert f"p_core {p_core_before:.4g} -> {p_core_before / 20:.4g}" in reasons[-1]


def test_many_folders_store_every_good_one_and_name_each_bad_one(run_cli, store_url, run_copy):
    good = [run_copy(RUN_1X1), run_copy(RUN_2X8)]
    bad = run_copy(RUN_1X8)
    _edit(bad / "ranks/rank-00003.json", lambda d: d["timings"].update(core_s=9999.0))
    result = run_cli("--db", store_url, "ingest", good[0], bad, good[1])
    assert result.exit_code == 2
    assert [line.split(":")[0] for line in result.out.splitlines()] == [RUN_1X1, RUN_2X8]
    errors = result.err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {bad / 'ranks/rank-00003.json'}: field timings.core_s: ")
    assert "9999 s is longer than timings.train_no_eval_s" in errors[0]
    assert errors[1] == "2 folder(s) ingested, 1 failed"
    assert sorted(r for (r,) in _select(store_url, select(Run.run_id))) == [RUN_1X1, RUN_2X8]


def test_a_campaign_run_brings_its_campaign(run_cli, store_url, run_copy):
    folder = run_copy(RUN_2X8)
    _edit(folder / "manifest.json", lambda d: d.update(campaign_id="20260101-000000-c0ffee"))
    result = run_cli("--db", store_url, "ingest", folder)
    assert result.exit_code == 0, result.err
    rows = _select(store_url, select(Campaign.campaign_id, Campaign.name, Campaign.status))
    assert [tuple(r) for r in rows] == [
        ("20260101-000000-c0ffee", "20260101-000000-c0ffee", "finished")
    ]
    assert _select(store_url, select(Run.campaign_id))[0][0] == "20260101-000000-c0ffee"
