"""SSH transport (paramiko): one connection per node, reused for every command, job and file.

Commands run on exec channels (see `shell` for the command lines), jobs through the spawn
wrapper, files over one SFTP session. Connections are opened by `connection`.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import paramiko

from orchestrator.errors import NodeError
from orchestrator.pathnames import NOT_REGULAR, is_safe_name, left_out
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport import shell
from orchestrator.transport.base import (
    UNREACHABLE_REMEDY,
    CommandResult,
    CommandTimedOut,
    NodeUnreachable,
    Pipe,
    ProgressCallback,
    RemoteProcess,
    Stdin,
    StreamedProcess,
    Transport,
    check_argv,
    check_env,
    node_error,
)


class Closable(Protocol):
    """What a transport needs of the jump host it owns (transport/connection.JumpHost)."""

    def close(self) -> None: ...


_READ_SIZE = 1 << 16
_KILL_TIMEOUT_S = 10.0
_DRAIN_S = 5.0  # after a job's exit line, how long its last output may take to arrive


class SshTransport(Transport):
    """Commands over exec channels and files over SFTP, all on one SSH connection."""

    def __init__(
        self,
        node: NodeSpec,
        settings: SshSettings,
        client: paramiko.SSHClient,
        accepted_new_host_key: str | None = None,
        owned_jump: Closable | None = None,  # a jump host opened for this node alone
    ) -> None:
        self.node = node
        self.settings = settings
        self.accepted_new_host_key = accepted_new_host_key
        self._client = client
        self._owned_jump = owned_jump
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        self._closed = False

    @property
    def paramiko_client(self) -> paramiko.SSHClient:
        """The node's connection, for protocols beyond commands and files (e.g. the Docker API
        over `docker system dial-stdio`). Owned by this transport: do not close it."""
        return self._client

    @property
    def is_active(self) -> bool:
        transport = self._client.get_transport()
        return not self._closed and transport is not None and transport.is_active()

    def _lost(self, doing: str, exc: BaseException | None = None) -> NodeUnreachable:
        detail = f" ({exc})" if exc is not None and str(exc) else ""
        return NodeUnreachable(
            f"{doing} failed",
            {
                self.name: f"the SSH connection to {self.node.address}:{self.node.port} was lost{detail}"
            },
            UNREACHABLE_REMEDY,
        )

    def _channel(self, command: str, doing: str, timeout: float) -> paramiko.Channel:
        transport = self._client.get_transport()
        if self._closed or transport is None or not transport.is_active():
            raise self._lost(doing)
        chan = None
        try:
            chan = transport.open_session(timeout=min(timeout, self.settings.command_timeout_s))
            chan.exec_command(command)
        except paramiko.ChannelException as exc:
            if chan is not None:
                chan.close()
            raise NodeError(
                f"{doing} failed",
                {self.name: f"the node refused a new SSH session ({exc.text})"},
                "raise MaxSessions in the node's sshd_config",
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if chan is not None:
                chan.close()
            raise self._lost(doing, exc) from None
        return chan

    # -- commands ---------------------------------------------------------------------------

    def _execute(
        self,
        argv: tuple[str, ...],
        env: dict[str, str],
        cwd: str | None,
        timeout: float,
        stdin: Stdin,
        progress: ProgressCallback | None,
    ) -> CommandResult:
        started = time.monotonic()
        deadline = started + timeout
        doing = f"running `{argv[0]}`"
        chan = self._channel(shell.run_line(argv, env, cwd), doing, timeout)
        output = _Output()
        feeder = None
        try:
            if stdin is None:
                chan.shutdown_write()
            else:
                feeder = _ChannelFeeder(chan, stdin, progress)
                feeder.start()
            if not self._collect(chan, deadline, output) or not _await_exit(chan, deadline):
                self._kill_pid(self._pid_of(chan, output))
                raise CommandTimedOut(self.name, argv, timeout)
            if not self.is_active and chan.exit_status == -1:
                raise self._lost(doing)
        except NodeError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(doing, exc) from None
        except BaseException:  # Ctrl-C or a bug: leave nothing running on the node
            self._kill_pid(self._pid_of(chan, output))
            raise
        finally:
            chan.close()
        sent = 0
        if feeder is not None:
            feeder.join(_KILL_TIMEOUT_S)
            if feeder.error is not None and not feeder.remote_closed:
                raise node_error(self.name, f"feeding stdin to `{argv[0]}`", feeder.error)
            sent = feeder.sent
        code = chan.exit_status
        return CommandResult(
            node=self.name,
            argv=argv,
            exit_code=255 if code < 0 else code,  # no status: as ssh(1) reports it
            stdout=output.out.decode("utf-8", errors="replace"),
            stderr=output.err.decode("utf-8", errors="replace"),
            duration_s=time.monotonic() - started,
            stdin_bytes=sent,
        )

    def _collect(self, chan: paramiko.Channel, deadline: float, output: _Output) -> bool:
        """Read stdout and stderr until EOF (False past the deadline), noting the pid."""
        while True:
            while chan.recv_ready():
                output.out += chan.recv(_READ_SIZE)
            while chan.recv_stderr_ready():
                output.err += chan.recv_stderr(_READ_SIZE)
            if output.pid is None and b"\n" in output.err and len(output.err) < _READ_SIZE:
                output.err, output.pid = _strip_pid_line(output.err)
            if chan.eof_received or chan.closed:
                if not chan.recv_ready() and not chan.recv_stderr_ready():
                    return True
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([chan], [], [], min(remaining, 1.0))

    def _pid_of(self, chan: paramiko.Channel, output: _Output) -> int | None:
        """The command's pid; if it has not arrived yet (a slow node), wait a little for it."""
        deadline = time.monotonic() + _KILL_TIMEOUT_S
        while output.pid is None and time.monotonic() < deadline and not chan.closed:
            if chan.recv_stderr_ready():
                output.err += chan.recv_stderr(_READ_SIZE)
                if b"\n" in output.err and len(output.err) < _READ_SIZE:
                    output.err, output.pid = _strip_pid_line(output.err)
            elif chan.eof_received:
                break
            else:
                select.select([chan], [], [], 0.1)
                while chan.recv_ready():
                    chan.recv(_READ_SIZE)  # make room: the node may block writing stdout
        return output.pid

    def _kill_pid(self, pid: int | None) -> None:
        """Kill a command's process group on the node (best effort): it timed out, or the
        controller was interrupted while waiting for it."""
        if pid is None or pid <= 1:
            return
        try:
            chan = self._channel(
                shell.join(["sh", "-c", shell.KILL_PID_SCRIPT, "sh", str(pid)]),
                "killing a timed-out command",
                _KILL_TIMEOUT_S,
            )
            chan.status_event.wait(_KILL_TIMEOUT_S)
            chan.close()
        except NodeError:
            pass

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str,
    ) -> RemoteProcess:
        words = check_argv(argv)
        line = shell.spawn_line(words, check_env(env), cwd, log_path)
        limit = self.settings.command_timeout_s
        chan = self._channel(line, f"starting `{words[0]}`", limit)
        chan.shutdown_write()
        return SshProcess(self, chan, words, log_path, limit)

    def open_pipe(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        write_timeout: float | None = None,
    ) -> Pipe:
        words = check_argv(argv)
        limit = self._timeout(write_timeout)
        chan = self._channel(
            shell.run_line(words, check_env(env), cwd), f"starting `{words[0]}`", limit
        )
        return SshPipe(self, chan, words, limit)

    # -- files (SFTP, one session per connection, used by one thread at a time) ---------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
                # Every SFTP read waits at most this long: a hung node cannot hang us.
                self._sftp.get_channel().settimeout(self.settings.command_timeout_s)  # type: ignore[union-attr]
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise NodeError(
                    "opening SFTP failed",
                    {self.name: f"the node refused the SFTP subsystem ({exc})"},
                    "enable `Subsystem sftp` in the node's sshd_config",
                ) from None
        return self._sftp

    @contextmanager
    def _sftp_session(self, doing: str) -> Iterator[paramiko.SFTPClient]:
        """The SFTP session, for one thread at a time; errors become NodeErrors naming the
        node and `doing`. A session that timed out or broke is dropped (reopened next time)."""
        with self._sftp_lock:
            try:
                yield self._sftp_client()
            except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
                if not self.is_active:
                    self._drop_sftp()
                    raise self._lost(doing, exc) from None
                if not isinstance(exc, OSError) or isinstance(exc, TimeoutError):
                    self._drop_sftp()  # the session is out of step: reopen it next time
                raise node_error(self.name, doing, exc) from exc

    def _drop_sftp(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            try:
                sftp.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass

    def put_file(self, local: Path, remote: str) -> None:
        tmp = _temp_name(remote)
        with self._sftp_session(f"copying {local} to {remote}") as sftp:
            try:
                with open(local, "rb") as source, sftp.open(tmp, "wxb") as handle:
                    handle.set_pipelined(True)
                    shutil.copyfileobj(source, handle, 1 << 20)
                sftp.chmod(tmp, stat.S_IMODE(os.stat(local).st_mode))
                sftp.posix_rename(tmp, remote)
            except BaseException:
                _remove_quietly(sftp, tmp)
                raise

    def get_file(self, remote: str, local: Path) -> None:
        with self._sftp_session(f"copying {remote} to {local}") as sftp:
            # lstat: a link is refused, not followed (SFTP has no O_NOFOLLOW)
            if not stat.S_ISREG(sftp.lstat(remote).st_mode or 0):
                raise OSError(errno.EINVAL, NOT_REGULAR, remote)
            self._get(sftp, remote, Path(local))

    @staticmethod
    def _get(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
        try:
            sftp.get(remote, str(tmp))
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get_tree(self, remote_dir: str, local_dir: Path) -> list[str]:
        with self._sftp_session(f"copying directory {remote_dir}") as sftp:
            if not stat.S_ISDIR(sftp.lstat(remote_dir).st_mode or 0):
                raise NotADirectoryError(20, "not a directory", remote_dir)
            skipped: list[str] = []
            self._get_tree(sftp, remote_dir.rstrip("/") or "/", Path(local_dir), "", skipped)
            return skipped

    def _get_tree(
        self,
        sftp: paramiko.SFTPClient,
        remote_dir: str,
        local_dir: Path,
        rel: str,
        skipped: list[str],
    ) -> None:
        local_dir.mkdir(parents=True, exist_ok=True)
        for entry in sftp.listdir_attr(remote_dir):
            name, mode = entry.filename, entry.st_mode or 0
            # The listing is the node's word: a name such as "../../x" must not become a path.
            if not is_safe_name(name) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                skipped.append(f"{rel}{name} ({left_out(name, NOT_REGULAR)})")
            elif stat.S_ISDIR(mode):
                self._get_tree(
                    sftp, f"{remote_dir}/{name}", local_dir / name, f"{rel}{name}/", skipped
                )
            else:
                self._get(sftp, f"{remote_dir}/{name}", local_dir / name)

    def read_text(self, remote: str) -> str:
        with self._sftp_session(f"reading {remote}") as sftp:
            with sftp.open(remote, "rb") as handle:
                handle.prefetch()
                return handle.read().decode("utf-8")

    def write_text(self, remote: str, text: str, mode: int = 0o644) -> None:
        tmp = _temp_name(remote)
        with self._sftp_session(f"writing {remote}") as sftp:
            try:
                with sftp.open(tmp, "wxb") as handle:
                    handle.write(text.encode("utf-8"))
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote)
            except BaseException:
                _remove_quietly(sftp, tmp)
                raise

    def exists(self, remote: str) -> bool:
        with self._sftp_session(f"checking {remote}") as sftp:
            try:
                sftp.lstat(remote)
            except FileNotFoundError:
                return False
            return True

    def makedirs(self, remote: str) -> None:
        with self._sftp_session(f"creating directory {remote}") as sftp:
            self._makedirs(sftp, remote.rstrip("/"))

    def remove_tree(self, remote: str) -> None:
        # Over the SFTP session already open: no command, so no login shell on the node.
        with self._sftp_session(f"removing {remote}") as sftp:
            try:
                mode = sftp.lstat(remote).st_mode or 0
            except FileNotFoundError:
                return
            if stat.S_ISDIR(mode):
                self._remove_dir(sftp, remote.rstrip("/") or "/")
            else:
                sftp.remove(remote)

    def _remove_dir(self, sftp: paramiko.SFTPClient, path: str) -> None:
        for entry in sftp.listdir_attr(path):
            child = f"{path}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):  # listdir_attr's modes are lstat's
                self._remove_dir(sftp, child)
            else:
                sftp.remove(child)
        sftp.rmdir(path)

    def _makedirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        if not path:
            return
        try:
            if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                return
            raise FileExistsError(17, "exists and is not a directory", path)
        except FileNotFoundError:
            pass
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        self._makedirs(sftp, parent)
        try:
            sftp.mkdir(path)
        except OSError:
            if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):  # lost a race: fine if a dir
                raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_sftp()
        self._client.close()
        if self._owned_jump is not None:
            self._owned_jump.close()


