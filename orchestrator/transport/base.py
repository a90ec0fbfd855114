"""The transport interface: run commands, start process groups and move files on one node.

Two implementations: `SshTransport` (paramiko, one connection per node) and `LocalTransport`
(subprocess, for the `local` node). Both give the same semantics, which the integration tests
check on both:

- a command is an argv list, never a shell string: argv[0] is executed as a program (not a shell
  builtin); use ``["sh", "-c", script, "sh", arg...]`` when shell logic is really wanted;
- exit codes follow the shell convention: a command killed by signal N exits with 128 + N;
- relative paths are relative to the login directory over SSH and to the controller's current
  directory locally (prefer absolute paths);
- every operation that fails raises a `NodeError` whose `failures` names this node.
"""

from __future__ import annotations

import math
import re
import signal as signals
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from orchestrator.errors import ConfigError, NodeError
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport import shell

#: What `run(stdin=...)` accepts: all bytes at once, or chunks streamed as they come.
Stdin = Union[bytes, Iterable[bytes], None]
#: Called with the number of stdin bytes sent so far.
ProgressCallback = Callable[[int], None]

UNREACHABLE_REMEDY = "check that the node is up, its address and port, and that sshd runs there"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STDERR_TAIL_LINES = 5
_STDERR_TAIL_CHARS = 400


@dataclass(frozen=True)
class CommandResult:
    """What one command did on one node."""

    node: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    stdin_bytes: int = 0  # bytes fed to the command's stdin

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def describe(argv: Sequence[str], limit: int = 120) -> str:
    """A command as a user would type it, shortened for messages."""
    text = shell.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stderr_tail(stderr: str) -> str:
    """The last few non-empty lines of stderr, on one line, for error messages."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    tail = " | ".join(lines[-_STDERR_TAIL_LINES:])
    return tail if len(tail) <= _STDERR_TAIL_CHARS else "..." + tail[-_STDERR_TAIL_CHARS:]


class CommandFailed(NodeError):
    """A command exited non-zero and the caller asked for check=True; `.result` has it all."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        tail = stderr_tail(result.stderr)
        why = f"`{describe(result.argv)}` exited with {result.exit_code}"
        super().__init__("command failed", {result.node: f"{why}: {tail}" if tail else why})


class CommandTimedOut(NodeError):
    """A command ran past its timeout; it was killed on the node."""

    def __init__(self, node: str, argv: Sequence[str], timeout_s: float) -> None:
        self.argv = tuple(argv)
        self.timeout_s = timeout_s
        super().__init__(
            "command timed out",
            {node: f"`{describe(argv)}` did not finish within {timeout_s:g}s and was killed"},
            "raise the timeout if the command is legitimately slow, else check the node",
        )


class NodeUnreachable(NodeError):
    """The node could not be connected to, or the connection was lost."""


def node_error(node: str, doing: str, exc: BaseException, remedy: str | None = None) -> NodeError:
    """A NodeError for an unexpected OS or protocol error while doing something on a node."""
    strerror = exc.strerror if isinstance(exc, OSError) else None
    detail = strerror or str(exc) or type(exc).__name__
    return NodeError(f"{doing} failed", {node: f"{doing}: {detail}"}, remedy)


@contextmanager
def file_errors(node: str, doing: str) -> Iterator[None]:
    """Turns an OSError (SFTP's included) into a NodeError naming the node and the operation."""
    try:
        yield
    except OSError as exc:
        raise node_error(node, doing, exc) from exc


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Environment variables as a plain dict, names checked (they reach a command line)."""
    if not env:
        return {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(
                f"environment variable name {name!r} is invalid",
                "use letters, digits and underscores, not starting with a digit",
            )
        if not isinstance(value, str):
            raise ConfigError(f"environment variable {name} is not a string", "pass str values")
    return dict(env)


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of strings, not one string")
    words = tuple(argv)
    if not words or not all(isinstance(w, str) for w in words):
        raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
    if any("\0" in w for w in words):
        raise ValueError("argv words cannot contain NUL bytes")
    return words


class RemoteProcess(ABC):
    """A process group started by `Transport.spawn`; its output streams back line by line."""

    node: str
    pgid: int  # the process group id on the node (== pid of the session leader)

    @abstractmethod
    def lines(self, timeout: float) -> list[str]:
        """New complete output lines (stdout and stderr merged, no newline), waiting up to
        `timeout` seconds for at least one. Empty when nothing came or the process ended."""

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code once the process has finished and all its output was read, else None.
        Raises NodeUnreachable when the connection was lost before the end was seen."""

    @abstractmethod
    def wait(self, timeout: float | None) -> int | None:
        """Wait up to `timeout` seconds (None: forever) for the end; the exit code or None."""

    @abstractmethod
    def signal(self, sig: int = signals.SIGTERM) -> None:
        """Send `sig` to the whole process group on the node (no error if it is gone)."""

    @abstractmethod
    def kill_tree(self, grace_s: float = 5.0) -> None:
        """SIGTERM the group, wait up to `grace_s`, SIGKILL what remains; returns when the
        group is gone (NodeError if it cannot be killed)."""


