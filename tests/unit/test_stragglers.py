"""Straggler scores (pure, orchestrator/store/stragglers.py), the [stragglers] and [energy]
tables, and what publishing stores: each rank's pace against the median rank and against its
own device's history in the store."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.errors import ConfigError
from orchestrator.readings_settings import parse_readings
from orchestrator.runfolder.folder import NodeRef, RankFile, read_run_folder
from orchestrator.store import open_store
from orchestrator.store.stragglers import pace_of, rank_paces, stored_line

RUN_2X8 = "20260114-101500-2x8-metax"


def _ranks(
    fixture_runs: Path, paces: dict[int, float], forward_share: float = 0.5
) -> list[RankFile]:
    """The 2x8 fixture's rank files with timings giving each rank `paces[rank]` s/it."""
    folder = read_run_folder(fixture_runs / RUN_2X8)
    ranks = []
    for rank in folder.ranks:
        doc = copy.deepcopy(rank.doc)
        iterations = doc["samples"]["rank_iterations"]
        pace = paces.get(rank.rank, 1.0)
        doc["timings"]["forward_s"] = pace * iterations * forward_share
        doc["timings"]["data_s"] = pace * iterations * (1 - forward_share)
        ranks.append(RankFile(rank.path, rank.rank, doc, json.dumps(doc)))
    return ranks


def test_pace_is_data_plus_forward_per_iteration_and_absent_in_older_files(fixture_runs) -> None:
    (rank,) = [r for r in _ranks(fixture_runs, {3: 0.8}) if r.rank == 3]
    assert pace_of(rank.doc) == pytest.approx(0.8)
    older = read_run_folder(fixture_runs / RUN_2X8).ranks[0].doc
    assert pace_of(older) is None  # written before forward_s: no score, not a wrong one
    no_data = copy.deepcopy(rank.doc)
    del no_data["timings"]["data_s"]  # the epochs' data_s then
    epochs = sum(e["data_s"] for e in no_data["epochs"])
    expected = (no_data["timings"]["forward_s"] + epochs) / no_data["samples"]["rank_iterations"]
    assert pace_of(no_data) == pytest.approx(expected)


def test_a_rank_slower_than_the_median_by_more_than_the_fraction_is_flagged(fixture_runs) -> None:
    folder = read_run_folder(fixture_runs / RUN_2X8)
    ranks = _ranks(fixture_runs, {9: 1.3, 2: 1.15, 5: 0.7})
    paces = rank_paces(ranks, folder.manifest)
    by_rank = {p.rank: p for p in paces}
    assert [p.rank for p in paces] == list(range(16))
    assert by_rank[9].ratio == pytest.approx(1.3) and by_rank[9].slow
    assert by_rank[2].ratio == pytest.approx(1.15) and not by_rank[2].slow  # within 20 %
    assert not by_rank[5].slow  # faster is never a straggler
    assert (by_rank[9].node, by_rank[9].device, by_rank[9].device_index) == ("me-node2", "1", 1)
    assert [p.rank for p in rank_paces(ranks, folder.manifest, fraction=0.1) if p.slow] == [2, 9]
    assert stored_line([by_rank[9].as_dict()]) == (
        "straggler: rank 9 (node me-node2, device 1) 30% slower than the median rank"
    )
    assert stored_line([by_rank[9].as_dict()], short=True) == "straggler: rank 9 on me-node2/1 +30%"
    assert stored_line(None) is None


def test_device_numbers_follow_the_manifests_device_list(fixture_runs) -> None:
    folder = read_run_folder(fixture_runs / RUN_2X8)
    nodes = list(folder.manifest.nodes)
    nodes[1] = NodeRef(nodes[1].name, nodes[1].address, 1, devices=(7, 6, 5, 4, 3, 2, 1, 0))
    manifest = folder.manifest.__class__(**{**folder.manifest.__dict__, "nodes": tuple(nodes)})
    paces = rank_paces(_ranks(fixture_runs, {}), manifest)
    assert [(p.rank, p.device_index) for p in paces if p.node == "me-node2"][:2] == [(8, 7), (9, 6)]