class SshProcess(StreamedProcess):
    """A spawned job: a thread reads its output lines and the wrapper's control lines."""

    def __init__(
        self,
        transport: SshTransport,
        chan: paramiko.Channel,
        argv: Sequence[str],
        log_path: str,
        timeout: float,
    ):
        self._chan = chan
        self._ssh = transport
        self._argv = tuple(argv)
        self._control = b""  # an incomplete control line
        self._startup: list[str] = []  # what the wrapper said before it reported its group
        self._pgid_known = threading.Event()
        self._reported_exit: int | None = None
        super().__init__(transport, -1)
        threading.Thread(target=self._read, name=f"spawn-{transport.name}", daemon=True).start()
        if not self._pgid_known.wait(timeout) or self.pgid < 0:
            chan.close()
            reason = self._startup_error() or f"no process group reported within {timeout:g}s"
            if log_path in reason:
                remedy = "create the log's directory first (makedirs) and check it is writable"
            else:
                remedy = "the node needs a POSIX sh, setsid -w (util-linux 2.31+) and tee -p (coreutils 8.24+)"
            raise NodeError(
                "starting a job failed",
                {self.node: f"`{self._argv[0]}` did not start: {reason}"},
                remedy,
            )

    def _startup_error(self) -> str:
        return " | ".join(line for line in self._startup[-3:] if line.strip())

    def _read(self) -> None:
        chan = self._chan
        exit_seen_at: float | None = None
        try:
            while True:
                while chan.recv_ready():
                    self._feed(chan.recv(_READ_SIZE))
                while chan.recv_stderr_ready():
                    self._control_data(chan.recv_stderr(_READ_SIZE))
                if (chan.eof_received or chan.closed) and not (
                    chan.recv_ready() or chan.recv_stderr_ready()
                ):
                    break
                if self._reported_exit is not None:
                    exit_seen_at = exit_seen_at or time.monotonic()
                    if time.monotonic() - exit_seen_at > _DRAIN_S:
                        break  # its children keep the output open: stop waiting for more
                select.select([chan], [], [], 0.5)
        except (paramiko.SSHException, OSError, EOFError):
            pass
        finally:
            self._pgid_known.set()
            chan.close()
        if self._reported_exit is not None:
            self._finish(self._reported_exit)
        elif not self._ssh.is_active:
            self._finish(
                None, self._ssh._lost(f"watching `{self._argv[0]}` (process group {self.pgid})")
            )
        else:
            # The wrapper itself was killed (SIGKILL by kill_tree): report it as such.
            self._finish(128 + 9)

    def _control_data(self, data: bytes) -> None:
        *complete, self._control = (self._control + data).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", errors="replace")
            pgid = shell.parse_marker(line, shell.PGID_MARKER)
            code = shell.parse_marker(line, shell.EXIT_MARKER)
            if pgid is not None and self.pgid < 0:
                self.pgid = pgid
                self._pgid_known.set()
            elif code is not None:
                self._reported_exit = code
            else:
                if self.pgid < 0:
                    self._startup.append(line)
                self._feed(raw + b"\n")  # the wrapper's own complaints, e.g. a bad log path


