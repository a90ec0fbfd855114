"""Naming the failed rank and its cause from a node's output (a recorded torchrun log)."""

from pathlib import Path

from orchestrator.runs.failure import diagnose

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "torchrun-diverged.log"


def _lines():
    return LOG.read_text().splitlines()


def test_the_workloads_own_message_names_rank_and_cause():
    failure = diagnose("n1", 1, _lines())
    assert failure.rank == 0 and failure.node == "n1" and failure.exit_code == 1
    assert failure.reason.startswith("rank 0 on node n1 failed (torchrun exit 1): loss is nan")


def test_without_it_the_end_of_torchruns_traceback_is_the_cause():
    lines = [ln for ln in _lines() if not ln.startswith("[faster_rcnn]")]
    failure = diagnose("n1", 1, lines)
    assert failure.rank == 0
    assert failure.reason.endswith("TrainingDiverged: loss is nan at epoch 1 iteration 8")


def test_a_rank_killed_by_a_signal_says_so():
    summary = [
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2026-11-28_12:20:03",
        "  host      : localhost",
        "  rank      : 3 (local_rank: 1)",
        "  exitcode  : -9 (pid: 8833)",
        "  error_file: <N/A>",
        "  traceback : Signal 9 (SIGKILL) received by PID 8833",
    ]
    failure = diagnose("n2", 1, summary)
    assert failure.rank == 3
    assert (
        failure.reason
        == "rank 3 on node n2 failed (torchrun exit 1): Signal 9 (SIGKILL) received by PID 8833"
    )


def test_no_summary_at_all_still_names_the_node():
    failure = diagnose("n2", 137, ["some output", "RuntimeError: connection closed by peer"])
    assert failure.rank is None and failure.node == "n2"
    assert "node n2" in failure.reason and "connection closed" in failure.reason


def test_a_failure_that_is_no_signal_waits_a_while_for_a_peer_killed_by_one() -> None:
    """A rank SIGKILLed on node2 breaks rank 0 on node1, whose error may be seen first: the
    launcher waits up to PEER_SIGNAL_WAIT_S for node2, while it still runs, before naming the
    cause; a signal, all nodes ended, a stop asked, or the wait over: no more waiting."""
    from orchestrator.backends.ssh.launch import PEER_SIGNAL_WAIT_S, may_be_a_peer

    broken = diagnose("node1", 1, ["RuntimeError: Connection closed by peer"])
    killed = diagnose(
        "node2",
        1,
        ["Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 0)"]
        + ["  exitcode  : -9 (pid: 42)", "  traceback : Signal 9 (SIGKILL) received by PID 42"],
    )
    running = {"node1": 1, "node2": None}
    assert may_be_a_peer(broken, running, 0.0, False)
    assert may_be_a_peer(broken, running, PEER_SIGNAL_WAIT_S - 0.1, False)
    assert not may_be_a_peer(broken, running, PEER_SIGNAL_WAIT_S, False)
    assert not may_be_a_peer(broken, {"node1": 1, "node2": 1}, 0.0, False)
    assert not may_be_a_peer(broken, running, 0.0, True)
    assert killed.by_signal and "Signal 9" in killed.reason
    assert not may_be_a_peer(killed, running, 0.0, False)