class Pipe(RemoteProcess):
    """A command whose stdin the controller writes and whose stdout it reads line by line while
    it runs (`Transport.open_pipe`): a conversation with a program on the node. Unlike `spawn`,
    the command depends on the controller: closing the pipe closes its stdin."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin. NodeError when the command or the connection is
        gone, or (over SSH) when it took nothing for the pipe's write timeout."""

    @abstractmethod
    def close_stdin(self) -> None:
        """Send EOF (no error if the command is gone)."""

    @abstractmethod
    def stderr_text(self) -> str:
        """What the command wrote to stderr so far."""

    @abstractmethod
    def close(self) -> None:
        """Release the pipe (idempotent); a command still running sees EOF on stdin."""


class Transport(ABC):
    """Commands, process groups and files on one node. Thread-safe: fan-outs and watchers may
    use one transport from several threads at once."""

    node: NodeSpec
    settings: SshSettings
    #: SHA256 fingerprint of a host key accepted and recorded while connecting (SSH only,
    #: with accept_new_host_keys), else None. The run stores it.
    accepted_new_host_key: str | None = None

    @property
    def name(self) -> str:
        return self.node.name

    # -- commands ---------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: Stdin = None,
        check: bool = True,
    ) -> CommandResult:
        """Run argv on the node and wait for it.

        `env` is added to the node's environment (as ``env K=V ... argv`` over SSH); `cwd` is
        the working directory; `timeout` (default: the settings' command_timeout_s; math.inf
        for none) kills the command's process group and raises CommandTimedOut; `stdin` is
        bytes or an iterable of byte chunks streamed as they come (stdin is closed otherwise);
        `check` raises CommandFailed on a non-zero exit.
        """
        return self.run_streaming_stdin(
            argv, stdin, env=env, cwd=cwd, timeout=timeout, check=check, progress=None
        )

    def run_streaming_stdin(
        self,
        argv: Sequence[str],
        chunks: Stdin,
        *,
        progress: ProgressCallback | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        """`run` with stdin fed from `chunks` (e.g. `docker save` into `docker load`), calling
        `progress(bytes_sent_so_far)` after each chunk; the result's stdin_bytes has the total."""
        words = check_argv(argv)
        environment = check_env(env)
        limit = self._timeout(timeout)
        if isinstance(chunks, (bytearray, memoryview)):
            chunks = bytes(chunks)
        result = self._execute(words, environment, cwd, limit, chunks, progress)
        if check and result.exit_code != 0:
            raise CommandFailed(result)
        return result

    @abstractmethod
    def _execute(
        self,
        argv: tuple[str, ...],
        env: dict[str, str],
        cwd: str | None,
        timeout: float,
        stdin: Stdin,
        progress: ProgressCallback | None,
    ) -> CommandResult:
        """Run one command (validated arguments); never checks the exit code."""

    @abstractmethod
    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str,
    ) -> RemoteProcess:
        """Start argv in a new session and process group on the node and return at once.

        stdout and stderr are appended to `log_path` on the node (its directory must exist)
        and streamed back line by line; stdin is /dev/null. The process does not depend on
        the controller: if the connection dies it keeps running (and keeps logging) until
        `kill_process_group(transport, pgid)` ends it.
        """

    @abstractmethod
    def open_pipe(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        write_timeout: float | None = None,
    ) -> Pipe:
        """Start argv with its stdin and stdout connected to the returned Pipe and return at
        once. `write_timeout` (default: the settings' command_timeout_s) bounds each write
        over SSH; locally a write waits for the command."""

    def signal_process_group(self, pgid: int, sig: int = signals.SIGTERM) -> None:
        """Send `sig` to process group `pgid` on the node; no error if the group is gone."""
        self.run(
            ["sh", "-c", shell.SIGNAL_GROUP_SCRIPT, "sh", str(int(sig)), str(_pgid(pgid))],
            timeout=self._timeout(None),
            check=True,
        )

    def kill_process_group(self, pgid: int, grace_s: float = 5.0) -> None:
        """SIGTERM group `pgid`, wait up to grace_s, SIGKILL the rest, wait until it is gone.

        One command on the node does all of it, so tearing down N nodes costs one round trip.
        """
        steps = max(0, math.ceil(grace_s / shell.KILL_STEP_S))
        self.run(
            ["sh", "-c", shell.KILL_GROUP_SCRIPT, "sh", str(_pgid(pgid)), str(steps)],
            timeout=grace_s + 15.0,
            check=True,
        )

    # -- files --------------------------------------------------------------------------------

    @abstractmethod
    def put_file(self, local: Path, remote: str) -> None:
        """Copy a local file to the node (atomically: a temporary name, then a rename); the
        file mode is copied too."""

    @abstractmethod
    def get_file(self, remote: str, local: Path) -> None:
        """Copy a regular file from the node to `local` (written atomically); a symbolic link
        or another kind of file is refused (a NodeError), not followed."""

    @abstractmethod
    def get_tree(self, remote_dir: str, local_dir: Path) -> list[str]:
        """Copy a directory from the node recursively into `local_dir` (created if needed):
        directories and regular files only. Symbolic links (never followed), other kinds of
        files and names that are not safe path parts (orchestrator/pathnames.py) are left
        out; returns them, each as "path (why)"."""

    @abstractmethod
    def read_text(self, remote: str) -> str:
        """The content of a UTF-8 text file on the node."""

    @abstractmethod
    def write_text(self, remote: str, text: str, mode: int = 0o644) -> None:
        """Write a UTF-8 text file on the node atomically, with `mode`."""

    @abstractmethod
    def exists(self, remote: str) -> bool:
        """Whether a path exists on the node."""

    @abstractmethod
    def makedirs(self, remote: str) -> None:
        """Create a directory and its parents on the node (no error if it exists)."""

    @abstractmethod
    def remove_tree(self, remote: str) -> None:
        """Remove a path and, for a directory, everything in it, as `rm -rf` does: links are
        removed, never followed; a path that does not exist is no error."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent). Spawned process groups keep running."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _timeout(self, timeout: float | None) -> float:
        value = self.settings.command_timeout_s if timeout is None else float(timeout)
        if not value > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        return value


def kill_process_group(transport: Transport, pgid: int, grace_s: float = 5.0) -> None:
    """Kill a process group on a node by id, e.g. after the controller lost the connection to
    a spawned job and reconnected: SIGTERM, up to grace_s to exit, then SIGKILL."""
    transport.kill_process_group(pgid, grace_s)


def _pgid(pgid: int) -> int:
    value = int(pgid)
    if value <= 1:  # 0 and 1 would signal our own group or init's
        raise ValueError(f"refusing to signal process group {pgid!r}")
    return value


class StreamedProcess(RemoteProcess):
    """Shared machinery: a reader thread feeds output bytes and finally an exit code."""

    def __init__(self, transport: Transport, pgid: int) -> None:
        self.node = transport.name
        self.pgid = pgid
        self._transport = transport
        self._cond = threading.Condition()
        self._pending: list[str] = []
        self._partial = b""
        self._exit_code: int | None = None
        self._error: NodeError | None = None
        self._done = False

    # Called by the reader thread.
    def _feed(self, data: bytes) -> None:
        with self._cond:
            *complete, self._partial = (self._partial + data).split(b"\n")
            if complete:
                self._pending.extend(_decode_line(line) for line in complete)
                self._cond.notify_all()

    def _finish(self, exit_code: int | None, error: NodeError | None = None) -> None:
        with self._cond:
            if self._done:
                return
            if self._partial:
                self._pending.append(_decode_line(self._partial))
                self._partial = b""
            self._exit_code, self._error, self._done = exit_code, error, True
            self._cond.notify_all()

    # The RemoteProcess interface.
    def lines(self, timeout: float) -> list[str]:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._done, timeout)
            out, self._pending = self._pending, []
            return out

    def poll(self) -> int | None:
        with self._cond:
            if self._error is not None:
                raise self._error
            return self._exit_code if self._done else None

    def wait(self, timeout: float | None) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)
        return self.poll()

    def signal(self, sig: int = signals.SIGTERM) -> None:
        self._transport.signal_process_group(self.pgid, sig)

    def kill_tree(self, grace_s: float = 5.0) -> None:
        self._transport.kill_process_group(self.pgid, grace_s)
        # The group is gone: give the reader a moment to collect the last lines and the code.
        with self._cond:
            self._cond.wait_for(lambda: self._done, 5.0)


def _decode_line(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")
