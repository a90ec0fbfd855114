"""Where a hung run was stuck (orchestrator/runs/stacks.py): the collective a recorded dump
shows, the reason that names stopped ranks and the frame the others waited in, and the node
script against real processes (one registered with the workload's faulthandler, one stopped
with SIGSTOP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.runs.failure import Failure
from orchestrator.runs.stacks import (
    DUMP_STACKS_SCRIPT,
    NodeStacks,
    RankProcess,
    diagnose_hang,
    parse_dump,
    waited_in,
)

REPO = Path(__file__).resolve().parents[2]
RECORDED = (REPO / "tests" / "fixtures" / "stacks" / "rank-00000-backward.txt").read_text()
IMPORTING = """Current thread 0x00007f1ed022ab80 (most recent call first):
  File "/usr/lib/python3.8/importlib/__init__.py", line 127 in import_module
  File "/srv/workload/faster_rcnn/runner.py", line 74 in run
  File "/srv/workload/faster_rcnn/runner.py", line 101 in main
"""


def test_a_recorded_dump_waited_in_ddps_gradient_all_reduce() -> None:
    where = waited_in(RECORDED)
    assert where is not None
    assert where.collective == "all_reduce (DDP's gradients, in backward)"
    assert where.caller == "device.py:198 in backward_and_step"
    assert waited_in(IMPORTING) is None  # a workload frame, but no collective
    # a thread without the workload's frames (a loader's) is not the rank's
    assert (
        waited_in('Thread 0x1 (most recent call first):\n  File "/x/c10d.py", line 9 in barrier\n')
        is None
    )


# Rank 0 of a real two-rank gloo DDP whose other rank stopped after its first step: blocked in
# the C++ broadcast of the rebuilt bucket order, called from DDP's _pre_forward (torch 2.x)
REBUILDING_BUCKETS = """Current thread 0x00007f04fb1bdb80 (most recent call first):
  File "/venv/torch/nn/parallel/distributed.py", line 1776 in _pre_forward
  File "/venv/torch/nn/parallel/distributed.py", line 1887 in forward
  File "/venv/torch/nn/modules/module.py", line 1794 in _call_impl
  File "/venv/torch/nn/modules/module.py", line 1783 in _wrapped_call_impl
  File "/srv/workload/faster_rcnn/device.py", line 187 in forward_losses
"""


# Rank 0 of a real 2x1 run (CI) whose other rank stopped between an epoch's last backward and
# the epoch's loss sum: the all_reduce sits in the workload's collective helper (comm.py)
EPOCH_LOSS_SUM = """Current thread 0x00007f76e3048b80 (most recent call first):
  File "/venv/torch/distributed/distributed_c10d.py", line 3913 in all_reduce
  File "/venv/torch/distributed/c10d_logger.py", line 83 in wrapper
  File "/srv/workload/faster_rcnn/comm.py", line 23 in _reduce
  File "/srv/workload/faster_rcnn/comm.py", line 27 in sum
  File "/srv/workload/faster_rcnn/train.py", line 138 in train_epoch
  File "/srv/workload/faster_rcnn/session.py", line 179 in _train
