"""The grouped seed table of whole configurations, read from what the store keeps at publish
(config_summaries, run_verdicts: reports/whole_report.py), says exactly what
reading every run says: `orchestrator report` (markdown and table, with and without --olympic)
and the /seed page with its markdown download, on SQLite and PostgreSQL, over a store with
regression flags, a convergence flag, warnings, energy, memory labels and a health gate. The
"runs" side is the same store with its derived_versions row removed, which makes every reader
fall back to the runs (store/derived.py)."""

from __future__ import annotations

import html
import re
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, text

from orchestrator.store import derived, health, open_store
from orchestrator.store.models import DerivedVersion
from orchestrator.store.whole_configs import whole_configurations
from tests.support.history_store import plant_history
from tests.support.store_fixtures import pg_reader
from tests.support.web_fixtures import REGRESSED_RUN, build_web_store, scratch_postgres, serving

SELECTIONS = [
    (),
    ("--vendor", "metax"),
    ("--vendor", "metax-c500", "--precision", "amp"),
    ("--topology", "2x8"),
    ("--precision", "fp32"),
]
CONVERGED_ELSEWHERE = "hist-00080"  # the planted history's first run after its driver step
WARNED = ("hist-00050", REGRESSED_RUN)


def _fill(url: str, workdir: Path) -> None:
    build_web_store(url, workdir)
    plant_history(url, runs=120)
    with open_store(url) as store, store.transaction() as conn:
        # at the -6 % step, a run that also converged lower than the five before it
        conn.execute(
            text("UPDATE run_epochs SET map = map - 0.1 WHERE run_id = :r"),
            {"r": CONVERGED_ELSEWHERE},
        )
        for run_id in WARNED:
            conn.execute(
                text(
                    "UPDATE runs SET warnings = :w, energy_j = 160000.0, "
                    "energy_per_image_j = 12.5 WHERE run_id = :r"
                ),
                {"w": '["fabric: sockets where IB was meant"]', "r": run_id},
            )
        derived.rebuild(conn)  # rows changed by hand, as `db rebuild-summaries` is for
        check = {
            "cluster": "lab",
            "topology": "2x8",
            "nodes": ["n1", "n2"],
            "gated_run_id": REGRESSED_RUN,
            "backend": "nccl",
            "precision": "fp32",
            "started_at": datetime(2026, 1, 26, tzinfo=timezone.utc),
            "took_s": 3.5,
            "ok": True,
            "blamed": [],
            "summary": "ok",
        }
        figure = {
            "check_name": "allreduce",
            "node_name": None,
            "peer_name": None,
            "device_index": None,
            "ranks": 16,
            "value": 21.5,
            "unit": "GB/s",
            "expected": None,
            "expected_from": "peers' median",
            "fraction": 0.7,
            "verdict": "ok",
            "exempt": False,
        }
        health.record_check(conn, check, [figure])  # refreshes the gated run's summary


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(f"whole-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'results.db'}"
        _fill(url, workdir)
        yield url
        return
    with scratch_postgres() as url:
        _fill(url, workdir)
        yield url


@pytest.fixture(scope="module")
def read_url(store_url: str) -> Iterator[str]:
    """What `serve` connects as: on PostgreSQL a SELECT-only role (docs/security.md)."""
    if store_url.startswith("sqlite"):
        yield store_url
        return
    with pg_reader(store_url) as reader:
        yield reader


def _both(url: str, read: Callable[[], Any]) -> tuple[Any, Any]:
    """`read()` from the kept rows, then with them marked stale (the runs), then restored."""
    with open_store(url) as store, store.engine.connect() as conn:
        assert whole_configurations(conn, None, None, None) is not None
    kept = read()
    with open_store(url) as store, store.transaction() as conn:
        conn.execute(delete(DerivedVersion).where(DerivedVersion.name == "run_verdicts"))
    try:
        with open_store(url) as store, store.engine.connect() as conn:
            assert whole_configurations(conn, None, None, None) is None
        runs = read()
    finally:
        with open_store(url) as store, store.transaction() as conn:
            derived.rebuild(conn)
    return kept, runs


def test_report_of_whole_configurations_says_what_every_run_says(
    store_url: str, run_cli: Callable[..., Any]
) -> None:
    variants = [
        (*s, "--format", f, *o)
        for s in SELECTIONS
        for f in ("markdown", "table")
        for o in ((), ("--olympic",))
    ]

    def read() -> list[str]:
        outputs = []
        for args in variants:
            result = run_cli("--db", store_url, "report", *args)
            assert result.exit_code == 0, result.err
            outputs.append(result.out)
        return outputs

    kept, runs = _both(store_url, read)
    for args, a, b in zip(variants, kept, runs):
        assert a == b, args
    everything = kept[0]  # no filter, markdown
    assert (
        f"- {REGRESSED_RUN}: p_train" in everything and f"- {REGRESSED_RUN}: p_core" in everything
    )
    assert f"- {CONVERGED_ELSEWHERE}: slower (p_core -" in everything
    assert "converged differently" in everything
    assert f"- {WARNED[0]}: fabric: sockets where IB was meant" in everything
    assert "fabric health (gate): 1 of " in everything and "allreduce min 21.5 GB/s" in everything
    assert "J/image" in everything and "12.5" in everything


def _seed_section(page: str) -> str:
    """The page's environment block and table, without the form (its options are the same)."""
    found = re.search(r"<h2>Environment</h2>.*?</table>", page, re.S)
    assert found, page[:500]
    return found.group(0)


def test_seed_page_of_whole_configurations_shows_what_every_run_shows(
    store_url: str, read_url: str, tmp_path: Path
) -> None:
    paths = ["/seed", "/seed?vendor=metax&topology=2x8", "/seed?precision=amp"]
    paths += ["/seed.md", "/seed.md?vendor=metax-c500"]

    def read() -> list[str]:
        with serving(read_url, tmp_path) as served:
            base = f"http://{served.host}:{served.port}"
            pages = [urllib.request.urlopen(base + p, timeout=30).read().decode() for p in paths]
        return [p if ".md" in path else _seed_section(p) for path, p in zip(paths, pages)]

    kept, runs = _both(store_url, read)
    for path, a, b in zip(paths, kept, runs):
        assert a == b, path
    assert f'href="/runs/{REGRESSED_RUN}">{REGRESSED_RUN}</a>: p_train' in html.unescape(kept[0])