class SshPipe(StreamedProcess, Pipe):
    """A command on an exec channel: we write its stdin, a thread reads its stdout lines and
    its stderr (whose first line is the `run_line` pid marker: the process group to kill)."""

    def __init__(
        self, transport: SshTransport, chan: paramiko.Channel, argv: Sequence[str], timeout: float
    ) -> None:
        super().__init__(transport, -1)
        self._chan, self._ssh, self._argv, self._timeout_s = chan, transport, tuple(argv), timeout
        self._err = bytearray()
        self._err_lock = threading.Lock()
        chan.settimeout(timeout)  # bounds sendall; the reader only receives what is ready
        threading.Thread(target=self._read, name=f"pipe-{transport.name}", daemon=True).start()

    def _read(self) -> None:
        chan = self._chan
        try:
            while True:
                while chan.recv_ready():
                    self._feed(chan.recv(_READ_SIZE))
                while chan.recv_stderr_ready():
                    self._stderr(chan.recv_stderr(_READ_SIZE))
                if (chan.eof_received or chan.closed) and not (
                    chan.recv_ready() or chan.recv_stderr_ready()
                ):
                    break
                select.select([chan], [], [], 0.5)
            _await_exit(chan, time.monotonic() + _DRAIN_S)
        except (paramiko.SSHException, OSError, EOFError):
            pass
        if chan.exit_status_ready() and chan.exit_status >= 0:
            self._finish(chan.exit_status)
        elif not self._ssh.is_active:
            self._finish(None, self._ssh._lost(f"talking to `{self._argv[0]}`"))
        else:
            self._finish(255)  # closed without a status, as ssh(1) reports it

    def _stderr(self, data: bytes) -> None:
        with self._err_lock:
            self._err += data
            if self.pgid < 0 and b"\n" in self._err:
                self._err, pid = _strip_pid_line(self._err)
                self.pgid = pid if pid is not None else 0

    def write(self, data: bytes) -> None:
        try:
            self._chan.sendall(data)
        except socket.timeout:
            raise NodeError(
                "writing to a command failed",
                {self.node: f"`{self._argv[0]}` took no input for {self._timeout_s:g}s"},
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self._ssh.is_active:
                raise self._ssh._lost(f"writing to `{self._argv[0]}`", exc) from None
            raise node_error(self.node, f"writing to `{self._argv[0]}`", exc) from None

    def close_stdin(self) -> None:
        try:
            self._chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def stderr_text(self) -> str:
        with self._err_lock:
            return self._err.decode("utf-8", errors="replace")

    def kill_tree(self, grace_s: float = 5.0) -> None:
        if self.pgid > 1:
            super().kill_tree(grace_s)
        self.close()

    def close(self) -> None:
        self._chan.close()


class _ChannelFeeder(threading.Thread):
    """Streams stdin chunks into a channel, then sends EOF."""

    def __init__(
        self,
        chan: paramiko.Channel,
        data: bytes | Iterable[bytes],
        progress: ProgressCallback | None,
    ):
        super().__init__(name="stdin-feeder", daemon=True)
        self.chan, self.data, self.progress = chan, data, progress
        self.sent = 0
        self.error: BaseException | None = None
        self.remote_closed = False

    def run(self) -> None:
        chunks = [self.data] if isinstance(self.data, bytes) else self.data
        try:
            for chunk in chunks:
                if self.chan.closed or self.chan.eof_received:
                    self.remote_closed = True
                    return
                self.chan.sendall(chunk)
                self.sent += len(chunk)
                if self.progress is not None:
                    self.progress(self.sent)
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.remote_closed = bool(self.chan.closed or self.chan.eof_received)
            self.error = exc
        except BaseException as exc:  # the chunk source failed: reported by the caller
            self.error = exc
        finally:
            if self.error is not None and not self.remote_closed:
                self.chan.close()  # the command must not wait for input that will not come


class _Output:
    """What a command wrote so far, and its pid once reported."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.pid: int | None = None


def _await_exit(chan: paramiko.Channel, deadline: float) -> bool:
    """Wait for the exit status (or the channel's close); False past the deadline."""
    while not chan.exit_status_ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        chan.status_event.wait(min(remaining, 0.05))
    return True


def _strip_pid_line(err: bytearray) -> tuple[bytearray, int | None]:
    """Remove the `orchestrator-pid N` line (possibly after a login script's noise)."""
    lines = bytes(err).split(b"\n")
    for i, raw in enumerate(lines[:-1]):
        pid = shell.parse_marker(raw.decode("utf-8", "replace"), shell.PID_MARKER)
        if pid is not None:
            return bytearray(b"\n".join(lines[:i] + lines[i + 1 :])), pid
    return err, None


def _temp_name(remote: str) -> str:
    """A hidden name next to `remote`, for writing it atomically; opened with O_EXCL ("x"), so
    that a file or link someone placed there is never written through."""
    head, sep, name = remote.rpartition("/")
    return f"{head}{sep}.{name}.{uuid.uuid4().hex[:8]}"


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except (OSError, EOFError, paramiko.SSHException):
        pass
