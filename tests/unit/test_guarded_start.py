"""The node's start command (backends/ssh/guard.py GUARDED_SCRIPT): the guard is forked into a
session of its own before the workload is exec'd in the same command, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.backends.ssh.guard import _MINE, GUARDED_SCRIPT
from orchestrator.transport.shell import join


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _run_processes(run_id: str) -> dict[int, dict[str, str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = _environ(int(entry.name))
        except OSError:  # gone, or not ours
            continue
        if env.get("ORCHESTRATOR_RUN_ID") == run_id:
            found[int(entry.name)] = env
    return found


def _wait_for(what, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.02)
    return what()


def test_the_guard_starts_first_and_everything_of_the_run_ends_before_the_exit_code(
    tmp_path: Path,
) -> None:
    """The guard in a session of its own, the workload as the wrapper's child; when the
    workload ends, the guard and the sampler (started apart, as the submitter does) are
    stopped before the wrapper exits with the workload's code."""
    run_id = f"guarded-{os.getpid()}-{time.monotonic_ns()}"
    marks = {"ORCHESTRATOR_RUN_ID": run_id, "ORCHESTRATOR_NODE": "n1"}
    guard = join(["env", *(f"{k}={v}" for k, v in marks.items()), "ORCHESTRATOR_ROLE=guard"])
    guard += " sleep 60"
    sampler = subprocess.Popen(
        ["sleep", "60"],
        env={**os.environ, **marks, "ORCHESTRATOR_ROLE": "monitor"},
        start_new_session=True,
    )
    # the workload waits for the go file, then exits 3 (a failed rank: its code must come back)
    wait_then_fail = "import os, time\nwhile not os.path.exists('go'): time.sleep(0.02)\nexit(3)"
    workload = [sys.executable, "-c", wait_then_fail]
    argv = ["sh", "-c", GUARDED_SCRIPT, "guarded", guard, str(tmp_path / "guard.log")]
    argv += [str(tmp_path / "node.log.exit"), *workload]
    proc = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, **marks}, start_new_session=True)
    try:
        found = _wait_for(lambda: len(_run_processes(run_id)) >= 4 and _run_processes(run_id))
        roles = sorted(e.get("ORCHESTRATOR_ROLE", "-") for e in found.values())
        # wrapper and workload (no role), the guard, the sampler: no other shell of the start
        assert roles == ["-", "-", "guard", "monitor"], found
        (guard_pid,) = [p for p, e in found.items() if e.get("ORCHESTRATOR_ROLE") == "guard"]
        assert os.getsid(guard_pid) == guard_pid != os.getsid(proc.pid)  # a session of its own
        assert (tmp_path / "guard.log").exists()

        (tmp_path / "go").write_text("")
        assert proc.wait(15) == 3
        assert _run_processes(run_id) == {}  # gone before the code came back
        assert sampler.wait(5) == -signal.SIGTERM
        assert (tmp_path / "node.log.exit").read_text() == "3\n"
    finally:
        for pid in _run_processes(run_id):
            os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        sampler.wait(10)


def test_the_guards_view_of_the_run_leaves_out_its_own_subshells(tmp_path: Path) -> None:
    """A shell whose environment carries the run id (the guard) forks subshells that show it
    too; with own_session set, `mine` lists only the run's processes in other sessions."""
    run_id = f"mine-{os.getpid()}-{time.monotonic_ns()}"
    marks = {"ORCHESTRATOR_RUN_ID": run_id, "ORCHESTRATOR_NODE": "n1"}
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, **marks}, start_new_session=True)
    script = (
        "rid=$ORCHESTRATOR_RUN_ID; node=$ORCHESTRATOR_NODE; own_session=1\n"
        "unset ORCHESTRATOR_RUN_ID ORCHESTRATOR_NODE\n" + _MINE + 'echo "found $(mine)"\n'
    )
    try:
        _wait_for(lambda: other.pid in _run_processes(run_id))
        out = subprocess.run(
            ["setsid", "-w", "sh", "-c", script],
            env={**os.environ, **marks},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout.split() == ["found", str(other.pid)], out
    finally:
        other.kill()
        other.wait(10)


def test_a_guard_log_that_is_a_link_starts_neither(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "guard.log").symlink_to(tmp_path / "elsewhere")
    argv = ["sh", "-c", GUARDED_SCRIPT, "guarded", "touch guard-ran", str(tmp_path / "guard.log")]
    argv.append(str(tmp_path / "node.log.exit"))
    argv += ["touch", "workload-ran"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 126
    assert "guard.log is a symbolic link" in proc.stderr
    time.sleep(0.2)
    assert not (tmp_path / "guard-ran").exists() and not (tmp_path / "workload-ran").exists()


def test_on_a_local_node_the_spawns_waiting_shell_is_left_and_the_code_comes_back(
    tmp_path: Path,
) -> None:
    """A `local` node's spawn puts the run's marks on its own waiting shell too: the end of
    the node's run must not stop the shell that reports the workload's exit code."""
    from orchestrator.specs import NodeSpec
    from orchestrator.transport.local import LocalTransport

    run_id = f"local-{os.getpid()}-{time.monotonic_ns()}"
    marks = {"ORCHESTRATOR_RUN_ID": run_id, "ORCHESTRATOR_NODE": "n1"}
    guard = join(["env", *(f"{k}={v}" for k, v in marks.items()), "ORCHESTRATOR_ROLE=guard"])
    argv = ["sh", "-c", GUARDED_SCRIPT, "guarded", guard + " sleep 60", str(tmp_path / "g.log")]
    argv.append(str(tmp_path / "n.log.exit"))
    argv += [sys.executable, "-c", "exit(5)"]
    transport = LocalTransport(NodeSpec("n1", "local"))
    started = time.monotonic()
    proc = transport.spawn(argv, env=marks, cwd=str(tmp_path), log_path=str(tmp_path / "n.log"))
    try:
        assert proc.wait(20) == 5
        assert time.monotonic() - started < 4  # no 5 s wait for a shell that ignores TERM
        assert _run_processes(run_id) == {}
    finally:
        for pid in _run_processes(run_id):
            os.kill(pid, signal.SIGKILL)


def test_the_exit_code_is_on_the_node_while_the_rest_of_the_run_is_being_stopped(
    tmp_path: Path,
) -> None:
    """An adopter reads the node's exit file (STATE_SCRIPT): it holds the workload's code from
    the moment the workload ends, also while the end of the node's run still waits for a
    sampler that ignores TERM (5 s, then KILL), so the node never looks like its workload
    vanished without a code."""
    run_id = f"exitfile-{os.getpid()}-{time.monotonic_ns()}"
    marks = {"ORCHESTRATOR_RUN_ID": run_id, "ORCHESTRATOR_NODE": "n1"}
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        env={**os.environ, **marks, "ORCHESTRATOR_ROLE": "monitor"},
        start_new_session=True,
    )
    exit_file = tmp_path / "node.log.exit"
    argv = ["sh", "-c", GUARDED_SCRIPT, "guarded", "true", str(tmp_path / "g.log"), str(exit_file)]
    argv += [sys.executable, "-c", "exit(0)"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, **marks}, start_new_session=True)
    try:
        assert _wait_for(exit_file.exists, 4)
        assert proc.poll() is None  # still stopping the sampler ...
        assert exit_file.read_text() == "0\n"  # ... and the code is there already
        assert proc.wait(15) == 0
        assert stubborn.wait(5) == -signal.SIGKILL
    finally:
        for pid in _run_processes(run_id):
            os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        stubborn.wait(10)
