"""Which devices a node's ranks use (orchestrator/devices.py) and how the launch environment,
the manifest and the monitors follow them: local rank i runs on the i-th listed device, the
device the monitors sample under that same index (nvidia-smi's / mx-smi's numbering)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from orchestrator import monitor
from orchestrator.backends.ssh.preflight import PROBE_SOURCE, VISIBLE_DEVICES_KEY
from orchestrator.backends.ssh.submit import _with_node_devices, make_plan, ssh_manifest
from orchestrator.devices import Devices, choose_devices, device_ranks, parse_indices
from orchestrator.errors import ConfigError
from orchestrator.nodeside import monitor_probe
from orchestrator.plan import build_plan, make_job
from orchestrator.runfolder.folder import manifest_from_dict
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.specs import ClusterSpec, NodeSpec, Topology

VAR = "CUDA_VISIBLE_DEVICES"


def _node(**kw) -> NodeSpec:
    return NodeSpec("g1", "10.0.0.11", accelerators=8, workdir="/w", **kw)


@pytest.mark.parametrize(
    ("text", "indices"),
    [("2,3", (2, 3)), (" 5, 1 ", (5, 1)), ("", ()), ("0", (0,))],
)
def test_a_list_of_indices_is_read_in_its_order(text: str, indices: tuple[int, ...]) -> None:
    assert parse_indices(text) == indices


@pytest.mark.parametrize("text", ["GPU-8f3a", "MIG-1/2/3", "-1", "1,1", "0,,1", "a"])
def test_what_the_monitors_cannot_map_to_an_index_is_not_a_list(text: str) -> None:
    assert parse_indices(text) is None


def test_the_cluster_files_visible_devices_win_over_the_nodes_environment() -> None:
    chosen = choose_devices(_node(visible_devices=(6, 4, 7)), 2, VAR, "0,1", "lab.toml")
    assert chosen == Devices((6, 4), "visible_devices of node g1 in lab.toml")


def test_the_nodes_own_list_is_used_in_its_order_else_the_first_nproc() -> None:
    chosen = choose_devices(_node(), 2, VAR, "5,3,1", "lab.toml")
    assert chosen == Devices((5, 3), "CUDA_VISIBLE_DEVICES of node g1's environment")
    assert choose_devices(_node(), 3, VAR, None, "lab.toml").indices == (0, 1, 2)


@pytest.mark.parametrize(
    ("node", "value", "says"),
    [
        (_node(), "4", "CUDA_VISIBLE_DEVICES of node g1's environment lists 1 device(s) (4)"),
        (_node(), "", "lists 0 device(s) (none)"),
        (_node(), "GPU-8f3a,GPU-11", "CUDA_VISIBLE_DEVICES='GPU-8f3a,GPU-11' on node g1 is not"),
        (_node(visible_devices=(3,)), None, "visible_devices of node g1 in lab.toml lists 1"),
    ],
)
def test_a_list_that_cannot_serve_the_topology_is_refused_in_one_line(
    node: NodeSpec, value: str | None, says: str
) -> None:
    with pytest.raises(ConfigError) as err:
        choose_devices(node, 2, VAR, value, "lab.toml")
    line = err.value.one_line()
    assert says in line and "\n" not in line
    assert "visible_devices" in line  # the key that fixes it


def test_local_ranks_map_to_the_monitors_device_indices_and_back() -> None:
    devices = Devices((5, 3), "x")
    assert [devices.of_rank(r) for r in (0, 1)] == [5, 3]
    assert [devices.rank_of(d) for d in (5, 3, 0, 1)] == [0, 1, None, None]
    assert device_ranks(devices) == {5: 0, 3: 1} == device_ranks((5, 3))


def _job(node: NodeSpec, topology: str = "1x2"):
    cluster = ClusterSpec("lab", "nvidia", (node,), source="lab.toml")
    return make_job(cluster, Topology.parse(topology), (node,), run_id="r1")


def test_the_launch_env_lists_the_chosen_devices_in_pci_order() -> None:
    plan = build_plan(
        _job(_node()), workload_hash="h", visible_devices_var=VAR, node_values={"g1": "5,3"}
    )
    np_ = plan.nodes[0]
    assert np_.env_dict[VAR] == "5,3" and np_.env_dict["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert np_.devices == Devices((5, 3), "CUDA_VISIBLE_DEVICES of node g1's environment")
    assert "local ranks 0..1 on device(s) 5,3 (CUDA_VISIBLE_DEVICES of node g1's" in plan.render()
    listed = build_plan(
        _job(_node(visible_devices=(6, 4))), workload_hash="h", visible_devices_var=VAR
    ).nodes[0]
    assert listed.devices == Devices((6, 4), "visible_devices of node g1 in lab.toml")
    other = build_plan(
        _job(_node()), workload_hash="h", visible_devices_var="XPU_VISIBLE_DEVICES"
    ).nodes[0]
    assert other.env_dict["XPU_VISIBLE_DEVICES"] == "0,1" and "CUDA_DEVICE_ORDER" not in (
        other.env_dict
    )


def test_a_local_node_takes_the_admins_cuda_visible_devices_from_this_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VAR, "7,6")
    here = NodeSpec("here", "local", accelerators=8, workdir="/w")
    req = SubmitRequest(topology=Topology(1, 2))
    for vendor in ("nvidia", "metax-c500"):  # both profiles' runtimes read CUDA_VISIBLE_DEVICES
        plan = make_plan(ClusterSpec("lab", vendor, (here,), source="x"), req, run_id="r1")
        env = plan.nodes[0].env_dict
        assert (env[VAR], env["CUDA_DEVICE_ORDER"]) == ("7,6", "PCI_BUS_ID")
        assert plan.visible_devices_var == VAR
    cpu = make_plan(ClusterSpec("lab", "cpu", (here,), source="x"), req, run_id="r1")
    assert VAR not in cpu.nodes[0].env_dict and cpu.nodes[0].devices is None
    docker = ClusterSpec("lab", "nvidia", (here,), runtime="docker", source="x")
    assert make_plan(docker, req, run_id="r1").nodes[0].devices == Devices(
        (0, 1), "default: the first 2"
    )


def _reports(**values: str | None):
    return {name: SimpleNamespace(env={"visible_devices_env": v}) for name, v in values.items()}


def test_preflight_values_replan_the_host_runtime_and_a_short_list_is_refused() -> None:
    node = NodeSpec("g1", "10.0.0.11", accelerators=8, workdir="/w")
    req = SubmitRequest(topology=Topology(1, 2))
    plan = make_plan(ClusterSpec("lab", "nvidia", (node,), source="x"), req, run_id="r1")
    assert plan.nodes[0].devices == Devices((0, 1), "default: the first 2")
    assert _with_node_devices(plan, req, _reports(g1=None)) is plan
    moved = _with_node_devices(plan, req, _reports(g1="3,2"))
    assert moved.nodes[0].env_dict[VAR] == "3,2" and moved.job is plan.job
    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    manifest = ssh_manifest(moved, req, "running", submitted_at=now, started_at=now)
    doc = manifest.to_dict()
    assert doc["nodes"][0]["devices"] == [3, 2]
    assert manifest_from_dict(doc, "m.json").nodes[0].devices == (3, 2)
    with pytest.raises(ConfigError, match="lists 1 device"):
        _with_node_devices(plan, req, _reports(g1="3"))


def _sample(node_ts: float, device: int, used_mib: float, metric: str = "device_mem_used_bytes"):
    ts = datetime.fromtimestamp(node_ts, timezone.utc)
    return monitor.Sample(ts, metric, used_mib * 2**20, device)


def test_memory_peaks_are_the_devices_the_ranks_used_not_the_first_ones() -> None:
    samples = {
        "g1": [_sample(10, 0, 900), _sample(10, 1, 800), _sample(10, 5, 300), _sample(11, 3, 200)],
        "g2": [_sample(10, 0, 100), _sample(10, 4, 999)],
    }
    peaks = monitor.device_memory_peaks(samples, 0, 20, 2, {"g1": (5, 3)})
    assert [(p.node, p.device, p.used_bytes // 2**20) for p in peaks] == [
        ("g1", 3, 200),
        ("g1", 5, 300),
        ("g2", 0, 100),  # no list for g2 (an older run folder): devices 0..nproc-1
    ]


def test_the_sampler_keeps_only_the_runs_devices() -> None:
    rows = [("device_mem_used_bytes", 1.0, 0), ("device_mem_used_bytes", 2.0, 5), ("x", 3.0, None)]
    assert monitor_probe.only_devices(rows, [5, 3]) == rows[1:]
    assert monitor_probe.only_devices(rows, None) == rows
    args = monitor.sampler_args(["nvidia-smi"], "/o", 1.0, (5, 3))
    assert args["devices"] == [5, 3] and args["tool"][0] == "nvidia-smi"
    assert "devices" not in monitor.sampler_args(["nvidia-smi"], "/o", 1.0)


def test_the_node_probe_reports_the_nodes_own_visible_devices(tmp_path) -> None:
    args = {"workdir": str(tmp_path), "min_free_gb": 0, "visible_devices_env": VAR}

    def probe(**env: str) -> dict:
        base = {k: v for k, v in os.environ.items() if k != VAR}
        out = subprocess.run(
            [sys.executable, "-c", PROBE_SOURCE, json.dumps(args)],
            env={**base, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out.splitlines()[-1])["env"]

    assert probe(CUDA_VISIBLE_DEVICES="6,2")[VISIBLE_DEVICES_KEY] == "6,2"
    assert probe()[VISIBLE_DEVICES_KEY] is None
