"""docs/rank-result.md against rank files the workload really wrote: every key the page names is
in them and every key they hold is on the page; and what those files say about FlagPerf's rules
(the extra epoch, the import time kept apart)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Set

import pytest

from tests.support.workload_fixtures import run_module
from workload.faster_rcnn import result_format

pytestmark = pytest.mark.torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "rank-result.md"
# The page's sections and where their fields sit in the file; other headings hold no fields.
SECTIONS = {
    "Top level": "",
    "identity": "identity.",
    "config": "config.",
    "software": "software.",
    "device": "device.",
    "timings": "timings.",
    "samples": "samples.",
    "throughput": "throughput.",
    "memory": "memory.",
    "plan": "plan.",
    "eval": "eval.",
    "epochs": "epochs[].",
    "error": "error.",
}
# Objects whose keys are data, not fields: hyper-parameter names (docs/workload.md) and
# environment variables.
OPAQUE = {"config.hparams", "config.vendor_env"}


def documented_keys(text: str) -> Set[str]:
    """The first cell of every table row under a section heading, with the section's prefix."""
    keys: Set[str] = set()
    prefix = None
    for line in text.splitlines():
        heading = re.match(r"^## (.+)$", line)
        if heading:
            prefix = SECTIONS.get(heading.group(1).strip())
            continue
        cell = re.match(r"^\| `([\w]+)` \|", line)
        if prefix is not None and cell:
            keys.add(prefix + cell.group(1))
    return keys


def file_keys(doc: Dict[str, Any], prefix: str = "") -> Set[str]:
    """Every key of a rank file as a dotted path; an epoch's keys as `epochs[].key`."""
    keys: Set[str] = set()
    for name, value in doc.items():
        path = prefix + name
        keys.add(path)
        if path in OPAQUE:
            continue
        if isinstance(value, dict):
            keys |= file_keys(value, path + ".")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                keys |= file_keys(item, path + "[].")
    return keys


@pytest.fixture(scope="module")
def real_docs(real_run_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The succeeded run's rank file, and one of a rank that failed (a missing dataset: it ends
    before torch is imported, so it costs a second): together they hold every key."""
    (ok_file,) = sorted((real_run_folder / "ranks").glob("rank-*.json"))
    out = tmp_path_factory.mktemp("failed-rank")
    failed = run_module(["--data-dir", str(out / "nowhere")], out)
    assert failed.returncode != 0
    (failed_file,) = failed.rank_files()
    return {
        "ok": result_format.load(str(ok_file)),
        "failed": result_format.load(str(failed_file)),
    }


def test_every_key_on_the_page_is_in_a_real_rank_file_and_the_reverse(
    real_docs: Dict[str, Any],
) -> None:
    on_page = documented_keys(DOC.read_text(encoding="utf-8"))
    in_files = file_keys(real_docs["ok"]) | file_keys(real_docs["failed"])
    assert on_page - in_files == set(), "documented but never written"
    assert in_files - on_page == set(), "written but not documented"
    assert "slowest_rank_timings" not in in_files | on_page


def test_the_pages_example_is_a_valid_current_rank_file() -> None:
    text = DOC.read_text(encoding="utf-8")
    (block,) = re.findall(r"^```json\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    example = result_format.validate(json.loads(block))
    assert example["schema_version"] == result_format.SCHEMA_VERSION
    assert file_keys(example) <= documented_keys(text)
    # its throughputs are rank 0's own clocks, as the workload writes them
    t, images = example["timings"], example["samples"]["global_images"]
    assert example["throughput"] == {
        "p_whole": images / t["train_s"],
        "p_train": images / t["train_no_eval_s"],
        "p_core": images / t["core_s"],
    }


def test_a_real_rank_file_follows_flagperfs_epoch_rule_and_keeps_the_import_time(
    real_docs: Dict[str, Any],
) -> None:
    doc = real_docs["ok"]
    assert doc["schema_version"] == 2
    assert doc["config"]["epochs"] == 1 and doc["config"]["hparams"]["flagperf_epochs"] is True
    assert [e["epoch"] for e in doc["epochs"]] == [0, 1]  # FlagPerf: epoch 0 .. max_epoch
    assert doc["samples"]["epochs_completed"] == 2
    assert doc["plan"]["planned_iterations"] == 2 * doc["plan"]["iterations_per_epoch"]
    t = doc["timings"]
    assert 0 < t["import_s"] < t["init_s"] < t["e2e_s"]
    assert all(e["data_s"] > 0 and e["skipped_steps"] == 0 for e in doc["epochs"])
    assert real_docs["failed"]["timings"]["import_s"] == 0.0  # failed before torch was imported
