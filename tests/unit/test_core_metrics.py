"""Run metrics (orchestrator/store/metrics.py): a refused rank file names the fix."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from orchestrator.errors import IngestError
from orchestrator.monitor import Sample
from orchestrator.runfolder.folder import RankFile, RunFolder, read_run_folder
from orchestrator.runfolder.imported import ImportedNode, ImportedResult
from orchestrator.store.metrics import (
    GIB,
    RunMetrics,
    aggregate,
    check_complete,
    fix_hp,
    imported_metrics,
    training_window,
)
from tests.support.store_fixtures import FIXTURE_RUNS, RUN_1X8


def test_a_refused_rank_field_names_the_file_the_field_and_the_fix() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    ranks = []
    for rank in folder.ranks:
        doc = copy.deepcopy(rank.doc)
        doc["timings"]["core_s"] = 0.0
        ranks.append(RankFile(rank.path, rank.rank, doc, ""))
    with pytest.raises(IngestError) as caught:
        aggregate(replace(folder, ranks=tuple(ranks)))
    assert caught.value.message == (
        f"{ranks[0].path}: field timings.core_s: is 0 on every rank; a succeeded run must have "
        "trained"
    )
    assert caught.value.remedy == "fix or remove the file; docs/schema.md explains the checks"


def _edited(edit) -> RunFolder:
    """The recorded 1x8 run with `edit(rank, doc)` applied to a copy of each rank's document."""
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    ranks = []
    for rank in folder.ranks:
        doc = copy.deepcopy(rank.doc)
        edit(rank.rank, doc)
        ranks.append(RankFile(rank.path, rank.rank, doc, ""))
    return replace(folder, ranks=tuple(ranks))


def test_missing_rank_files_are_named_up_to_four_then_dots() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    for kept, shown in (
        (4, "rank-00004.json, rank-00005.json, rank-00006.json, rank-00007.json"),
        (3, "rank-00003.json, rank-00004.json, rank-00005.json, rank-00006.json ..."),
        (7, "rank-00007.json"),
    ):
        partial = replace(folder, ranks=folder.ranks[:kept])
        with pytest.raises(IngestError) as caught:
            check_complete(partial)
        assert caught.value.message == (
            f"{folder.path}: ranks/{shown} missing: the manifest says status succeeded, which "
            "needs all 8 rank files"
        )
        assert caught.value.remedy == (
            "collect the missing files, or set the manifest's status to failed with a reason"
        )


def test_a_failed_rank_in_a_succeeded_run_is_refused() -> None:
    folder = _edited(lambda rank, doc: doc.update(status="failed") if rank == 2 else None)
    with pytest.raises(IngestError) as caught:
        check_complete(folder)
    assert caught.value.message == (
        f"{folder.ranks[2].path}: field status: is 'failed' but the manifest says the run succeeded"
    )
    assert caught.value.remedy == "fix or remove the file; docs/schema.md explains the checks"


def test_memory_total_comes_from_the_memory_section_else_the_device() -> None:
    def no_total(rank: int, doc: dict) -> None:
        doc["memory"].pop("total_bytes")
        doc["device"]["total_mem_bytes"] = 32 * GIB

    metrics = aggregate(_edited(no_total))
    assert metrics is not None and metrics.mem_total_bytes == 32 * GIB

    def neither(rank: int, doc: dict) -> None:
        doc["memory"].pop("total_bytes")
        doc["device"].pop("total_mem_bytes", None)

    metrics = aggregate(_edited(neither))
    assert metrics is not None and metrics.mem_total_bytes is None
    assert metrics.mem_used_bytes == 39857841766 and metrics.mem_label == "37.1"  # hungriest rank
    full = aggregate(read_run_folder(FIXTURE_RUNS / RUN_1X8))
    assert full is not None and full.mem_total_bytes == 64 * GIB


def test_epochs_and_convergence_come_from_rank_zero() -> None:
    metrics = aggregate(read_run_folder(FIXTURE_RUNS / RUN_1X8))
    assert metrics is not None
    assert (metrics.epochs_completed, metrics.converged) == (2, False)
    converged = aggregate(_edited(lambda rank, doc: doc.update(converged=True)))
    assert converged is not None and converged.converged is True


def test_a_training_time_under_one_second_is_still_accepted() -> None:
    metrics = aggregate(_edited(lambda rank, doc: doc["timings"].update(core_s=0.5)))
    assert metrics is not None and metrics.p_core == 234496 / 0.5


def test_fix_hp_shows_values_as_typed_and_never_the_precision() -> None:
    resolved = {"eval": False, "warmup_iters": 5, "target_map": None, "lr": 0.08}
    assert fix_hp({}, resolved) == "lr=0.08, eval=false, target_map=none, warmup_iters=5"
    assert fix_hp({}, {"eval": True, "lr_steps": [8, 11]}) == "lr_steps=8,11"  # eval True: default
    assert fix_hp({"precision": "amp", "bs": "4"}) == "bs=4"
    assert fix_hp({}, {"lr": 0.1}) == "lr=0.1" and fix_hp({}, {"weight_decay": 1e-05}) == (
        "weight_decay=1e-05"
    )