"""


@pytest.mark.parametrize(
    ("stack", "collective", "caller"),
    [
        (
            REBUILDING_BUCKETS,
            "broadcast (DDP's bucket order, before forward)",
            "device.py:187 in forward_losses",
        ),
        # through the workload's helper: the line that called it, not comm.py's
        (EPOCH_LOSS_SUM, "all_reduce", "train.py:138 in train_epoch"),
    ],
    ids=["the second step's bucket rebuild", "the epoch's loss sum through comm.py"],
)
def test_a_recorded_stack_names_its_collective_and_the_workload_line_that_called_it(
    stack: str, collective: str, caller: str
) -> None:
    where = waited_in(stack)
    assert where is not None
    assert (where.collective, where.caller) == (collective, caller)


def test_the_reason_names_stopped_ranks_and_where_the_others_waited() -> None:
    nodes = [
        NodeStacks(
            "a",
            (RankProcess(0, "a", 10, "S"), RankProcess(1, "a", 11, "S")),
            {0: RECORDED, 1: RECORDED},
        ),
        NodeStacks(
            "b", (RankProcess(2, "b", 20, "T"), RankProcess(3, "b", 21, "R")), {3: IMPORTING}
        ),
    ]
    failure = diagnose_hang(Failure("no progress from rank 0 for 30s"), nodes, world_size=5)
    assert failure.reason == (
        "no progress from rank 0 for 30s; stacks (stacks/): rank 2 on node b was stopped and wrote "
        "no stack; rank 4 had no process left; ranks 0 (node a), 1 (node a) waited in all_reduce "
        "(DDP's gradients, in backward) at device.py:198 in backward_and_step; rank 3 on node b "
        "not in a collective"
    )
    quiet = diagnose_hang(Failure("x"), nodes, world_size=5, silent={4: "c"})
    assert "rank 4: node c did not answer" in quiet.reason and "no process" not in quiet.reason
    # no process found anywhere (every rank already ended): the reason stays as it was
    assert diagnose_hang(Failure("x"), [NodeStacks("a", (), {})], 2).reason == "x"


def test_the_script_output_is_read_per_rank() -> None:
    out = "rank 0 pid 10 state S\nrank 1 pid 11 state T\n=== rank-00000.txt\n" + RECORDED + "\n"
    parsed = parse_dump("a", out)
    assert parsed.processes == (RankProcess(0, "a", 10, "S"), RankProcess(1, "a", 11, "T"))
    assert list(parsed.stacks) == [0] and parsed.stacks[0].strip() == RECORDED.strip()


def _rank(tmp_path: Path, rank: int, group: int) -> subprocess.Popen[bytes]:
    """A process like a rank: the run's id, RANK and GROUP_RANK in its environment, the
    workload's SIGUSR1 handler registered, waiting in a function called barrier."""
    code = (
        "import sys, time\n"
        "from workload.faster_rcnn import stacks\n"
        f"stacks.register({str(tmp_path / 'ranks')!r}, {rank})\n"
        "def barrier():\n    time.sleep(60)\n"
        "print('ready', flush=True)\nbarrier()\n"
    )
    env = {**os.environ, "ORCHESTRATOR_RUN_ID": "hang-unit", "RANK": str(rank)}
    env.update(GROUP_RANK=str(group), PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_the_node_script_signals_living_ranks_and_reports_stopped_ones(tmp_path: Path) -> None:
    living, stopped, elsewhere = _rank(tmp_path, 0, 0), _rank(tmp_path, 1, 0), _rank(tmp_path, 2, 1)
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        time.sleep(0.2)
        folder = str(tmp_path / "stacks")
        done = subprocess.run(
            ["sh", "-c", DUMP_STACKS_SCRIPT, "sh", "hang-unit", folder, "30", "0"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        parsed = parse_dump("a", done.stdout)
    finally:
        for proc in (living, stopped, elsewhere):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    states = {p.rank: (p.pid, p.state) for p in parsed.processes}
    assert states == {0: (living.pid, "S"), 1: (stopped.pid, "T")}  # not node 1's rank 2
    assert list(parsed.stacks) == [0]
    assert "most recent call first" in parsed.stacks[0] and "in barrier" in parsed.stacks[0]
    assert (tmp_path / "stacks" / "rank-00001.txt").read_text() == ""  # registered, never signalled
    assert not (tmp_path / "stacks" / "rank-00002.txt").read_text()


@pytest.mark.parametrize("empty", [True, False])
def test_a_rank_removes_its_stack_file_at_the_end_only_when_empty(
    tmp_path: Path, empty: bool
) -> None:
    from workload.faster_rcnn import stacks

    path = stacks.register(str(tmp_path / "ranks"), 7)
    assert path == str(tmp_path / "stacks" / "rank-00007.txt")
    if not empty:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
    stacks.unregister(path)
    assert os.path.exists(path) is not empty
    if not empty:
        assert "test_a_rank_removes_its_stack_file" in Path(path).read_text()


def test_the_dump_runs_on_the_host_or_inside_the_nodes_container() -> None:
    from orchestrator.backends.ssh.hang import dump_argv
    from orchestrator.config import load_cluster
    from orchestrator.images.containers import container_name
    from orchestrator.plan import build_plan, make_job
    from orchestrator.specs import Topology, pick_nodes

    cluster = load_cluster(str(REPO / "examples" / "cluster.toml"))
    topo = Topology.parse("2x8")
    job = make_job(cluster, topo, pick_nodes(cluster, topo), run_id="r-1")
    host = build_plan(job, workload_hash="h")
    second = host.nodes[1]
    argv = dump_argv(host, second)
    assert argv[:3] == ["sh", "-c", DUMP_STACKS_SCRIPT]
    assert argv[3:] == ["sh", "r-1", f"{second.run_dir}/stacks", "30", "1"]
    docker = build_plan(job, workload_hash="h", wrap=lambda np_: ("docker", "run"))
    inside = dump_argv(docker, docker.nodes[1])
    assert inside[:3] == ["docker", "exec", container_name("r-1", 1)]
    assert inside[3:] == argv
