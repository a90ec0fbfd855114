"""The run metrics' definitions (docs/schema.md, "Run metrics"), as pure functions."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from orchestrator.errors import IngestError
from orchestrator.runfolder.folder import RankFile, RunFolder, read_run_folder
from orchestrator.store.metrics import GIB, aggregate, config_label, fix_hp, mem_label
from orchestrator.store.rows import run_epoch_rows
from tests.support.store_fixtures import FIXTURE_RUNS, RUN_1X8


def _folder_with(timings: list[dict[str, float]]) -> RunFolder:
    """The recorded 1x8 run with each rank's timings updated from `timings[rank]`."""
    base = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    ranks = []
    for rank in base.ranks:
        doc = copy.deepcopy(rank.doc)
        doc["timings"].update(timings[rank.rank])
        ranks.append(RankFile(rank.path, rank.rank, doc, ""))
    return replace(base, ranks=tuple(ranks))


def test_throughputs_divide_all_images_by_the_slowest_rank() -> None:
    # Rank 3 is slowest in core time, rank 5 in train time, rank 6 in training without eval.
    timings = [
        {"core_s": 100.0, "train_s": 200.0, "train_no_eval_s": 150.0, "e2e_s": 260.0}
        for _ in range(8)
    ]
    timings[3]["core_s"] = 125.0
    timings[5]["train_s"] = 250.0
    timings[6]["train_no_eval_s"] = 160.0
    timings[7]["e2e_s"] = 300.0
    folder = _folder_with(timings)
    images = sum(r.doc["samples"]["rank_images"] for r in folder.ranks)
    metrics = aggregate(folder)
    assert metrics is not None
    assert metrics.global_images == images
    assert metrics.p_core == pytest.approx(images / 125.0)
    assert metrics.p_whole == pytest.approx(images / 250.0)
    assert metrics.p_train == pytest.approx(images / 160.0)
    assert metrics.e2e_time_s == 300.0
    # Not FlagPerf's "global count / rank 0's time", which would overstate it here:
    assert metrics.p_core < images / folder.ranks[0].doc["timings"]["core_s"]


def test_map_is_rank_zeros_and_memory_is_the_hungriest_rank() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    metrics = aggregate(folder)
    assert metrics is not None
    assert metrics.map == folder.ranks[0].doc["eval"]["map"]
    top = max(r.doc["memory"]["peak_reserved_bytes"] for r in folder.ranks)
    assert metrics.mem_used_bytes == top
    assert metrics.mem_total_bytes == 64 * GIB
    assert metrics.mem_label == "37.1/64.0"


def test_global_images_must_agree_with_the_sum_of_rank_images() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    doc = dict(folder.ranks[4].doc, samples=dict(folder.ranks[4].doc["samples"], global_images=999))
    ranks = list(folder.ranks)
    ranks[4] = RankFile(ranks[4].path, 4, doc, "")
    with pytest.raises(IngestError) as caught:
        aggregate(replace(folder, ranks=tuple(ranks)))
    assert "rank-00004.json: field samples.global_images: says 999" in caught.value.message
    images = sum(r.doc["samples"]["rank_images"] for r in folder.ranks)
    assert f"add up to {images}" in caught.value.message


def test_zero_training_time_is_refused() -> None:
    timings = [{"core_s": 0.0} for _ in range(8)]
    with pytest.raises(IngestError, match="field timings.core_s: is 0 on every rank"):
        aggregate(_folder_with(timings))


def test_failed_runs_have_no_run_metrics() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    failed = replace(
        folder, manifest=replace(folder.manifest, status="failed"), ranks=folder.ranks[:3]
    )
    assert aggregate(failed) is None


def test_per_epoch_rows_add_images_and_take_the_slowest_time() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    rows = run_epoch_rows(RUN_1X8, folder.ranks)
    assert [r["epoch"] for r in rows] == [0, 1]
    first = rows[0]
    epochs = [r.doc["epochs"][0] for r in folder.ranks]
    assert first["ranks"] == 8
    assert first["images"] == sum(e["images"] for e in epochs)
    assert first["core_s"] == max(e["core_s"] for e in epochs)
    assert first["p_core"] == pytest.approx(first["images"] / first["core_s"])
    assert first["map"] == folder.ranks[0].doc["epochs"][0]["map"]


@pytest.mark.parametrize(
    ("given", "resolved", "expected"),
    [
        ({}, None, "/"),
        ({"batch_size": "16", "lr": "0.16"}, None, "bs=16, lr=0.16"),
        ({"lr": "0.0001", "epochs": "2", "batch_size": "8"}, None, "bs=8, lr=0.0001, epochs=2"),
        # What the run used wins: a vendor config set's overrides show although --set was empty.
        ({}, {"batch_size": 16, "lr": 0.08, "epochs": 26, "precision": "amp"}, "bs=16, lr=0.08"),
        (
            {"epochs": "2"},
            {"batch_size": 2, "lr": 0.02, "epochs": 2, "eval": False},
            "epochs=2, eval=false",
        ),
        ({}, {"batch_size": 2, "lr": 0.02, "lr_steps": [16, 22], "max_iters": None}, "/"),
        ({}, {"lr_steps": [8, 11], "max_iters": 100, "unknown": 1}, "lr_steps=8,11, max_iters=100"),
        # a derived default (5 from scratch, 3 with weights) is not a choice anybody made ...
        ({}, {"trainable_backbone_layers": 5, "epochs": 2}, "epochs=2"),
        ({"epochs": "2"}, {"trainable_backbone_layers": 3, "epochs": 2}, "epochs=2"),
        # ... unless it was set
        (
            {"trainable_backbone_layers": "5"},
            {"trainable_backbone_layers": 5},
            "trainable_backbone_layers=5",
        ),
    ],
)
def test_fix_hp(given: dict[str, str], resolved: dict[str, Any] | None, expected: str) -> None:
    assert fix_hp(given, resolved) == expected


def test_labels() -> None:
    assert mem_label(int(37.1 * GIB), 64 * GIB) == "37.1/64.0"
    assert mem_label(int(7.9 * GIB), None) == "7.9"
    assert mem_label(None, 64 * GIB) is None
    assert config_label("metax", "MXC500", "2x8") == "MXC500 2x8"
    assert config_label("nvidia", None, "1x8") == "nvidia 1x8"


def test_rank_values_fill_every_rank_results_column_in_order() -> None:
    from orchestrator.store.models import RankResult
    from orchestrator.store.rows import RANK_COLUMNS, rank_values

    assert sorted(RANK_COLUMNS) == sorted(c.name for c in RankResult.__table__.columns)
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    values = dict(zip(RANK_COLUMNS, rank_values(RUN_1X8, folder.ranks[2])))
    doc = folder.ranks[2].doc
    assert values["rank"] == 2 and values["host"] == doc["identity"]["host"]
    assert values["core_s"] == doc["timings"]["core_s"]
    assert values["total_mem_bytes"] == doc["memory"]["total_bytes"]
    assert values["document"] == folder.ranks[2].text
