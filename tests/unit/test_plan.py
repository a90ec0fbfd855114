import os
import shlex
from pathlib import Path

import pytest

from orchestrator.config import load_cluster
from orchestrator.errors import ConfigError
from orchestrator.plan import build_plan, make_job, parse_sets
from orchestrator.specs import Topology, pick_nodes
from tests.support.golden import check_golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


def _plan(topology="2x8", sets=("bs=16", "lr=0.16"), precision="amp"):
    cluster = load_cluster(str(REPO / "examples" / "cluster.toml"))
    topo = Topology.parse(topology)
    job = make_job(
        cluster,
        topo,
        pick_nodes(cluster, topo),
        run_id="20261128-120000-abcdef",
        precision=precision,
        sets=parse_sets(list(sets)),
        timeout_s=7200,
        no_progress_timeout_s=600,
    )
    return build_plan(
        job,
        workload_hash="0123456789ab",
        vendor_env={"METAX_USE_TF32": "1"},
        visible_devices_var="CUDA_VISIBLE_DEVICES",
    )


def test_dry_run_plan_matches_golden_text():
    text = _plan().render().replace(os.path.expanduser("~"), "~")
    check_golden(GOLDEN / "plan-2x8.txt", text)


def test_every_node_gets_its_rank_and_the_same_master():
    plan = _plan()
    assert [n.node_rank for n in plan.nodes] == [0, 1]
    for np_ in plan.nodes:
        argv = np_.argv
        assert f"--node-rank={np_.node_rank}" in argv
        assert "--master-addr=c500-01.lab.example" in argv and "--nnodes=2" in argv
        assert "--nproc-per-node=8" in argv
        env = np_.env_dict
        assert env["NCCL_IB_HCA"] == "mlx5_0,mlx5_1" and env["NCCL_SOCKET_IFNAME"] == "ib0"
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" and env["METAX_USE_TF32"] == "1"
        assert ["--set", "batch_size=16"] == list(
            argv[argv.index("batch_size=16") - 1 : argv.index("batch_size=16") + 1]
        )


def test_hostile_dataset_path_is_quoted_and_round_trips():
    from dataclasses import replace

    cluster = load_cluster(str(REPO / "examples" / "cluster.toml"))
    evil = '/data/my coco\'s "set" $(touch /tmp/pwned) ;rm -rf x'
    cluster = replace(cluster, case=replace(cluster.case, data_dir=evil))
    topo = Topology.parse("1x8")
    job = make_job(cluster, topo, pick_nodes(cluster, topo), run_id="r1")
    np_ = build_plan(job, workload_hash="h").nodes[0]
    line = np_.shell_line()
    # The shell sees exactly our argv back: nothing is interpreted.
    words = shlex.split(line)
    assert evil in words
    assert words[words.index("--data-dir") + 1] == evil


@pytest.mark.parametrize("bad", ["bs", "=3", "bs=", "  "])
def test_bad_set_options(bad):
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets([bad])


def test_unknown_precision_refused():
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        _plan(precision="fp8")


def test_unknown_or_malformed_hyper_parameters_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="log_every: unknown hyper-parameter"):
        _plan(sets=("log_every=1",))
    with pytest.raises(ConfigError, match="not a valid int"):
        _plan(sets=("bs=sixteen",))


def test_an_accelerator_profile_sends_nccl_lines_to_a_file_per_process_and_cpu_does_not():
    plan = _plan()
    env = plan.nodes[1].env_dict
    run_dir = plan.nodes[1].run_dir
    assert (env["NCCL_DEBUG"], env["NCCL_DEBUG_SUBSYS"]) == ("INFO", "INIT,NET")
    assert env["NCCL_DEBUG_FILE"] == f"{run_dir}/nccl/%h.%p.log"  # beside node.log, not in it
    job = plan.job
    mine = build_plan(
        job, workload_hash="h", vendor_env={"NCCL_DEBUG": "WARN"}, visible_devices_var="X"
    )
    assert mine.nodes[0].env_dict["NCCL_DEBUG"] == "WARN"  # the vendor profile's setting wins
    cpu = build_plan(job, workload_hash="h", vendor_env={}, visible_devices_var=None)
    assert not [k for k in cpu.nodes[0].env_dict if k.startswith("NCCL_DEBUG")]
