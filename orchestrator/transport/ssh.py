"""SSH transport (paramiko): one connection per node, reused for every command and file.

Connecting is bounded by the connect timeout as a whole (TCP, banner, key exchange, auth): a
watchdog shuts the socket at the deadline. Host keys are checked by `hostkeys`; a jump host is
one more connection whose `direct-tcpip` channels carry the nodes' connections.
"""

from __future__ import annotations

import getpass
import os
import select
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import paramiko

from orchestrator.errors import HostKeyError, NodeError
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport import shell
from orchestrator.transport.base import (
    CommandResult,
    CommandTimedOut,
    NodeUnreachable,
    ProgressCallback,
    RemoteProcess,
    Stdin,
    StreamedProcess,
    Transport,
    check_argv,
    check_env,
    file_errors,
    node_error,
)
from orchestrator.transport.hostkeys import (
    HostKeyPolicy,
    KnownHosts,
    changed_key_error,
    host_key_name,
    revoked_key_error,
)

_READ_SIZE = 1 << 16
_KILL_TIMEOUT_S = 10.0
_TAIL_DRAIN_S = 5.0  # after a job's exit line, how long its last output may take to arrive
_UNREACHABLE_REMEDY = "check that the node is up, its address and port, and that sshd runs there"


def parse_jump_host(text: str) -> tuple[str | None, str, int]:
    """`[user@]host[:port]` (IPv6 as `[addr]:port`) -> (user, host, port)."""
    user, _, hostport = text.strip().rpartition("@")
    host, port = hostport, "22"
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "22"
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise NodeError(
            "invalid jump host",
            {"jump host": f"{text!r} is not of the form [user@]host[:port]"},
            "fix jump_host in the cluster file's [ssh] section",
        )
    return user or None, host, int(port)


def _shutdown(sock: socket.socket | paramiko.Channel) -> None:
    try:
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except OSError:
        pass


