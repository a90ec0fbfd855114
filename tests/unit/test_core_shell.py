"""Command lines for a node's login shell (orchestrator/transport/shell.py), pure functions only:
quoting, env prefixes, cd, the pid report, the spawn wrapper's arguments and control lines.
The wrapper scripts' text itself is exercised by the integration tests, not pinned here."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from orchestrator.transport import shell
from orchestrator.transport.shell import (
    EXIT_MARKER,
    PGID_MARKER,
    PID_MARKER,
    command_line,
    join,
    local_exec_argv,
    local_spawn_argv,
    parse_marker,
    quote_command_name,
    run_line,
    spawn_line,
    with_env,
)


def test_join_quotes_every_word_that_needs_it() -> None:
    assert join(["echo", "a b", "it's", "$HOME"]) == "echo 'a b' 'it'\"'\"'s' '$HOME'"
    assert join([]) == ""


def test_the_command_name_is_always_single_quoted() -> None:
    assert quote_command_name("ls") == "'ls'"
    assert quote_command_name("it's") == "'it'\"'\"'s'"
    assert shlex.split(quote_command_name("a'b c")) == ["a'b c"]


def test_with_env_prefixes_env_and_refuses_names_env_would_misread() -> None:
    assert with_env(["ls", "-l"], None) == ["ls", "-l"]
    assert with_env(["ls"], {}) == ["ls"]
    assert with_env(["ls", "-l"], {"A": "1", "B": "x y"}) == ["env", "A=1", "B=x y", "ls", "-l"]
    for bad in ("X=1", "-i"):
        with pytest.raises(ValueError) as caught:
            with_env([bad], {"A": "1"})
        assert str(caught.value) == (
            f"command {bad!r} cannot be run with env variables; use its path"
        )
    assert with_env(["X=1"], None) == ["X=1"]  # no env: nothing for env(1) to misread


def test_command_line_is_cd_then_exec_in_a_subshell_with_every_word_quoted() -> None:
    assert command_line(["echo", "a b"]) == "(exec 'echo' 'a b'); exit $?"
    assert command_line(["ls"], {"K": "v w"}, "/my dir") == (
        "cd -- '/my dir' || exit; (exec 'env' 'K=v w' ls); exit $?"
    )
    assert command_line(["ls"], None, "") == "(exec 'ls'); exit $?"


def test_run_line_reports_the_pid_first() -> None:
    assert run_line(["true"]) == f"echo \"{PID_MARKER}$$\" >&2; (exec 'true'); exit $?"
    assert run_line(["ls"], {"A": "1"}, "/d").endswith(
        "; cd -- /d || exit; (exec 'env' A=1 ls); exit $?"
    )


def test_command_lines_round_trip_through_a_real_shell(tmp_path) -> None:
    line = command_line(["printf", "%s|", "a b", "$HOME", "it's"], {"V": "1 2"}, str(tmp_path))
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out == "a b|$HOME|it's|"
    done = subprocess.run(
        ["sh", "-c", run_line(["sh", "-c", "exit 7"])], capture_output=True, text=True
    )
    assert done.returncode == 7
    pid = parse_marker(done.stderr.splitlines()[0], PID_MARKER)
    assert pid is not None and pid > 1


def test_spawn_line_runs_the_wrapper_in_a_new_session_with_log_dir_and_command() -> None:
    words = shlex.split(spawn_line(["python3", "x.py"], {"A": "1"}, "/run dir", "/run dir/log"))
    assert words[:5] == ["exec", "setsid", "-w", "sh", "-c"]
    assert words[5] == shell.SPAWN_SCRIPT
    assert words[6:] == ["sh", "/run dir/log", "/run dir", "env", "A=1", "python3", "x.py"]
    bare = shlex.split(spawn_line(["true"], None, None, "/l"))
    assert bare[6:] == ["sh", "/l", "", "true"]


def test_local_argv_pass_the_dir_as_a_positional_parameter() -> None:
    assert local_exec_argv(["ls", "-l"], "/d") == [
        "sh",
        "-c",
        shell.LOCAL_EXEC_SCRIPT,
        "sh",
        "/d",
        "ls",
        "-l",
    ]
    assert local_exec_argv(["ls"], None)[4] == ""


def test_local_spawn_argv_passes_log_and_dir_before_the_command() -> None:
    assert local_spawn_argv(["ls", "-l"], "/d", "/l") == [
        "sh",
        "-c",
        shell.LOCAL_SPAWN_SCRIPT,
        "sh",
        "/l",
        "/d",
        "ls",
        "-l",
    ]
    assert local_spawn_argv(["ls"], None, "/l")[5] == ""


@pytest.mark.parametrize(
    ("line", "marker", "value"),
    [
        ("orchestrator-pid 123", PID_MARKER, 123),
        ("orchestrator-pid 123  ", PID_MARKER, 123),
        ("orchestrator-pgid 7", PGID_MARKER, 7),
        ("orchestrator-exit 0", EXIT_MARKER, 0),
        ("orchestrator-pid x1", PID_MARKER, None),
        ("orchestrator-pid ", PID_MARKER, None),
        ("orchestrator-pid -1", PID_MARKER, None),
        ("error: orchestrator-pid 5", PID_MARKER, None),
        ("orchestrator-exit 3", PID_MARKER, None),
    ],
)
def test_control_lines_carry_a_number_after_their_marker(line, marker, value) -> None:
    assert parse_marker(line, marker) == value
