"""The staged workload is verified by the preflight probe on its way (no round trip of its
own): the probe's verdict is the one `sha256sum -c` gave in the staging step before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.backends.ssh.launch import (
    VERIFY_WORKLOAD_SCRIPT,
    staged_workloads,
    workload_manifest,
)
from orchestrator.backends.ssh.preflight import PROBE_SOURCE
from orchestrator.backends.ssh.submit import make_plan
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.specs import CaseSettings, ClusterSpec, NodeSpec, Topology
from orchestrator.workload_source import workload_files


def _stage(folder: Path, manifest: str) -> None:
    """What launch.stage leaves on a node: the files, then .complete with the manifest."""
    for rel, local in workload_files():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, folder / rel)
    (folder / ".complete").write_text(manifest + "\n")


def _probe_says(folder: Path, manifest: str, tmp_path: Path) -> bool | None:
    args = {"workdir": str(tmp_path), "min_free_gb": 0}
    args["workload"] = {"dir": str(folder), "manifest": manifest}
    out = subprocess.run(
        [sys.executable, "-c", PROBE_SOURCE, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    verdict = json.loads(out.splitlines()[-1])["workload_staged"]
    assert verdict is None or isinstance(verdict, bool)
    return verdict


def _shell_says(folder: Path, manifest: str) -> bool:
    argv = ["sh", "-c", VERIFY_WORKLOAD_SCRIPT, "verify", str(folder), manifest]
    return subprocess.run(argv, capture_output=True).returncode == 0


def _spoil(folder: Path, how: str) -> None:
    first = folder / workload_files()[0][0]
    if how == "changed":
        first.write_text(first.read_text() + "\n# changed\n")
    elif how == "missing":
        first.unlink()
    elif how == "incomplete":
        (folder / ".complete").unlink()


@pytest.mark.parametrize("how", ["intact", "changed", "missing", "incomplete", "absent"])
def test_the_probe_verifies_a_staged_workload_as_sha256sum_did(tmp_path: Path, how: str) -> None:
    manifest = workload_manifest(workload_files())
    folder = tmp_path / "workload" / "0123456789abcdef"
    if how != "absent":
        _stage(folder, manifest)
        _spoil(folder, how)
    expected = how == "intact"
    assert _shell_says(folder, manifest) is expected
    assert _probe_says(folder, manifest, tmp_path) is expected


def test_the_probe_says_nothing_of_a_workload_it_was_not_asked_about(tmp_path: Path) -> None:
    args = json.dumps({"workdir": str(tmp_path), "min_free_gb": 0})
    out = subprocess.run(
        [sys.executable, "-c", PROBE_SOURCE, args], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.splitlines()[-1])["workload_staged"] is None


def test_staged_workloads_name_each_hosts_folder_and_the_manifest() -> None:
    nodes = (NodeSpec("n1", "10.0.0.1", workdir="/w1"), NodeSpec("n2", "10.0.0.2", workdir="/w2"))
    cluster = ClusterSpec("c", "cpu", nodes, case=CaseSettings(data_dir="/data"))
    plan = make_plan(cluster, SubmitRequest(Topology.parse("2x1")))
    staged = staged_workloads(plan)
    manifest = workload_manifest(workload_files())
    by_node = {np_.node.name: np_.workload_dir for np_ in plan.nodes}
    assert staged == {name: {"dir": by_node[name], "manifest": manifest} for name in ("n1", "n2")}
    assert staged["n1"]["dir"].startswith("/w1/workload/")
    docker = make_plan(
        ClusterSpec("c", "cpu", nodes, case=CaseSettings(data_dir="/data"), runtime="docker"),
        SubmitRequest(Topology.parse("2x1")),
    )
    assert staged_workloads(docker) == {}