def test_own_history_flags_a_rank_that_every_rank_shares(fixture_runs) -> None:
    """All ranks equally slow: no rank is off the median, but rank 0's device is 50 % slower
    than it used to be; history needs three earlier runs."""
    folder = read_run_folder(fixture_runs / RUN_2X8)
    ranks = _ranks(fixture_runs, dict.fromkeys(range(16), 1.5))
    history = {("me-node1", 0): [1.0, 1.0, 1.02]}
    by_rank = {p.rank: p for p in rank_paces(ranks, folder.manifest, history)}
    assert by_rank[0].history_ratio == pytest.approx(1.5) and by_rank[0].slow
    assert by_rank[1].history_ratio is None and not by_rank[1].slow
    short = {("me-node1", 0): [1.0, 1.0]}
    assert not rank_paces(ranks, folder.manifest, short)[0].slow


def test_the_tables_refuse_bad_values_in_one_line() -> None:
    assert parse_readings({}, "lab.toml").slower_fraction == 0.2
    settings = parse_readings(
        {"stragglers": {"slower_fraction": 0.5}, "energy": {"bmc_power": True}}, "lab.toml"
    )
    assert (settings.slower_fraction, settings.bmc_power) == (0.5, True)
    bad = {
        "lab.toml: stragglers.slower is not a known key (known keys: slower_fraction)": {
            "stragglers": {"slower": 1}
        },
        "lab.toml: stragglers.slower_fraction must be a positive number, got 0 (e.g. 0.2)": {
            "stragglers": {"slower_fraction": 0}
        },
        "lab.toml: stragglers.slower_fraction 12 is out of range": {
            "stragglers": {"slower_fraction": 12}
        },
        "lab.toml: energy.bmc_power must be true or false": {"energy": {"bmc_power": "yes"}},
    }
    for said, data in bad.items():
        with pytest.raises(ConfigError) as caught:
            parse_readings(data, "lab.toml")
        assert caught.value.one_line().startswith(said), caught.value.one_line()
        assert "\n" not in caught.value.one_line()


def _folder_with_paces(
    fixture_runs: Path, into: Path, run_id: str, paces: dict[int, float]
) -> Path:
    folder = into / run_id
    shutil.copytree(fixture_runs / RUN_2X8, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["run_id"] = run_id
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for rank in _ranks(fixture_runs, paces):
        doc = dict(rank.doc, run_id=run_id)
        (folder / "ranks" / f"rank-{rank.rank:05d}.json").write_text(json.dumps(doc))
    return folder


def test_publishing_stores_every_ranks_scores_and_uses_the_devices_history(
    sqlite_url: str, fixture_runs: Path, tmp_path: Path
) -> None:
    with open_store(sqlite_url, create=True) as store:
        for i in range(3):  # three earlier runs where every rank kept 1 s/it
            store.ingest([_folder_with_paces(fixture_runs, tmp_path, f"earlier-{i}", {})])
        # now rank 4 is 40 % off its history and every rank of node 2 30 %: the median rank
        # (of 7 at 1.0, 8 at 1.3, one at 1.4) is 1.3, so only history flags them
        paces = {4: 1.4, **{r: 1.3 for r in range(8, 16)}}
        store.ingest([_folder_with_paces(fixture_runs, tmp_path, "now", paces)])
        with store.reading() as conn:
            rows = conn.execute(
                text(
                    "SELECT rank, node_name, device_index, pace_s, straggler_ratio, "
                    "history_ratio, straggler FROM rank_results WHERE run_id = 'now' ORDER BY rank"
                )
            ).all()
            (flagged,) = conn.execute(
                text("SELECT stragglers FROM runs WHERE run_id = 'now'")
            ).one()
            (earlier,) = conn.execute(
                text("SELECT stragglers FROM runs WHERE run_id = 'earlier-0'")
            ).one()
    by_rank = {r[0]: r for r in rows}
    assert by_rank[4][1:4] == ("me-node1", 4, pytest.approx(1.4))
    assert by_rank[4][4] == pytest.approx(1.4 / 1.3) and by_rank[0][4] == pytest.approx(1 / 1.3)
    assert by_rank[4][5] == pytest.approx(1.4) and by_rank[4][6]
    assert by_rank[0][5] == pytest.approx(1.0) and not by_rank[0][6]
    assert by_rank[9][5] == pytest.approx(1.3) and by_rank[9][6]  # its own history says so
    flagged = json.loads(flagged) if isinstance(flagged, str) else flagged
    assert [f["rank"] for f in flagged] == [4, *range(8, 16)]
    assert earlier is None
