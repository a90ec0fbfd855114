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
