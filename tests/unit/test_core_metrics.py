"""Run metrics (orchestrator/store/metrics.py): a refused rank file names the fix."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from orchestrator.errors import IngestError
from orchestrator.runfolder import RankFile, read_run_folder
from orchestrator.store.metrics import aggregate
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
