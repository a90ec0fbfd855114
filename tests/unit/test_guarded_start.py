"""The node's start command (backends/ssh/guard.py GUARDED_SCRIPT): the guard is forked into a
session of its own before the workload is exec'd in the same command, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from orchestrator.backends.ssh.guard import GUARDED_SCRIPT
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


def test_the_guard_starts_in_its_own_session_then_the_workload_is_execd(tmp_path: Path) -> None:
    run_id = f"guarded-{os.getpid()}-{time.monotonic_ns()}"
    guard = join(["env", f"ORCHESTRATOR_RUN_ID={run_id}", "ORCHESTRATOR_ROLE=guard", "sleep", "30"])
    workload = ["sh", "-c", 'echo "$$" > workload.pid; exec sleep 30']
    env = {**os.environ, "ORCHESTRATOR_RUN_ID": run_id}
    argv = ["sh", "-c", GUARDED_SCRIPT, "guarded", guard, str(tmp_path / "guard.log"), *workload]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_run_processes(run_id)) < 2:
            time.sleep(0.05)
        found = _run_processes(run_id)
        roles = sorted(env.get("ORCHESTRATOR_ROLE", "workload") for env in found.values())
        # exactly the two: no shell of the guard's start stays behind looking like the workload
        assert roles == ["guard", "workload"], found
        (guard_pid,) = [p for p, e in found.items() if e.get("ORCHESTRATOR_ROLE") == "guard"]
        (workload_pid,) = [p for p, e in found.items() if "ORCHESTRATOR_ROLE" not in e]
        assert workload_pid == proc.pid  # exec'd: the spawned process is the workload
        assert os.getsid(guard_pid) == guard_pid != os.getsid(proc.pid)  # a session of its own
        assert int((tmp_path / "workload.pid").read_text()) == proc.pid
        assert (tmp_path / "guard.log").exists()
    finally:
        for pid in _run_processes(run_id):
            os.kill(pid, signal.SIGKILL)
        proc.wait(10)


def test_a_guard_log_that_is_a_link_starts_neither(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "guard.log").symlink_to(tmp_path / "elsewhere")
    argv = ["sh", "-c", GUARDED_SCRIPT, "guarded", "touch guard-ran", str(tmp_path / "guard.log")]
    argv += ["touch", "workload-ran"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 126
    assert "guard.log is a symbolic link" in proc.stderr
    time.sleep(0.2)
    assert not (tmp_path / "guard-ran").exists() and not (tmp_path / "workload-ran").exists()
