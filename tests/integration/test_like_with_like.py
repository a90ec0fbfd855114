"""Like with like, and one name for each thing, on SQLite and PostgreSQL: `compare` of a 1x2 and a
2x1 run on two clusters lists topology and cluster as differences and warns; the scaling page
keeps runs of different fix_hp apart as `report` does; a vendor filter that matches nothing
names the vendors the store holds; the docs and `--help` name vendors as they are stored."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from orchestrator.store import open_store, upgrade_store
from orchestrator.store.models import Run
from tests.support.store_fixtures import CliResult
from tests.support.web_fixtures import _folder, scratch_postgres

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
ONE_BY_TWO = "20260302-090000-1x2-nvidia"
TWO_BY_ONE = "20260303-090000-2x1-nvidia"
TWO_BY_ONE_BS8 = "20260304-090000-2x1-nvidia-bs8"
C500 = "20260305-090000-1x8-metax-c500"


def _build(url: str, root: Path) -> None:
    made = [
        _folder(root, ONE_BY_TWO, "nvidia", "A100", (1, 2), "amp", T0, 40.0),
        _folder(root, TWO_BY_ONE, "nvidia", "A100", (2, 1), "amp", T0 + timedelta(1), 38.0),
        _folder(
            root,
            TWO_BY_ONE_BS8,
            "nvidia",
            "A100",
            (2, 1),
            "amp",
            T0 + timedelta(2),
            30.0,
            given={"epochs": "2", "batch_size": "8"},  # and the ranks say so (below)
        ),
        _folder(root, C500, "metax-c500", "MXC500", (1, 8), "fp32", T0 + timedelta(3), 33.0),
    ]
    manifest = root / TWO_BY_ONE / "manifest.json"  # the 2x1 ran on another cluster
    document = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**document, "cluster": "lab-b"}))
    for rank in (root / TWO_BY_ONE_BS8 / "ranks").glob("*.json"):  # ran with bs=8
        document = json.loads(rank.read_text())
        document["config"]["hparams"]["batch_size"] = 8
        rank.write_text(json.dumps(document))
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(made)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(f"alike-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'results.db'}"
        _build(url, workdir / "runs")
        yield url
        return
    with scratch_postgres() as url:
        _build(url, workdir / "runs")
        yield url


def test_compare_of_unlike_runs_lists_topology_and_cluster_first_and_warns(
    run_cli: Callable[..., CliResult], store_url: str
) -> None:
    result = run_cli("--db", store_url, "compare", ONE_BY_TWO, TWO_BY_ONE, "--format", "json")
    assert result.exit_code == 0, result.err
    assert result.err == (
        "warning: the sides differ in topology, cluster: the changes mix these differences "
        "with any regression\n"
    )
    document = json.loads(result.out)
    assert document["setup_differs"] == ["topology", "cluster"]
    assert [s["setup"]["cluster"] for s in document["sides"]] == ["nvidia-lab", "lab-b"]
    table = run_cli("--db", store_url, "compare", ONE_BY_TWO, TWO_BY_ONE)
    differs = table.out.split("differences", 1)[1]
    assert differs.index("topology") < differs.index("cluster")
    assert "same environment" not in table.out


def test_web_scaling_keeps_other_hyper_parameters_apart_and_compare_warns(store_url: str) -> None:
    from contextlib import nullcontext

    from orchestrator.web.app import create_app
    from tests.support.store_fixtures import pg_reader

    # The pages connect as a SELECT-only role on PostgreSQL (docs/security.md).
    reading = pg_reader(store_url) if store_url.startswith("postgresql") else nullcontext(store_url)
    with reading as url, TestClient(create_app(url), raise_server_exceptions=False) as client:
        page = client.get("/scaling?vendor=nvidia&precision=amp")
        compared = client.get(f"/compare?run={ONE_BY_TWO}&run={TWO_BY_ONE}")
    assert compared.status_code == 200
    assert (
        '<p class="warning" id="compare-warning">Warning: the sides differ in topology, cluster'
        in compared.text
    )
    differences = compared.text.split('id="compare-differences"', 1)[1].split("</table>", 1)[0]
    assert "<th>topology</th><td>1x2</td><td>2x1</td>" in differences
    assert page.status_code == 200
    table = page.text.split('id="scaling-table"', 1)[1].split("</table>", 1)[0]
    rows = [r for r in table.split("<tr")[1:] if "<td>2x1</td>" in r]
    assert len(rows) == 2  # bs=8 and the defaults: two points, not one mean of both
    means = sorted(re.findall(r'class="num">([\d.]+)<', r)[2] for r in rows)
    with open_store(store_url) as store, store.reading() as conn:
        stored = dict(conn.execute(select(Run.run_id, Run.p_core)).all())
    each = sorted(f"{stored[r]:.3g}" for r in (TWO_BY_ONE, TWO_BY_ONE_BS8))
    assert means == each and each[0] != each[1]  # each run alone, not the mean of both
    assert "A100 amp (bs=8" in table


def test_a_vendor_that_matches_nothing_names_the_stored_vendors(
    run_cli: Callable[..., CliResult], store_url: str
) -> None:
    listed = run_cli("--db", store_url, "runs", "list", "--vendor", "metax")
    assert listed.exit_code == 0
    assert listed.out.strip() == (
        "no runs match --vendor metax; the store holds vendors metax-c500, nvidia"
    )
    found = run_cli("--db", store_url, "runs", "list", "--vendor", "metax-c500")
    assert C500 in found.out
    later = run_cli(
        "--db", store_url, "runs", "list", "--vendor", "nvidia", "--since", "2027-01-01"
    )
    assert later.out.strip() == "no runs match --vendor nvidia --since 2027-01-01"
    spec = run_cli("--db", store_url, "compare", "metax:1x8:fp32", "metax-c500:1x8:fp32")
    assert spec.exit_code == 2
    assert spec.err == (
        "error: no succeeded run of configuration 'metax:1x8:fp32' in the results store "
        "(the store holds vendors metax-c500, nvidia)\n"
    )
    report = run_cli("--db", store_url, "report", "--vendor", "metax")
    assert report.err == (
        "warning: no succeeded runs match --vendor metax; "
        "the store holds vendors metax-c500, nvidia\n"
    )


def _cli_help() -> str:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    runner = CliRunner()
    pages = [("runs", "list"), ("runs", "delete"), ("report",), ("compare",), ("runs",)]
    return "\n".join(runner.invoke(cli, [*p, "--help"]).output for p in pages)


VENDOR_NAMES = re.compile(
    r"--vendor ([\w.-]+)|[?&]vendor=([\w.-]+)|vendor = '([\w.-]+)'|"
    r"(?:compare|config=)\s*([a-z][\w.-]*):\d+x\d+:"
)


def test_docs_and_help_name_vendors_as_stored() -> None:
    profiles = {p.parent.name for p in (REPO / "images").glob("*/profile.toml")}
    texts = {"--help": _cli_help(), "README.md": (REPO / "README.md").read_text()}
    texts |= {f"docs/{p.name}": p.read_text() for p in (REPO / "docs").glob("*.md")}
    named = {
        (where, name)
        for where, text in texts.items()
        for match in VENDOR_NAMES.finditer(text)
        for name in match.groups()
        # a metavar (TEXT, VENDOR) is no name; an error message quoted may hold a wrong one
        if name and not name.isupper() and "match" not in text[match.start() - 16 : match.start()]
    }
    assert {n for _, n in named} >= {"metax-c500", "nvidia"}
    assert {(w, n) for w, n in named if n not in profiles} == set()
