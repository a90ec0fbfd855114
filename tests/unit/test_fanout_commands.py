"""Pure parts of the transport: command lines, markers, jump host specs, known_hosts matching."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from orchestrator.errors import ConfigError, NodeError
from orchestrator.transport import shell
from orchestrator.transport.base import check_argv, check_env, stderr_tail
from orchestrator.transport.connection import parse_jump_host
from orchestrator.transport.hostkeys import KnownHosts, host_key_name

# Two real ed25519 public keys (from ssh-keygen), for known_hosts parsing.
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINUPj6x7KHcYEGqYxvNu1hFbVe1amgPcvExcYbAxi+hb"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINQ7P95L0TfId8EuqquVERnhm/NetJYAXFqTnq2MFiHJ"


def sh(line: str) -> str:
    """What a POSIX shell makes of a command line (the real shell, not a model of it)."""
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=False).stdout


def test_command_line_quotes_every_word() -> None:
    nasty = "a b 'c' \"d\" $(echo pwned) ;echo x `echo y` $HOME \\n"
    line = shell.command_line(["printf", "%s|", nasty, ""], env={"V": nasty}, cwd="/")
    assert line.startswith("cd -- / || exit; (exec 'env' ")
    assert sh(line) == f"{nasty}||"
    assert sh(shell.command_line(["printenv", "V"], env={"V": nasty})) == nasty + "\n"


def test_program_name_is_always_quoted() -> None:
    assert shell.command_line(["if"]) == "(exec 'if'); exit $?"
    assert shell.command_line(["A=B", "x"]) == "(exec 'A=B' x); exit $?"
    assert shell.command_line(["it's"]) == "(exec 'it'\"'\"'s'); exit $?"


def test_env_cannot_hide_a_program_name() -> None:
    with pytest.raises(ValueError):
        shell.with_env(["A=B"], {"X": "1"})
    with pytest.raises(ValueError):
        shell.with_env(["-i"], {"X": "1"})
    assert shell.with_env(["true"], None) == ["true"]


def test_env_names_are_checked() -> None:
    assert check_env({"NCCL_IB_HCA": "mlx5_0"}) == {"NCCL_IB_HCA": "mlx5_0"}
    for bad in ("1X", "A-B", "A B", "A=B", ""):
        with pytest.raises(ConfigError):
            check_env({bad: "x"})


def test_argv_must_be_a_list_of_strings() -> None:
    with pytest.raises(TypeError):
        check_argv("ls -l")
    with pytest.raises(TypeError):
        check_argv([])
    with pytest.raises(ValueError):
        check_argv(["a\0b"])
    assert check_argv(["ls", "-l"]) == ("ls", "-l")


def test_run_line_reports_the_pid_first() -> None:
    result = subprocess.run(
        ["sh", "-c", shell.run_line(["sh", "-c", "echo $$"])], capture_output=True, text=True
    )
    first = result.stderr.splitlines()[0]
    assert shell.parse_marker(first, shell.PID_MARKER) is not None
    assert shell.parse_marker("orchestrator-pid x1", shell.PID_MARKER) is None
    assert shell.parse_marker("hello", shell.PID_MARKER) is None


def test_spawn_line_runs_in_a_new_session_and_reports_group_and_exit(tmp_path: Path) -> None:
    log = tmp_path / "a log"
    line = shell.spawn_line(["sh", "-c", "echo hi; exit 7"], {"X": "1"}, str(tmp_path), str(log))
    # As under sshd, the login shell leads its own session (sshd calls setsid for it).
    result = subprocess.run(
        ["sh", "-c", line], capture_output=True, text=True, timeout=20, start_new_session=True
    )
    control = result.stderr.splitlines()
    assert shell.parse_marker(control[0], shell.PGID_MARKER) is not None
    assert control[-1] == "orchestrator-exit 7"
    assert result.stdout == "hi\n" and log.read_text() == "hi\n"


def test_stderr_tail_keeps_the_last_lines_on_one_line() -> None:
    text = "\n".join(f"line {i}" for i in range(10)) + "\n\n"
    assert stderr_tail(text) == "line 5 | line 6 | line 7 | line 8 | line 9"
    assert len(stderr_tail("x" * 5000)) <= 403


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bastion", (None, "bastion", 22)),
        ("admin@bastion.lab:2200", ("admin", "bastion.lab", 2200)),
        ("[fe80::1]:2222", (None, "fe80::1", 2222)),
        ("u@[::1]", ("u", "::1", 22)),
    ],
)
def test_jump_host_specs(spec: str, expected: tuple[str | None, str, int]) -> None:
    assert parse_jump_host(spec) == expected


@pytest.mark.parametrize("spec", ["", "host:port", "host:0", "@:22"])
def test_bad_jump_host_specs(spec: str) -> None:
    with pytest.raises(NodeError) as caught:
        parse_jump_host(spec)
    assert "fix jump_host in the cluster file" in caught.value.one_line()


def test_known_hosts_names_and_matching(tmp_path: Path) -> None:
    assert host_key_name("10.0.0.5", 22) == "10.0.0.5"
    assert host_key_name("10.0.0.5", 2222) == "[10.0.0.5]:2222"
    hashed = paramiko.HostKeys.hash_host("[10.0.0.7]:2222")
    path = tmp_path / "known_hosts"
    path.write_text(
        "# comment\n\n"
        f"node1,10.0.0.5 {KEY_A}\n"
        f"{hashed} {KEY_B}\n"
        f"*.lab,!bad.lab {KEY_A}\n"
        f"@cert-authority *.ca {KEY_B}\n"
        f"@revoked * {KEY_B}\n"
        "garbage line\n"
        "broken ssh-ed25519 !!notbase64!!\n"
    )
    known = KnownHosts([path], path)
    key_a = paramiko.PKey.from_type_string(*_type_and_blob(KEY_A))
    key_b = paramiko.PKey.from_type_string(*_type_and_blob(KEY_B))
    assert known.lookup("10.0.0.5") == [key_a]
    assert known.lookup("[10.0.0.7]:2222") == [key_b]
    assert known.lookup("n1.lab") == [key_a]
    assert known.lookup("bad.lab") == []
    assert known.lookup("10.0.0.6") == []
    assert known.is_revoked(key_b) and not known.is_revoked(key_a)


def test_accepted_keys_are_appended_in_openssh_form(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "known_hosts"
    known = KnownHosts([path], path)
    key = paramiko.PKey.from_type_string(*_type_and_blob(KEY_A))
    known.append("[127.0.0.2]:2222", key)
    assert path.read_text() == f"[127.0.0.2]:2222 {KEY_A}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert KnownHosts([path], path).lookup("[127.0.0.2]:2222") == [key]


def _type_and_blob(line: str) -> tuple[str, bytes]:
    import base64

    key_type, b64 = line.split()
    return key_type, base64.b64decode(b64)
