"""A vendor profile's `label`: read from profile.toml, carried by the plan into the run's
hardware_label, and shown on the seed's "machine, accelerator" line when no node named its
accelerator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.ssh.submit import make_plan, ssh_manifest
from orchestrator.errors import ImageError
from orchestrator.images.profiles import load_profile
from orchestrator.runfolder.folder import load_manifest
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.specs import ClusterSpec, NodeSpec, Topology
from orchestrator.store.queries import Selection, environment
from tests.support.store_fixtures import RUN_2X8

REPO = Path(__file__).resolve().parents[2]
PROFILE = """
name = "acme"
description = "a vendor with a long description that is not a label"
{label}
[image]
base = "acme/base:1"
wheel_dir = "/opt/wheels/acme"
requirements = ["torch"]
"""


def _profile(tmp_path: Path, label: str) -> Any:
    (tmp_path / "acme").mkdir(parents=True)
    (tmp_path / "Dockerfile.template").write_text("FROM {{base_image}}\n")
    (tmp_path / "acme" / "profile.toml").write_text(PROFILE.format(label=label))
    return load_profile("acme", tmp_path)


def test_the_shipped_profiles_carry_their_labels_and_cpu_its_name() -> None:
    labels = {name: load_profile(name).label for name in ("metax-c500", "nvidia", "cpu")}
    assert labels == {"metax-c500": "MetaX C500 64G", "nvidia": "NVIDIA GPU", "cpu": "cpu"}


def test_a_label_is_read_stripped_and_defaults_to_the_profile_name(tmp_path: Path) -> None:
    assert _profile(tmp_path / "a", 'label = " Acme X1 96G "').label == "Acme X1 96G"
    assert _profile(tmp_path / "b", "").label == "acme"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'label = ""',
            "profile.toml: label must be a non-empty string, got '' (write label = \"...\")",
        ),
        (
            "label = 3",
            'profile.toml: label must be a non-empty string, got 3 (write label = "...")',
        ),
        (
            f'label = "{"x" * 65}"',
            f"profile.toml: label '{'x' * 65}' is longer than 64 characters "
            '(shorten it, e.g. label = "MetaX C500 64G")',
        ),
    ],
)
def test_a_bad_label_is_one_line_naming_the_file_and_key(
    tmp_path: Path, line: str, message: str
) -> None:
    with pytest.raises(ImageError) as caught:
        _profile(tmp_path, line)
    assert caught.value.one_line() == f"{tmp_path}/acme/{message}"


def test_a_label_of_64_characters_fits_the_column(tmp_path: Path) -> None:
    assert _profile(tmp_path, f'label = "{"y" * 64}"').label == "y" * 64


def _cluster(vendor: str, backend: str = "ssh") -> ClusterSpec:
    nodes = () if backend == "slurm" else (NodeSpec("n1", "local", accelerators=8),)
    return ClusterSpec("lab", vendor, nodes, backend=backend)


def test_a_run_planned_for_a_profile_records_its_label_as_hardware_label() -> None:
    req = SubmitRequest(topology=Topology(1, 8))
    plan = make_plan(_cluster("metax-c500"), req, run_id="r1")
    assert plan.hardware_label == "MetaX C500 64G"
    manifest = ssh_manifest(plan, req, "running", submitted_at=None, started_at=None)
    assert manifest.hardware_label == "MetaX C500 64G"
    assert make_plan(_cluster("cpu"), req, run_id="r2").hardware_label == "cpu"
    assert "MetaX C500 64G" not in plan.render()  # the dry-run text stays as it was


def test_a_slurm_run_records_the_label_too() -> None:
    from orchestrator.backends.slurm.plan import make_slurm_plan

    plan = make_slurm_plan(_cluster("nvidia", "slurm"), SubmitRequest(Topology(2, 8)), "r3")
    assert plan.hardware_label == "NVIDIA GPU"


def test_the_machine_line_falls_back_to_the_label_when_no_node_named_its_accelerator(
    sqlite_store: Any, run_copy: Any
) -> None:
    manifest = load_manifest(run_copy(RUN_2X8) / "manifest.json")
    sqlite_store.create_run(
        replace(manifest, status="running", finished_at=None, hardware_label="MetaX C500 64G")
    )
    sqlite_store.record_environment(RUN_2X8, "me-node1", 0, {"os": "Ubuntu 20.04.6 LTS"})
    with sqlite_store.engine.connect() as conn:
        block = dict(environment(conn, [RUN_2X8]))
        selected = dict(environment(conn, Selection(status="running")))
    assert block["machine, accelerator"] == ["MetaX C500 64G"]
    assert block["OS"] == ["Ubuntu 20.04.6 LTS"]
    assert selected == block  # a report's selection reads the same block

    probed = {"accelerator_model": "MetaX C500", "accelerator_count": 8}
    sqlite_store.record_environment(RUN_2X8, "me-node2", 1, probed)
    with sqlite_store.engine.connect() as conn:
        block = dict(environment(conn, [RUN_2X8]))
    assert block["machine, accelerator"] == ["8 x MetaX C500"]  # what a node said wins