def test_memory_total_prefers_the_memory_section_over_the_device() -> None:
    def smaller(rank: int, doc: dict) -> None:
        doc["memory"]["total_bytes"] = 48 * GIB

    metrics = aggregate(_edited(smaller))
    assert metrics is not None and metrics.mem_total_bytes == 48 * GIB


def test_imported_metrics_are_the_longest_node_the_slowest_rates_and_node_0s_rest() -> None:
    def node(
        rank: int, e2e: float, train: float, p: tuple[float, float, float], **kw
    ) -> ImportedNode:
        return ImportedNode(
            rank, f"h{rank}", f"rank{rank * 8}.out.log", e2e, train, train - 5, train - 10, *p, **kw
        )

    first = node(0, 100.0, 80.0, (10.0, 12.0, 20.0), map=0.36, converged=True)
    second = node(1, 120.0, 90.0, (9.0, 13.0, 19.0), map=0.1, converged=False)
    imported = ImportedResult("flagperf", "faster_rcnn:1:8", 1, "/logs", None, (first, second))
    assert imported_metrics(imported) == RunMetrics(
        global_images=800,  # node 0's: round(10.0 images/s x 80 s)
        e2e_time_s=120.0,
        p_whole=9.0,
        p_train=12.0,
        p_core=19.0,
        map=0.36,
        mem_used_bytes=None,
        mem_total_bytes=None,
        epochs_completed=None,
        converged=True,
    )
    # a folder made by `orchestrator import` has no rank files: its metrics are these
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    from_import = replace(folder, manifest=replace(folder.manifest, imported=imported), ranks=())
    assert aggregate(from_import) == imported_metrics(imported)


def test_the_training_window_is_first_start_after_init_to_last_end_and_zero_without_ranks() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    # start_unix 1768299300.0 + init_s 41.418; the last rank's start + init + train_s
    assert training_window(folder.ranks) == pytest.approx(
        (1768299341.418, 1768300794.924), abs=1e-6
    )
    assert training_window(()) == (0.0, 0.0)


def test_memory_is_the_largest_device_peak_of_the_devices_the_manifest_names() -> None:
    folder = read_run_folder(FIXTURE_RUNS / RUN_1X8)
    start, end = training_window(folder.ranks)
    node = folder.manifest.nodes[0]
    devices = tuple(range(8, 16))  # the launcher's visible devices: not 0..7

    def at(offset: float, metric: str, value: float, device: int) -> Sample:
        return Sample(datetime.fromtimestamp(offset, timezone.utc), metric, value, device)

    samples = [
        at(start + 5, "device_mem_used_bytes", 20 * GIB, 9),
        at(start + 5, "device_mem_total_bytes", 48 * GIB, 9),
        at(start + 9, "device_mem_used_bytes", 30 * GIB, 12),
        at(start + 9, "device_mem_total_bytes", 48 * GIB, 12),
        at(start - 20, "device_mem_used_bytes", 60 * GIB, 12),  # loading, before training
        at(end + 1, "device_mem_used_bytes", 61 * GIB, 9),  # after training
        at(start + 9, "device_mem_used_bytes", 63 * GIB, 0),  # another job's card
    ]
    manifest = replace(folder.manifest, nodes=(replace(node, devices=devices),))
    metrics = aggregate(replace(folder, manifest=manifest, monitors={node.name: samples}))
    assert metrics is not None
    assert (metrics.mem_used_bytes, metrics.mem_total_bytes, metrics.mem_source) == (
        30 * GIB,
        48 * GIB,  # the device's, not the allocator's 64 GiB
        "device",
    )
    assert metrics.mem_devices == (
        {"node": node.name, "device": 9, "used_bytes": 20 * GIB, "total_bytes": 48 * GIB},
        {"node": node.name, "device": 12, "used_bytes": 30 * GIB, "total_bytes": 48 * GIB},
    )


def _timings(**times: float):
    def edit(rank: int, doc: dict) -> None:
        doc["timings"].update(times)

    return _edited(edit)


def test_a_time_longer_than_the_time_containing_it_is_refused_with_clock_slack() -> None:
    # core_s may exceed train_no_eval_s by 1 % + 0.05 s (clocks differ a little), no further
    limit = 1200.0 * 1.01 + 0.05
    assert aggregate(_timings(core_s=limit, train_no_eval_s=1200.0, train_s=1300.0)) is not None
    with pytest.raises(IngestError) as caught:
        aggregate(_timings(core_s=limit + 0.01, train_no_eval_s=1200.0, train_s=1300.0))
    path = read_run_folder(FIXTURE_RUNS / RUN_1X8).ranks[0].path
    assert caught.value.message == (
        f"{path}: field timings.core_s: {limit + 0.01:g} s is longer than timings.train_no_eval_s "
        "1200 s, which contains it"
    )
    with pytest.raises(IngestError) as caught:
        aggregate(_timings(train_s=1500.0, e2e_s=1440.0))
    assert caught.value.message == (
        f"{path}: field timings.train_s: 1500 s is longer than timings.e2e_s 1440 s, which "
        "contains it"
    )