def open_client(
    *,
    label: str,
    address: str,
    port: int,
    user: str | None,
    key_files: Sequence[str],
    ssh: SshSettings,
    known: KnownHosts,
    timeout: float,
    jump: JumpHost | None = None,
) -> tuple[paramiko.SSHClient, str | None]:
    """An authenticated SSHClient whose host key was verified, within `timeout` seconds in all;
    also the fingerprint of a newly accepted host key, if any. Raises NodeError subclasses
    whose failures are keyed by `label`."""
    deadline = time.monotonic() + timeout
    where = f"{address}:{port}" + (f" via jump host {jump.label}" if jump else "")
    login = user or getpass.getuser()
    for path in key_files:
        if not os.access(path, os.R_OK):
            raise NodeUnreachable(
                "connect failed",
                {label: f"key_file {path} does not exist or is not readable"},
                "fix key_file in the cluster file",
            )
    sock = (
        jump.open_socket(label, address, port, timeout)
        if jump
        else _tcp_connect(label, address, port, timeout)
    )
    client = paramiko.SSHClient()
    policy = HostKeyPolicy(known, ssh.accept_new_host_keys, label, address, port)
    client.set_missing_host_key_policy(policy)
    name = host_key_name(address, port)
    for key in known.lookup(name):
        client.get_host_keys().add(name, key.get_name(), key)
    remaining = max(0.05, deadline - time.monotonic())
    fired = threading.Event()

    def abort() -> None:
        fired.set()
        _shutdown(sock)

    watchdog = threading.Timer(remaining, abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        client.connect(
            address,
            port=port,
            username=login,
            sock=sock,
            timeout=remaining,
            banner_timeout=remaining,
            auth_timeout=remaining,
            channel_timeout=ssh.command_timeout_s,
            key_filename=list(key_files) or None,  # type: ignore[arg-type]  # a list works
            allow_agent=True,
            look_for_keys=not key_files,
        )
        if fired.is_set():
            raise TimeoutError("connect deadline reached")
        server_key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        if known.is_revoked(server_key):
            raise revoked_key_error(label, name, server_key)
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise changed_key_error(label, name, exc.expected_key, exc.key, known) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        how = f"key_file {', '.join(key_files)}" if key_files else "the SSH agent and ~/.ssh keys"
        raise NodeUnreachable(
            "connect failed",
            {label: f"authentication as {login} to {where} failed with {how} ({exc})"},
            "check the node's user and key_file and that the key is in its authorized_keys",
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        if fired.is_set():
            why = (
                f"{where} accepted the connection but did not complete the SSH handshake "
                f"within {timeout:g}s"
            )
        else:
            why = f"SSH handshake with {where} failed: {exc or type(exc).__name__}"
        raise NodeUnreachable("connect failed", {label: why}, _UNREACHABLE_REMEDY) from None
    finally:
        watchdog.cancel()
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(ssh.keepalive_s)
    return client, policy.accepted


def _tcp_connect(label: str, address: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((address, port), timeout=timeout)
    except TimeoutError:
        why = f"no answer from {address}:{port} within {timeout:g}s (TCP connect timed out)"
    except ConnectionRefusedError:
        why = f"connection refused by {address}:{port} (no sshd listening there?)"
    except socket.gaierror as exc:
        why = f"cannot resolve host name {address!r} ({exc.strerror})"
    except OSError as exc:
        why = f"cannot connect to {address}:{port}: {exc.strerror or exc}"
    raise NodeUnreachable("connect failed", {label: why}, _UNREACHABLE_REMEDY)


class JumpHost:
    """One authenticated connection to the jump host; each node's connection is a
    `direct-tcpip` channel through it (the jump host's sshd needs AllowTcpForwarding yes)."""

    def __init__(
        self,
        spec: str,
        ssh: SshSettings,
        known: KnownHosts,
        key_files: Sequence[str] = (),
        timeout: float | None = None,
    ) -> None:
        user, host, port = parse_jump_host(spec)
        self.label = spec
        self.client, self.accepted_new_host_key = open_client(
            label=f"jump host {spec}",
            address=host,
            port=port,
            user=user,
            key_files=[k for k in key_files if os.access(k, os.R_OK)],
            ssh=ssh,
            known=known,
            timeout=ssh.connect_timeout_s if timeout is None else timeout,
        )

    def open_socket(self, label: str, address: str, port: int, timeout: float) -> paramiko.Channel:
        transport = self.client.get_transport()
        try:
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("the connection to the jump host was lost")
            return transport.open_channel(
                "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            remedy = _UNREACHABLE_REMEDY
            if exc.code == 1:  # administratively prohibited
                remedy = "set AllowTcpForwarding yes in the jump host's sshd_config"
            why = f"jump host {self.label} could not open a connection to {address}:{port} ({exc.text})"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            remedy = _UNREACHABLE_REMEDY
            why = f"no connection to {address}:{port} through jump host {self.label} ({exc})"
        raise NodeUnreachable("connect failed", {label: why}, remedy)

    def close(self) -> None:
        self.client.close()


def connect_ssh(
    node: NodeSpec,
    ssh: SshSettings,
    *,
    known: KnownHosts | None = None,
    jump: JumpHost | None = None,
    timeout: float | None = None,
) -> SshTransport:
    """Connect to one node. Without `jump`, a jump host of the settings is opened for this
    node alone (NodeSession shares one among all nodes)."""
    known = known or KnownHosts.from_settings(ssh)
    timeout = ssh.connect_timeout_s if timeout is None else timeout
    key_files = [node.key_file] if node.key_file else []
    owned_jump = None
    if jump is None and ssh.jump_host:
        owned_jump = jump = JumpHost(ssh.jump_host, ssh, known, key_files, timeout)
    try:
        client, accepted = open_client(
            label=node.name,
            address=node.address,
            port=node.port,
            user=node.user,
            key_files=key_files,
            ssh=ssh,
            known=known,
            timeout=timeout,
            jump=jump,
        )
    except BaseException:
        if owned_jump is not None:
            owned_jump.close()
        raise
    return SshTransport(node, ssh, client, accepted, owned_jump)


class SshTransport(Transport):
    """Commands over exec channels and files over SFTP, all on one SSH connection."""

    def __init__(
        self,
        node: NodeSpec,
        settings: SshSettings,
        client: paramiko.SSHClient,
        accepted_new_host_key: str | None = None,
        owned_jump: JumpHost | None = None,
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
            _UNREACHABLE_REMEDY,
        )

    def _channel(self, command: str, doing: str, timeout: float) -> paramiko.Channel:
        transport = self._client.get_transport()
        if self._closed or transport is None or not transport.is_active():
            raise self._lost(doing)
        try:
            chan = transport.open_session(timeout=min(timeout, self.settings.command_timeout_s))
            chan.exec_command(command)
        except paramiko.ChannelException as exc:
            raise NodeError(
                f"{doing} failed",
                {self.name: f"the node refused a new SSH session ({exc.text})"},
                "raise MaxSessions in the node's sshd_config",
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
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
        feeder = None
        try:
            if stdin is None:
                chan.shutdown_write()
            else:
                feeder = _ChannelFeeder(chan, stdin, progress)
                feeder.start()
            out, err, pid = self._collect(chan, deadline)
            if out is None:  # ran past the deadline
                self._kill_pid(pid)
                raise CommandTimedOut(self.name, argv, timeout)
            if not _await_exit(chan, deadline):
                self._kill_pid(pid)
                raise CommandTimedOut(self.name, argv, timeout)
            if not self.is_active and chan.exit_status == -1:
                raise self._lost(doing)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(doing, exc) from None
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
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            duration_s=time.monotonic() - started,
            stdin_bytes=sent,
        )

    def _collect(
        self, chan: paramiko.Channel, deadline: float
    ) -> tuple[bytes | None, bytes, int | None]:
        """stdout and stderr until EOF (stdout None past the deadline), and the command's pid."""
        out, err = bytearray(), bytearray()
        pid: int | None = None
        while True:
            while chan.recv_ready():
                out += chan.recv(_READ_SIZE)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_READ_SIZE)
            if pid is None and b"\n" in err and len(err) < _READ_SIZE:
                err, pid = _strip_pid_line(err)
            if chan.eof_received or chan.closed:
                if not chan.recv_ready() and not chan.recv_stderr_ready():
                    return bytes(out), bytes(err), pid
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, bytes(err), pid
            select.select([chan], [], [], min(remaining, 1.0))

    def _kill_pid(self, pid: int | None) -> None:
        """Kill a timed-out command's process group on the node (best effort)."""
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
        return SshProcess(self, chan, words, limit)

    # -- files (SFTP, one session per connection, used by one thread at a time) ---------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise NodeError(
                    "opening SFTP failed",
                    {self.name: f"the node refused the SFTP subsystem ({exc})"},
                    "enable `Subsystem sftp` in the node's sshd_config",
                ) from None
        return self._sftp

    def put_file(self, local: Path, remote: str) -> None:
        tmp = _temp_name(remote)
        with self._sftp_lock, file_errors(self.name, f"copying {local} to {remote}"):
            sftp = self._sftp_client()
            try:
                sftp.put(str(local), tmp)
                sftp.chmod(tmp, stat.S_IMODE(os.stat(local).st_mode))
                sftp.posix_rename(tmp, remote)
            except BaseException:
                _remove_quietly(sftp, tmp)
                raise

    def get_file(self, remote: str, local: Path) -> None:
        with self._sftp_lock, file_errors(self.name, f"copying {remote} to {local}"):
            self._get(self._sftp_client(), remote, Path(local))

    @staticmethod
    def _get(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
        try:
            sftp.get(remote, str(tmp))
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get_tree(self, remote_dir: str, local_dir: Path) -> None:
        with self._sftp_lock, file_errors(self.name, f"copying directory {remote_dir}"):
            sftp = self._sftp_client()
            if not stat.S_ISDIR(sftp.stat(remote_dir).st_mode or 0):
                raise NotADirectoryError(20, "not a directory", remote_dir)
            self._get_tree(sftp, remote_dir.rstrip("/") or "/", Path(local_dir))

    def _get_tree(self, sftp: paramiko.SFTPClient, remote_dir: str, local_dir: Path) -> None:
        local_dir.mkdir(parents=True, exist_ok=True)
        for entry in sftp.listdir_attr(remote_dir):
            remote = f"{remote_dir}/{entry.filename}"
            mode = entry.st_mode or 0
            if stat.S_ISLNK(mode):
                try:
                    mode = sftp.stat(remote).st_mode or 0
                except OSError:
                    continue  # dangling link
                if stat.S_ISDIR(mode):
                    continue  # links to directories are skipped (no loops)
            if stat.S_ISDIR(mode):
                self._get_tree(sftp, remote, local_dir / entry.filename)
            elif stat.S_ISREG(mode):
                self._get(sftp, remote, local_dir / entry.filename)

    def read_text(self, remote: str) -> str:
        with self._sftp_lock, file_errors(self.name, f"reading {remote}"):
            with self._sftp_client().open(remote, "rb") as handle:
                handle.prefetch()
                return handle.read().decode("utf-8")

    def write_text(self, remote: str, text: str, mode: int = 0o644) -> None:
        tmp = _temp_name(remote)
        with self._sftp_lock, file_errors(self.name, f"writing {remote}"):
            sftp = self._sftp_client()
            try:
                with sftp.open(tmp, "wb") as handle:
                    handle.write(text.encode("utf-8"))
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote)
            except BaseException:
                _remove_quietly(sftp, tmp)
                raise

    def exists(self, remote: str) -> bool:
        with self._sftp_lock, file_errors(self.name, f"checking {remote}"):
            try:
                self._sftp_client().lstat(remote)
            except FileNotFoundError:
                return False
            return True

    def makedirs(self, remote: str) -> None:
        with self._sftp_lock, file_errors(self.name, f"creating directory {remote}"):
            self._makedirs(self._sftp_client(), remote.rstrip("/"))

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
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        self._client.close()
        if self._owned_jump is not None:
            self._owned_jump.close()


class SshProcess(StreamedProcess):
    """A spawned job: reads the wrapper's output (the log's lines) and control lines."""

    def __init__(
        self, transport: SshTransport, chan: paramiko.Channel, argv: Sequence[str], timeout: float
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
            raise NodeError(
                "starting a job failed",
                {self.node: f"`{self._argv[0]}` did not start: {reason}"},
                "the node needs a POSIX sh, setsid (util-linux) and GNU tail",
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
                    if time.monotonic() - exit_seen_at > _TAIL_DRAIN_S:
                        break  # tail did not end: do not wait forever for the last lines
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
    """A hidden name next to `remote`, for writing it atomically."""
    head, sep, name = remote.rpartition("/")
    return f"{head}{sep}.{name}.{uuid.uuid4().hex[:8]}"


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except (OSError, EOFError, paramiko.SSHException):
        pass
