"""The container wrapper of a node's command (golden text) and cleanup by label (pure logic)."""

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.errors import ImageError
from orchestrator.images.containers import (
    CONTAINER_PYTHON,
    Mount,
    container_argv,
    container_name,
    list_containers_argv,
    node_wrapper,
    parse_container_list,
    remove_run_containers,
)
from orchestrator.images.profiles import load_profile
from orchestrator.images.runtime_choice import choose_runtime
from orchestrator.specs import NodeSpec
from tests.support.golden import check_golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "images"
RUN_ID = "20261128-120000-abcdef"
TORCHRUN = [
    CONTAINER_PYTHON,
    "-m",
    "torch.distributed.run",
    "--nnodes=2",
    "--node-rank=1",
    "-m",
    "workload.faster_rcnn",
]


def assert_golden(text: str, name: str) -> None:
    check_golden(GOLDEN / name, text)


IB_NODE = NodeSpec("n1", "10.0.0.2", ib_hcas=("mlx5_0", "mlx5_1"))


def _argv(vendor, **kw):
    """A node with InfiniBand (the cluster names its HCAs): every option of the profile."""
    runtime = choose_runtime(load_profile(vendor).runtime, IB_NODE, {"/dev/infiniband": True})
    return container_argv(
        runtime.options,
        f"orchestrator/{vendor}:0123456789abcdef",
        RUN_ID,
        1,
        TORCHRUN,
        {"MASTER_ADDR": "10.0.0.1", "NCCL_IB_HCA": "mlx5_0,mlx5_1", "NOTE": "two words; $HOME"},
        [
            Mount("/raid/dataset/coco2017", read_only=True),
            Mount("/var/tmp/orchestrator/runs/" + RUN_ID),
        ],
        **kw,
    )


@pytest.mark.parametrize("vendor", ["metax-c500", "nvidia", "cpu"])
def test_container_command_matches_golden(vendor):
    argv = _argv(
        vendor, docker_host="unix:///run/orch-test/docker1.sock" if vendor == "cpu" else None
    )
    # One argv item per line, then the shell line exactly as a node receives it.
    assert_golden("\n".join(argv) + "\n\n" + shlex.join(argv) + "\n", f"container-{vendor}.txt")


def test_metax_container_has_devices_group_env_and_ulimits():
    argv = _argv("metax-c500")
    text = " ".join(argv)
    for part in [
        "--device /dev/dri",
        "--device /dev/mxcd",
        "--device /dev/infiniband",
        "--group-add video",
        "--network host",
        "--ipc host",
        "--ulimit memlock=-1",
        "--ulimit stack=67108864",
        "--init",
        "-e METAX_USE_TF32=1",
        "--mount type=bind,source=/raid/dataset/coco2017,target=/raid/dataset/coco2017,readonly",
        f"--name orch-{RUN_ID}-n1",
        f"--label orchestrator.run_id={RUN_ID}",
        "--label orchestrator.node_rank=1",
    ]:
        assert part in text
    assert "--gpus" not in argv and "-d" not in argv
    image_at = argv.index("orchestrator/metax-c500:0123456789abcdef")
    assert argv[image_at + 1 :] == TORCHRUN


def test_plan_env_overrides_the_vendor_env():
    argv = container_argv(
        load_profile("metax-c500"), "img", "r1", 0, ["true"], {"METAX_USE_TF32": "0"}
    )
    assert "METAX_USE_TF32=0" in argv and "METAX_USE_TF32=1" not in argv


def test_bad_inputs_are_refused():
    with pytest.raises(ImageError, match="empty"):
        container_argv(load_profile("cpu"), "img", "r1", 0, [])
    with pytest.raises(ImageError, match="variable name"):
        container_argv(load_profile("cpu"), "img", "r1", 0, ["true"], {"BAD-NAME": "1"})


