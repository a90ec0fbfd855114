"""User errors and failing ranks: one line on stderr naming what was wrong and how to fix it, a
non-zero exit, and a rank file with status "failed" and the error (real subprocesses)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support.workload_fixtures import TINY, run_module
from workload.faster_rcnn import result_format
from workload.faster_rcnn.errors import DatasetError
from workload.faster_rcnn.report import error_record


def assert_failed(run, error_type, fragment, rc=2):
    assert run.returncode == rc, run.explain()
    files = run.rank_files()
    assert [f.name for f in files] == ["rank-00000.json"], run.explain()
    doc = result_format.load(str(files[0]))
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == error_type
    assert fragment in doc["error"]["message"], doc["error"]["message"]
    done = run.events_of("done")
    assert done and done[-1]["status"] == "failed" and fragment in done[-1]["error"]
    failure_lines = [line for line in run.stderr.splitlines() if "failed:" in line]
    assert len(failure_lines) == 1 and fragment in failure_lines[0]
    assert "Traceback" not in run.stderr  # user errors: no traceback on stderr
    return doc


def test_missing_dataset(tmp_path):
    missing = tmp_path / "no-coco"
    run = run_module(["--data-dir", str(missing)], tmp_path / "out")
    doc = assert_failed(run, "DatasetError", f"dataset directory {missing} does not exist")
    assert "synth" in doc["error"]["message"]  # the remedy travels with the message
    assert doc["timings"]["e2e_s"] >= doc["timings"]["init_s"] > 0
    assert doc["samples"]["rank_images"] == 0 and doc["throughput"]["p_core"] is None


def test_malformed_annotation_file_names_the_path(tmp_path, synth_coco):
    data = tmp_path / "coco"
    shutil.copytree(synth_coco, data)
    path = data / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"][3]["bbox"] = [1, 2]
    path.write_text(json.dumps(doc))
    run = run_module(["--data-dir", str(data), "--max-iters", "1", *TINY], tmp_path / "out")
    assert_failed(run, "DatasetError", f"{path}: annotations[3].bbox must be a list of 4 numbers")


@pytest.mark.parametrize(
    "args, error_type, fragment",
    [
        (["--set", "lr=fast"], "ConfigError", "--set lr=fast: not a valid float"),
        (["--set", "bogus=1"], "ConfigError", "--set bogus: unknown hyper-parameter"),
        (["--config", "acme:1x1"], "ConfigError", "unknown vendor 'acme'"),
        (["--batch-size", "two"], "ConfigError", "invalid command line: argument --batch-size"),
        (
            ["--backbone-weights", "/nonexistent/resnet50.pth"],
            "WeightsError",
            "/nonexistent/resnet50.pth does not exist",
        ),
    ],
)
def test_bad_options(tmp_path, synth_coco, args, error_type, fragment):
    run = run_module(["--data-dir", str(synth_coco), *args], tmp_path / "out")
    doc = assert_failed(run, error_type, fragment)
    assert doc["config"]["case"] == "faster_rcnn"


def test_fp16_without_an_accelerator_is_a_clear_error(tmp_path, synth_coco):
    run = run_module(
        ["--data-dir", str(synth_coco), "--precision", "fp16", *TINY], tmp_path / "out"
    )
    doc = assert_failed(run, "DeviceError", "--precision fp16 needs an accelerator")
    assert "--precision amp" in doc["error"]["message"]
    assert doc["config"]["precision"] == "fp16" and doc["device"]["type"] == "cpu"


def test_broken_torchrun_environment(tmp_path, synth_coco):
    run = run_module(
        ["--data-dir", str(synth_coco)],
        tmp_path / "out",
        RANK="0",
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="3",
        LOCAL_RANK="0",
    )
    assert_failed(run, "ConfigError", "WORLD_SIZE=2 is not a multiple of LOCAL_WORLD_SIZE=3")


def test_a_rank_that_raises_in_a_loader_worker_writes_its_error(tmp_path, synth_coco):
    data = tmp_path / "coco"
    shutil.copytree(synth_coco, data)
    for image in (data / "train2017").glob("*.jpg"):
        image.write_bytes(b"\xff\xd8 truncated")
    run = run_module(
        ["--data-dir", str(data), "--max-iters", "2", *TINY, "--workers", "1"], tmp_path / "out"
    )
    doc = assert_failed(run, "DatasetError", "cannot read image {}".format(data / "train2017"))
    assert "Traceback" in doc["error"]["traceback"]
    assert doc["device"]["type"] == "cpu" and doc["config"]["hparams"]["min_size"] == 64


def test_error_record_unwraps_dataloader_worker_text():
    wrapped = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nworkload.faster_rcnn.errors.DatasetError: cannot read image /d/a.jpg (bad)'
    )
    assert error_record(wrapped)["message"] == "cannot read image /d/a.jpg (bad)"
    plain = error_record(ValueError("boom"))
    assert (plain["type"], plain["message"]) == ("ValueError", "ValueError: boom")
