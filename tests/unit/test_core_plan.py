"""JobSpec -> Plan (orchestrator/plan.py) beyond the golden 2x8 text: visible devices follow the
processes per node, hyper-parameter precedence, local and container nodes, run ids, --set."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from orchestrator.errors import ConfigError
from orchestrator.plan import (
    build_plan,
    make_job,
    new_run_id,
    node_env,
    parse_sets,
    workload_args,
)
from orchestrator.rendezvous import master_address
from orchestrator.specs import CaseSettings, ClusterSpec, NodeSpec, Topology, pick_nodes
from workload.faster_rcnn.hparams import resolve


def _cluster(hparams: dict[str, str] | None = None, accelerators: int = 8, **node) -> ClusterSpec:
    nodes = tuple(
        NodeSpec(f"n{i}", f"10.0.0.{i}", accelerators=accelerators, workdir="/w", **node)
        for i in (1, 2)
    )
    case = CaseSettings(data_dir="/data", backbone_weights="none", hparams=hparams or {})
    return ClusterSpec("lab", "cpu", nodes, case=case, master_port=29600, source="lab.toml")


def _job(topology: str = "2x4", cluster: ClusterSpec | None = None, **kw):
    cluster = cluster or _cluster()
    topo = Topology.parse(topology)
    return make_job(cluster, topo, pick_nodes(cluster, topo), run_id="r1", **kw)


def test_cuda_visible_devices_for_2x4_on_8_accelerator_nodes_lists_4_devices() -> None:
    plan = build_plan(_job("2x4"), workload_hash="h", visible_devices_var="CUDA_VISIBLE_DEVICES")
    for rank, np_ in enumerate(plan.nodes):
        assert np_.node.accelerators == 8
        assert np_.env_dict["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
        assert np_.torchrun_argv[3:9] == (
            "--nnodes=2",
            "--nproc-per-node=4",
            f"--node-rank={rank}",
            "--master-addr=10.0.0.1",
            "--master-port=29600",
            "--max-restarts=0",
        )
    one = build_plan(
        _job("1x1"), workload_hash="h", visible_devices_var="ASCEND_RT_VISIBLE_DEVICES"
    )
    assert one.nodes[0].env_dict["ASCEND_RT_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in one.nodes[0].env_dict


def test_node_env_is_run_id_unbuffered_vendor_env_and_only_the_network_settings_given() -> None:
    job = _job("1x2")
    bare = node_env(job, job.nodes[0], {"VENDOR_X": "1"}, None)
    node0 = job.nodes[0].name
    assert bare == {
        "ORCHESTRATOR_RUN_ID": "r1",
        "ORCHESTRATOR_NODE": node0,
        "PYTHONUNBUFFERED": "1",
        "VENDOR_X": "1",
    }
    ib = NodeSpec("n", "h", ib_hcas=("mlx5_0", "mlx5_1"), socket_ifname="ib0")
    env = node_env(job, ib, {}, "CUDA_VISIBLE_DEVICES")
    assert env == {
        "ORCHESTRATOR_RUN_ID": "r1",
        "ORCHESTRATOR_NODE": "n",
        "PYTHONUNBUFFERED": "1",
        "NCCL_IB_HCA": "mlx5_0,mlx5_1",
        "NCCL_SOCKET_IFNAME": "ib0",
        "GLOO_SOCKET_IFNAME": "ib0",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def test_precedence_of_set_over_the_cluster_defaults_over_the_reference() -> None:
    cluster = _cluster({"bs": "4", "lr": "0.01"})
    job = _job("1x1", cluster, sets=parse_sets(["batch=16"]))
    assert job.hparams == {"batch_size": "16", "lr": "0.01"}
    args = workload_args(job, "/out")
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == ["batch_size=16", "lr=0.01"]
    resolved = resolve(None, "1x1", {}, sets).hparams
    assert resolved["batch_size"] == 16  # --set
    assert resolved["lr"] == 0.01  # the cluster file's [case.hparams]
    assert resolved["momentum"] == 0.9  # the workload's reference default
    # Without --set the cluster's default stands.
    assert _job("1x1", cluster).hparams == {"batch_size": "4", "lr": "0.01"}


def test_a_bad_cluster_default_is_refused_like_a_bad_set() -> None:
    with pytest.raises(ConfigError, match="--set lr=fast: not a valid float"):
        _job("1x1", _cluster({"lr": "fast"}))


def test_workload_args_carry_case_run_precision_config_and_sorted_sets() -> None:
    cluster = _cluster()
    job = _job("2x4", cluster, precision="amp", sets={"lr": "0.1", "batch_size": "8"})
    assert workload_args(job, "/out") == [
        "--data-dir",
        "/data",
        "--backbone-weights",
        "none",
        "--output-dir",
        "/out",
        "--run-id",
        "r1",
        "--precision",
        "amp",
        "--set",
        "batch_size=8",
        "--set",
        "lr=0.1",
    ]
    named = ClusterSpec(
        "lab", "cpu", cluster.nodes, case=CaseSettings(config_name="metax-c500"), source="x"
    )
    args = workload_args(_job("2x4", named), "/out")
    assert args[args.index("--config") + 1] == "metax-c500:2x4"


def test_host_plan_stages_the_workload_and_a_wrapped_plan_does_not() -> None:
    job = _job("2x4")
    host = build_plan(job, workload_hash="abc")
    np_ = host.nodes[1]
    assert host.runtime == "host" and host.master_port == 29600 and host.master_addr == "10.0.0.1"
    assert np_.workload_dir == "/w/workload/abc" and np_.env_dict["PYTHONPATH"] == "/w/workload/abc"
    assert np_.run_dir == "/w/runs/r1" and np_.output_dir == "/w/runs/r1/ranks"
    assert np_.log_path == "/w/runs/r1/node.log"
    assert np_.argv == np_.torchrun_argv and np_.argv[:3] == (
        "python3",
        "-m",
        "torch.distributed.run",
    )
    assert np_.env == tuple(sorted(np_.env))

    seen = []

    def wrap(plan):
        seen.append(plan.node_rank)
        return ("docker", "run", plan.node.name)

    boxed = build_plan(job, workload_hash="abc", wrap=wrap, image="img:1")
    assert boxed.runtime == "docker" and boxed.image == "img:1" and seen == [0, 1]
    assert [n.argv for n in boxed.nodes] == [("docker", "run", "n1"), ("docker", "run", "n2")]
    assert boxed.nodes[0].workload_dir is None and "PYTHONPATH" not in boxed.nodes[0].env_dict
    assert boxed.nodes[0].torchrun_argv[0] == "python3"


def test_a_local_node_is_reached_on_loopback_and_rendered_as_this_machine() -> None:
    local = NodeSpec("here", "local", accelerators=2, workdir="/w")
    cluster = ClusterSpec("solo", "cpu", (local,), source="x")
    job = make_job(cluster, Topology(1, 2), (local,), run_id="r9")
    assert master_address(job).address == "127.0.0.1"
    text = build_plan(job, workload_hash="h").render()
    assert "master 127.0.0.1:29500 (every node is this machine), world size 2" in text
    assert "node here (node rank 0, this machine)" in text
    assert "hparams (defaults)" in text and "timeouts: overall none, no progress none" in text
    assert ", IB " not in text
    remote = NodeSpec("r", "10.1.1.1", port=2222)
    job = make_job(
        ClusterSpec("c", "cpu", (remote,), source="x"), Topology(1, 1), (remote,), run_id="r"
    )
    text = build_plan(job, workload_hash="h", image="img").render()
    assert "(node rank 0, 10.1.1.1:2222)" in text and "runtime host, image img" in text


def test_run_ids_sort_by_utc_time_and_differ_by_salt() -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    first, second = new_run_id(at, "a"), new_run_id(at, "b")
    assert first.startswith("20260304-050607-") and len(first) == len("20260304-050607-") + 6
    assert first != second and new_run_id(at, "a") == first
    assert new_run_id().split("-")[0] >= "2026"


def test_set_options_resolve_aliases_strip_spaces_and_the_last_one_wins() -> None:
    assert parse_sets([" bs = 16 ", "learning_rate=0.1", "lr=0.2", "epochs=3"]) == {
        "batch_size": "16",
        "lr": "0.2",
        "epochs": "3",
    }
    with pytest.raises(ConfigError) as caught:
        parse_sets(["bs"])
    assert caught.value.one_line() == (
        "--set 'bs' is not key=value (write e.g. --set bs=16 --set lr=0.16)"
    )


def test_a_run_id_without_salt_is_the_utc_time_and_a_24_bit_hash_of_it(monkeypatch) -> None:
    import time
    import zlib

    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    tail = zlib.crc32(at.isoformat().encode()) & 0xFFFFFF
    assert new_run_id(at) == f"20260304-050607-{tail:06x}"
    # Without a time: now in UTC, whatever the machine's time zone.
    monkeypatch.setenv("TZ", "Etc/GMT-9")
    time.tzset()
    try:
        before = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
        stamp = new_run_id()[: len("20260304-0506")]
        after = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert stamp in (before, after)


def test_a_set_value_may_contain_an_equals_sign() -> None:
    assert parse_sets(["data=a=b"]) == {"data": "a=b"}


def test_a_set_value_with_a_control_character_is_refused_with_its_remedy() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sets(["lr=0.1", "bs=16\r"])
    assert caught.value.one_line() == (
        "--set 'bs=16\\r' holds a control character (write it on one line)"
    )


def test_one_rank_renders_as_local_rank_0_and_no_master_source_as_nothing() -> None:
    plan = build_plan(_job("1x1"), workload_hash="h", visible_devices_var="CUDA_VISIBLE_DEVICES")
    lines = plan.render().splitlines()
    assert "  devices:   local rank 0 on device(s) 0 (default: the first 1)" in lines
    assert "rendezvous static, master 10.0.0.1:29600 (node 0 (n1)'s address), world size 1" in lines
    bare = replace(plan, master_source="").render().splitlines()
    assert "rendezvous static, master 10.0.0.1:29600, world size 1" in bare


def test_refusals_of_bad_hparams_and_precisions_carry_their_remedy() -> None:
    from workload.faster_rcnn.errors import WorkloadError
    from workload.faster_rcnn.hparams import parse_value

    with pytest.raises(WorkloadError) as workload:
        parse_value("batch_size", "sixteen")
    with pytest.raises(ConfigError) as caught:
        _job("1x1", sets={"batch_size": "sixteen"})
    assert workload.value.remedy
    assert (caught.value.message, caught.value.remedy) == (
        workload.value.message,
        workload.value.remedy,
    )
    with pytest.raises(ConfigError) as bad:
        build_plan(_job("1x1", precision="fp8"), workload_hash="h")
    assert bad.value.one_line() == "precision 'fp8' is not known (use one of fp32, amp, fp16)"


def test_set_values_are_checked_against_the_workloads_ranges_and_precision_is_no_set() -> None:
    with pytest.raises(ConfigError) as caught:
        _job("1x1", sets={"lr": "0"})
    assert caught.value.one_line() == "lr=0.0 must be positive (use e.g. lr=0.02)"
    with pytest.raises(ConfigError) as caught:
        _job("1x1", sets={"min_size": "900", "max_size": "800"})
    assert caught.value.one_line().startswith("min_size=900 is larger than max_size=800 (")
    with pytest.raises(ConfigError) as caught:
        _job("1x1", sets={"precision": "amp"})
    assert caught.value.one_line() == (
        "--set precision=amp: precision is not a hyper-parameter to --set (set it with "
        "--precision (a campaign file: precisions = [...]))"
    )


def test_the_job_records_who_submitted_it() -> None:
    assert _job("1x1").submitted_by == ""
    assert _job("1x1", submitted_by="alice@lab").submitted_by == "alice@lab"


def test_preflight_line_without_ib_ends_at_disk() -> None:
    text = build_plan(_job("1x1"), workload_hash="h").render()
    assert (
        "  preflight: connect; probe python, torch, accelerators, dataset, weights, disk\n" in text
    )