def test_container_names_are_valid_docker_names():
    assert container_name("20261128-120000-abcdef", 3) == "orch-20261128-120000-abcdef-n3"
    assert container_name("my run/1:x", 0) == "orch-my-run-1-x-n0"


@dataclass
class _Result:
    exit_code: int
    stdout: str = ""
    stderr: str = ""


class _FakeNode:
    """Answers `docker ps` with a fixed listing and records what is removed."""

    def __init__(self, listing: str, rm_result: _Result | None = None):
        self.listing = listing
        self.rm_result = rm_result or _Result(0)
        self.calls: list[list[str]] = []

    def run(self, argv, **kwargs):
        self.calls.append(list(argv))
        return _Result(0, self.listing) if "ps" in argv else self.rm_result


LISTING = (
    f"abc123\t{RUN_ID}\torch-{RUN_ID}-n0\trunning\ndef456\t{RUN_ID}\torch-{RUN_ID}-n1\texited\n"
)


def test_cleanup_lists_by_label_and_removes_what_it_found():
    node = _FakeNode(LISTING)
    removed = remove_run_containers(node, RUN_ID, "unix:///x.sock")
    assert [c.container_id for c in removed] == ["abc123", "def456"]
    assert node.calls[0] == list_containers_argv(RUN_ID, "unix:///x.sock")
    assert f"label=orchestrator.run_id={RUN_ID}" in node.calls[0]
    assert node.calls[1] == ["docker", "-H", "unix:///x.sock", "rm", "-f", "-v", "abc123", "def456"]


def test_cleanup_of_nothing_runs_no_rm_and_a_vanished_container_is_fine():
    node = _FakeNode("")
    assert remove_run_containers(node, RUN_ID) == []
    assert len(node.calls) == 1
    gone = _FakeNode(LISTING, _Result(1, "", "Error: No such container: abc123"))
    assert len(remove_run_containers(gone, RUN_ID)) == 2
    broken = _FakeNode(LISTING, _Result(1, "", "Cannot connect to the Docker daemon"))
    with pytest.raises(ImageError, match="Cannot connect"):
        remove_run_containers(broken, RUN_ID)


def test_leftovers_of_any_run_are_listed_by_label_key():
    assert "label=orchestrator.run_id" in list_containers_argv(None)
    assert [c.run_id for c in parse_container_list(LISTING + "garbage line\n")] == [RUN_ID, RUN_ID]


@dataclass(frozen=True)
class _NodePlan:
    node: NodeSpec
    node_rank: int
    run_dir: str
    env: tuple
    torchrun_argv: tuple


def test_node_wrapper_mounts_paths_at_the_same_place_and_uses_the_image_python():
    wrap = node_wrapper(
        load_profile("cpu"),
        "orchestrator/cpu:0123456789abcdef",
        RUN_ID,
        data_dir="./data/coco-synth",
        backbone_weights="/w/resnet50.pth",
    )
    np_ = _NodePlan(
        NodeSpec("n1", "10.0.0.2", docker_host="unix:///n1.sock"),
        1,
        f"/tmp/o/runs/{RUN_ID}",
        (("A", "1"),),
        ("/usr/bin/python3", "-m", "x"),
    )
    argv = list(wrap(np_))
    assert argv[:3] == ["docker", "-H", "unix:///n1.sock"]
    data = f"/tmp/o/runs/{RUN_ID}/data/coco-synth"
    assert f"type=bind,source={data},target={data},readonly" in argv
    assert "type=bind,source=/w/resnet50.pth,target=/w/resnet50.pth,readonly" in argv
    run_dir = f"/tmp/o/runs/{RUN_ID}"
    assert argv[argv.index(f"type=bind,source={run_dir},target={run_dir}") - 1] == "--mount"
    assert argv[argv.index("-w") + 1] == f"/tmp/o/runs/{RUN_ID}"
    assert argv[-3:] == [CONTAINER_PYTHON, "-m", "x"]
    assert "A=1" in argv
