"""The store's image record (with the build sidecar) and the live progress displays."""

import io
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from orchestrator.images.build import BuiltImage
from orchestrator.images.profiles import load_profile
from orchestrator.images.progress_ui import build_progress, image_progress, transfer_progress
from orchestrator.images.records import environment_fields, parse_docker_time, record_for
from orchestrator.images.spec import HashedFile, ImageSpec

SPEC = ImageSpec(
    profile=load_profile("metax-c500"),
    base_image="metax/c500-pytorch-base:2.19.0.6-ubuntu20.04",
    base_id="sha256:" + "b" * 64,
    dockerfile="FROM x\n",
    wheels=(
        HashedFile("pycocotools-2.0.7-cp38-cp38-linux_x86_64.whl", "/w/p.whl", 10, "1" * 64),
        HashedFile("torch-2.0.0+mc2.19.0.6-cp38-cp38-linux_x86_64.whl", "/w/t.whl", 20, "2" * 64),
        HashedFile(
            "torchvision-0.15.1+mc2.19.0.6-cp38-cp38-linux_x86_64.whl", "/w/v.whl", 30, "3" * 64
        ),
    ),
    workload=(HashedFile("workload/__init__.py", "/src/workload/__init__.py", 0, "4" * 64),),
)


def _built(reused: bool, log: str | None = "/logs/b.log") -> BuiltImage:
    return BuiltImage(
        SPEC.tag,
        "sha256:" + "c" * 64,
        123,
        0.0 if reused else 42.5,
        None if reused else log,
        reused,
        "2026-11-28T12:00:01.123456789Z",
    )


def test_a_new_build_is_recorded_with_everything_and_remembered(tmp_path):
    record = record_for(SPEC, _built(False), log_dir=tmp_path)
    assert record["tag"] == SPEC.tag and record["image_id"] == "sha256:" + "c" * 64
    assert record["base"] == f"{SPEC.base_image}@sha256:{'b' * 64}"
    assert record["wheels"][1] == {"filename": SPEC.wheels[1].name, "sha256": "2" * 64}
    assert record["build_seconds"] == 42.5 and record["build_log_path"] == "/logs/b.log"
    assert isinstance(record["created_at"], datetime)
    # Reused later (e.g. recorded into a new database): the saved build facts come back.
    again = record_for(SPEC, _built(True), log_dir=tmp_path)
    assert again["build_seconds"] == 42.5 and again["build_log_path"] == "/logs/b.log"
    assert again["created_at"] == record["created_at"]


def test_a_reused_image_without_its_build_record_gets_the_daemons_time(tmp_path):
    record = record_for(SPEC, _built(True), log_dir=tmp_path)
    assert record["build_seconds"] is None and record["build_log_path"] is None
    assert record["created_at"] == datetime(2026, 11, 28, 12, 0, 1, 123456, tzinfo=timezone.utc)
    assert not list(Path(tmp_path).glob("*.json"))


def test_docker_times_parse():
    assert parse_docker_time("2026-11-28T12:00:01Z") == datetime(
        2026, 11, 28, 12, 0, 1, tzinfo=timezone.utc
    )
    assert parse_docker_time(None) is None and parse_docker_time("garbage") is None


def test_environment_block_shows_the_vendor_wheels_and_the_image():
    fields = environment_fields(SPEC, "sha256:" + "c" * 64)
    assert fields["wheel"] == f"{SPEC.wheels[1].name}, {SPEC.wheels[2].name}"
    assert fields["image"] == SPEC.tag and fields["image_id"].startswith("sha256:c")


def test_progress_displays_on_a_terminal_and_in_plain_text():
    terminal = io.StringIO()
    with image_progress(Console(file=terminal, force_terminal=True, width=120)) as (
        observer,
        progress,
    ):
        observer.on_step(4, 14, "RUN pip install")
        observer.on_upload(50, 100)
        progress("node1", 5_000_000, 10_000_000)
    text = terminal.getvalue()
    assert "step 4/14" in text and "build context" in text and "node1" in text
    plain = io.StringIO()
    console = Console(file=plain, force_terminal=False, width=120)
    with build_progress(console) as observer, transfer_progress(console) as progress:
        observer.on_step(1, 2, "FROM base")
        observer.on_upload(100, 100)
        progress("node2", 10_000_000, 10_000_000)
    lines = plain.getvalue().splitlines()
    assert "step 1/2: FROM base" in lines
    assert "build context: 0 of 0 MB sent" in lines
    assert "node2: 10 of ~10 MB sent" in lines
