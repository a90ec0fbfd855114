"""Commands, jobs and files: the same tests against a real sshd node and the local transport."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import NodeError
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport import (
    CommandFailed,
    CommandTimedOut,
    RemoteProcess,
    Transport,
    connect,
    kill_process_group,
)
from tests.support.sshd_fixtures import SshdCluster, alive, group_members

NASTY = "a b 'c' \"d\" $(touch {tmp}/pwned) ;rm -rf x `touch {tmp}/pwned2` \\n $HOME"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.sshd)])
def node_and_settings(
    request: pytest.FixtureRequest, sshd_nodes: Callable[[int], SshdCluster]
) -> tuple[NodeSpec, SshSettings]:
    if request.param == "local":
        return NodeSpec(name="localhost", address="local"), SshSettings()
    cluster = sshd_nodes(3)
    return cluster.nodes[0], cluster.ssh


def kill_leftovers(pgids: list[int]) -> None:
    """Whatever a failed test left running (the processes are local either way)."""
    for pgid in pgids:
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def transport(node_and_settings: tuple[NodeSpec, SshSettings]) -> Iterator[Transport]:
    node, settings = node_and_settings
    spawned: list[int] = []
    with connect(node, settings) as opened:
        spawn = opened.spawn

        def spawn_and_record(*args: Any, **kwargs: Any) -> RemoteProcess:
            job = spawn(*args, **kwargs)
            spawned.append(job.pgid)
            return job

        opened.spawn = spawn_and_record  # type: ignore[method-assign]
        yield opened
    kill_leftovers(spawned)


def test_run_returns_exit_code_stdout_and_stderr(transport: Transport) -> None:
    result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.node == transport.name and result.argv[0] == "sh" and result.duration_s > 0


def test_nasty_argument_arrives_verbatim_and_executes_nothing(
    transport: Transport, tmp_path: Path
) -> None:
    nasty = NASTY.format(tmp=tmp_path)
    workdir = tmp_path / "dir with 'quotes' and $(x)"
    workdir.mkdir()
    (workdir / "x").write_text("still here")
    result = transport.run(
        ["printf", "%s\n", nasty, "--", ";", "&&"],
        env={"NASTY": nasty},
        cwd=str(workdir),
    )
    assert result.stdout == f"{nasty}\n--\n;\n&&\n"
    assert transport.run(["printenv", "NASTY"], env={"NASTY": nasty}).stdout == nasty + "\n"
    assert transport.run(["pwd"], cwd=str(workdir)).stdout == f"{workdir}\n"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert (workdir / "x").read_text() == "still here"


def test_program_names_are_not_shell_words(transport: Transport, tmp_path: Path) -> None:
    # An argv[0] that looks like an assignment or a reserved word is a program name.
    assert transport.run(["A=B"], check=False).exit_code == 127
    assert transport.run(["if"], check=False).exit_code == 127
    # echo is /bin/echo, not the shell's builtin that would interpret backslashes.
    assert transport.run(["echo", "a\\nb"]).stdout == "a\\nb\n"


def test_check_raises_command_failed_with_exit_code_and_stderr_tail(transport: Transport) -> None:
    with pytest.raises(CommandFailed) as caught:
        transport.run(["sh", "-c", "echo first >&2; echo 'disk is full' >&2; exit 4"])
    error = caught.value
    assert error.result.exit_code == 4
    assert "exited with 4" in error.failures[transport.name]
    assert "disk is full" in error.one_line() and transport.name in error.one_line()


def test_missing_directory_and_program_fail_like_a_shell(
    transport: Transport, tmp_path: Path
) -> None:
    missing = transport.run(["true"], cwd=str(tmp_path / "nope"), check=False)
    assert missing.exit_code != 0 and "nope" in missing.stderr
    assert transport.run(["no-such-program-xyz"], check=False).exit_code == 127


def test_timeout_kills_the_command_and_its_children(transport: Transport, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        transport.run(["sh", "-c", f"sleep 60 & echo $! > '{pid_file}'; wait"], timeout=3)
    assert time.monotonic() - started < 30  # at the 3 s timeout, not after the 60 s sleep
    assert transport.name in caught.value.one_line() and "3s" in caught.value.one_line()
    child = int(pid_file.read_text())
    assert wait_until(lambda: not alive(child), 5), "the timed-out command's child survived"


def test_interrupted_run_kills_the_command(transport: Transport, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def interrupt_once_started() -> None:
        wait_until(pid_file.exists, 30)
        os.kill(os.getpid(), signal.SIGALRM)  # handled by the main thread, inside run()

    previous = signal.signal(signal.SIGALRM, interrupt)
    threading.Thread(target=interrupt_once_started, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C while waiting for the command
            transport.run(["sh", "-c", f"sleep 60 & echo $! > '{pid_file}'; wait"], timeout=60)
    finally:
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    assert wait_until(lambda: not alive(child), 5), "the interrupted command's child survived"


def test_stdin_bytes_and_streamed_chunks(transport: Transport) -> None:
    assert transport.run(["cat"], stdin=b"hello\n").stdout == "hello\n"
    assert transport.run(["cat"]).stdout == ""  # no stdin: EOF at once, no hang
    chunks = [bytes([i]) * 65536 for i in range(40)]  # 2.5 MiB, more than a channel window
    seen: list[int] = []
    result = transport.run_streaming_stdin(["sha256sum"], iter(chunks), progress=seen.append)
    import hashlib

    assert result.stdout.split()[0] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert result.stdin_bytes == 40 * 65536 and seen[-1] == 40 * 65536 and len(seen) == 40


def test_failing_stdin_source_is_reported(transport: Transport) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise OSError(5, "docker save died")

    with pytest.raises(NodeError) as caught:
        transport.run_streaming_stdin(["cat"], broken(), timeout=20)
    assert "docker save died" in caught.value.one_line()


ECHO_UPPER = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\nprint('bye', file=sys.stderr)\nsys.exit(3)"


def test_a_pipe_is_a_conversation_with_a_command(transport: Transport) -> None:
    pipe = transport.open_pipe(["python3", "-c", ECHO_UPPER], write_timeout=10)
    try:
        pipe.write(b"hello\nwor")
        assert wait_until(lambda: pipe.poll() is None)
        got = pipe.lines(10)
        assert got == ["HELLO"]  # an answer while it runs; the half line waits
        pipe.write(b"ld\n")
        assert pipe.lines(10) == ["WORLD"]
        pipe.close_stdin()
        assert pipe.wait(10) == 3
        assert pipe.stderr_text() == "bye\n"  # without the pid marker of the SSH command line
    finally:
        pipe.close()


def test_a_pipe_that_is_killed_leaves_nothing_and_writes_to_it_fail(
    transport: Transport, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; cat"
    pipe = transport.open_pipe(["sh", "-c", script], write_timeout=5)
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    child = int(pidfile.read_text())
    assert wait_until(lambda: pipe.pgid > 1)  # over SSH: known once the pid marker came
    pipe.kill_tree(1.0)
    assert wait_until(lambda: not alive(child)) and not group_members(pipe.pgid)
    with pytest.raises(NodeError) as err:
        for _ in range(50):  # the first writes may still land in a buffer
            pipe.write(b"x" * 65536)
            time.sleep(0.05)
    assert transport.name in err.value.failures


def test_spawn_preserves_exit_code_and_streams_lines_into_the_log(
    transport: Transport, tmp_path: Path
) -> None:
    log = tmp_path / "job log.txt"
    log.write_text("earlier run\n")
    job = transport.spawn(
        [
            "sh",
            "-c",
            'echo "one $1"; sleep 0.2; echo two >&2; printf tail-no-newline; exit 7',
            "sh",
            "x y",
        ],
        env={"GREETING": "hi"},
        cwd=str(tmp_path),
        log_path=str(log),
    )
    assert job.pgid > 1
    assert job.wait(20) == 7
    lines: list[str] = []
    while chunk := job.lines(0.1):
        lines += chunk
    assert lines == ["one x y", "two", "tail-no-newline"]
    assert log.read_text() == "earlier run\none x y\ntwo\ntail-no-newline"


def test_spawn_runs_in_its_cwd_with_its_env(transport: Transport, tmp_path: Path) -> None:
    job = transport.spawn(
        ["sh", "-c", 'echo "$GREETING from $(pwd)"'],
        env={"GREETING": "hello there"},
        cwd=str(tmp_path),
        log_path=str(tmp_path / "log"),
    )
    assert job.wait(20) == 0
    assert job.lines(1) == [f"hello there from {tmp_path}"]


def test_spawn_with_an_unwritable_log_fails_at_once(transport: Transport, tmp_path: Path) -> None:
    with pytest.raises(NodeError) as caught:
        transport.spawn(["true"], log_path=str(tmp_path / "no such dir" / "log"))
    assert transport.name in caught.value.one_line()
    assert "no such dir" in caught.value.one_line()


def test_kill_tree_leaves_nothing_of_the_group(transport: Transport, tmp_path: Path) -> None:
    job = transport.spawn(
        ["sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait"], log_path=str(tmp_path / "log")
    )
    assert job.lines(10) == ["started"]
    assert len(group_members(job.pgid)) >= 3  # sh and both sleeps (and the wrappers)
    job.kill_tree(grace_s=5)
    assert group_members(job.pgid) == []
    assert job.poll() == 128 + signal.SIGTERM


def test_kill_tree_escalates_to_sigkill(transport: Transport, tmp_path: Path) -> None:
    job = transport.spawn(
        ["sh", "-c", "trap '' TERM; echo stubborn; while :; do sleep 0.1; done"],
        log_path=str(tmp_path / "log"),
    )
    assert job.lines(10) == ["stubborn"]
    started = time.monotonic()
    job.kill_tree(grace_s=0.5)
    assert group_members(job.pgid) == []
    assert 0.5 <= time.monotonic() - started < 10


def test_last_words_of_a_terminated_job_are_kept(transport: Transport, tmp_path: Path) -> None:
    log = tmp_path / "log"
    job = transport.spawn(
        [
            "sh",
            "-c",
            "trap 'echo cleaning up; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
        ],
        log_path=str(log),
    )
    assert job.lines(10) == ["ready"]
    job.kill_tree(grace_s=5)
    assert job.poll() == 3
    assert job.lines(1)[-1] == "cleaning up"  # after the shell's own "Terminated", if any
    assert log.read_text().startswith("ready\n") and log.read_text().endswith("cleaning up\n")


def test_signal_reaches_the_job(transport: Transport, tmp_path: Path) -> None:
    # SIGINT matters: a job started in the background of a shell would ignore it.
    job = transport.spawn(
        ["sh", "-c", "trap 'echo got INT; exit 5' INT; echo ready; while :; do sleep 0.1; done"],
        log_path=str(tmp_path / "log"),
    )
    assert job.lines(10) == ["ready"]
    job.signal(signal.SIGINT)
    assert job.wait(10) == 5
    assert job.lines(1) == ["got INT"]


def test_job_survives_the_controller_and_is_killed_by_pgid(
    node_and_settings: tuple[NodeSpec, SshSettings], tmp_path: Path
) -> None:
    node, settings = node_and_settings
    log = tmp_path / "log"
    with connect(node, settings) as first:
        job = first.spawn(
            ["sh", "-c", "while :; do echo tick; sleep 0.05; done"], log_path=str(log)
        )
        assert job.lines(10)
    try:
        size = log.stat().st_size
        assert wait_until(lambda: log.stat().st_size > size, 5), (
            "the job stopped with the connection"
        )
        assert group_members(job.pgid)
        with connect(node, settings) as second:
            kill_process_group(second, job.pgid, grace_s=2)
        assert group_members(job.pgid) == []
    finally:
        kill_leftovers([job.pgid])


def test_files_round_trip(transport: Transport, tmp_path: Path) -> None:
    remote = tmp_path / "remote dir" / "nested 'q'"
    transport.makedirs(str(remote))
    transport.makedirs(str(remote))  # exists already: fine
    assert transport.exists(str(remote)) and not transport.exists(str(remote / "none"))

    transport.write_text(str(remote / "config.json"), '{"a": "é"}\n', mode=0o600)
    assert transport.read_text(str(remote / "config.json")) == '{"a": "é"}\n'
    assert (remote / "config.json").stat().st_mode & 0o777 == 0o600

    source = tmp_path / "run.sh"
    source.write_bytes(b"#!/bin/sh\necho run\n" + bytes(range(256)) * 1000)
    source.chmod(0o750)
    transport.put_file(source, str(remote / "run.sh"))
    assert (remote / "run.sh").read_bytes() == source.read_bytes()
    assert (remote / "run.sh").stat().st_mode & 0o777 == 0o750
    back = tmp_path / "back.sh"
    transport.get_file(str(remote / "run.sh"), back)
    assert back.read_bytes() == source.read_bytes()
    leftovers = [p.name for p in remote.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary names were renamed away


def test_get_tree_copies_a_run_folder(transport: Transport, tmp_path: Path) -> None:
    run_dir = tmp_path / "run 1"
    (run_dir / "ranks").mkdir(parents=True)
    (run_dir / "ranks" / "rank-00000.json").write_text('{"rank": 0}')
    (run_dir / "ranks" / "rank-00001.json").write_text('{"rank": 1}')
    (run_dir / "stdout.log").write_text("log\n")
    (run_dir / "link.log").symlink_to(run_dir / "stdout.log")  # links are never followed
    (run_dir / "loop").symlink_to(run_dir)
    target = tmp_path / "collected"
    skipped = transport.get_tree(str(run_dir), target)
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["ranks/rank-00000.json", "ranks/rank-00001.json", "stdout.log"]
    assert (target / "ranks" / "rank-00001.json").read_text() == '{"rank": 1}'
    assert sorted(s.split(" (")[0] for s in skipped) == ["link.log", "loop"]


def test_remove_tree_removes_a_run_folder_and_never_follows_a_link(
    transport: Transport, tmp_path: Path
) -> None:
    kept = tmp_path / "kept"
    (kept / "inside").mkdir(parents=True)
    (kept / "inside" / "results.json").write_text("{}")
    run_dir = tmp_path / "run 1"
    (run_dir / "ranks" / "deeper").mkdir(parents=True)
    (run_dir / "ranks" / "rank-00000.json").write_text('{"rank": 0}')
    (run_dir / "ranks" / "deeper" / "x.log").write_text("x")
    (run_dir / "node.log").write_text("log\n")
    (run_dir / "to-kept").symlink_to(kept)  # a link to a folder: removed, not entered
    (run_dir / "to-file").symlink_to(kept / "inside" / "results.json")
    transport.remove_tree(str(run_dir))
    assert not os.path.lexists(run_dir)
    assert (kept / "inside" / "results.json").read_text() == "{}"
    transport.remove_tree(str(run_dir))  # already gone: no error, as rm -rf
    single = tmp_path / "single.log"
    single.write_text("s")
    transport.remove_tree(str(single))
    assert not single.exists()


def test_a_link_to_a_secret_in_the_run_folder_is_not_collected(
    transport: Transport, tmp_path: Path
) -> None:
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    ranks = tmp_path / "run" / "ranks"
    ranks.mkdir(parents=True)
    (ranks / "rank-00000.json").write_text("{}")
    (ranks / "x").symlink_to(secret)
    (ranks / "keys").symlink_to(tmp_path)  # a link to a folder holding the secret
    target = tmp_path / "collected"
    skipped = transport.get_tree(str(ranks), target)
    assert sorted(p.name for p in target.rglob("*")) == ["rank-00000.json"]
    assert all(b"PRIVATE" not in p.read_bytes() for p in target.rglob("*") if p.is_file())
    assert sorted(s.split(" (")[0] for s in skipped) == ["keys", "x"]
    assert "not copied" in " ".join(skipped)
    with pytest.raises(NodeError, match="not a regular file"):
        transport.get_file(str(ranks / "x"), tmp_path / "x.log")
    assert not (tmp_path / "x.log").exists()


def test_file_errors_name_the_node_and_the_path(transport: Transport, tmp_path: Path) -> None:
    with pytest.raises(NodeError) as caught:
        transport.read_text(str(tmp_path / "missing.json"))
    assert transport.name in caught.value.one_line()
    assert "missing.json" in caught.value.one_line()
    with pytest.raises(NodeError):
        transport.get_tree(str(tmp_path / "missing"), tmp_path / "out")
