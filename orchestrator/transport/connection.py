"""Opening SSH connections (paramiko): host key checks, authentication, jump host, timeouts.

Connecting is bounded by the connect timeout as a whole (TCP, banner, key exchange, auth): a
watchdog shuts the socket at the deadline. Host keys are checked by `hostkeys`; a jump host is
one more connection whose `direct-tcpip` channels carry the nodes' connections.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from orchestrator.errors import HostKeyError, NodeError
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport.base import UNREACHABLE_REMEDY, NodeUnreachable
from orchestrator.transport.hostkeys import (
    HostKeyPolicy,
    KnownHosts,
    changed_key_error,
    host_key_name,
    revoked_key_error,
)
from orchestrator.transport.ssh import SshTransport

# paramiko logs a traceback at ERROR when a handshake fails; our errors already say why in one
# line. Without this, Python's last-resort handler would print it on stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
    where = f"{address}:{port}" + (f" via jump host {jump.label}" if jump else "")
    attempt = _Attempt(
        label, where, user or getpass.getuser(), key_files, timeout, time.monotonic() + timeout
    )
    _require_key_files(label, key_files)
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
    fired = threading.Event()
    try:
        with _watchdog(sock, attempt.deadline, fired) as remaining:
            _authenticate(client, sock, address, port, attempt, ssh, remaining)
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
        # the watchdog cut the authentication short: a timeout, not a refusal
        raise attempt.timed_out() if fired.is_set() else attempt.refused(exc) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        if fired.is_set() or time.monotonic() >= attempt.deadline:
            raise attempt.timed_out() from None
        why = f"SSH handshake with {where} failed: {exc or type(exc).__name__}"
        raise NodeUnreachable("connect failed", {label: why}, UNREACHABLE_REMEDY) from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(ssh.keepalive_s)
    return client, policy.accepted


@dataclass(frozen=True)
class _Attempt:
    """One connection attempt, as its errors name it."""

    label: str
    where: str  # 'host:port', or 'host:port via jump host j'
    login: str
    key_files: Sequence[str]
    timeout: float
    deadline: float  # time.monotonic() by which the client must be authenticated

    def timed_out(self) -> NodeUnreachable:
        why = (
            f"{self.where} accepted the connection but did not complete the SSH handshake "
            f"within {self.timeout:g}s"
        )
        return NodeUnreachable("connect failed", {self.label: why}, UNREACHABLE_REMEDY)

    def refused(self, exc: paramiko.AuthenticationException) -> NodeUnreachable:
        keys = self.key_files
        how = f"key_file {', '.join(keys)}" if keys else "the SSH agent and ~/.ssh keys"
        return NodeUnreachable(
            "connect failed",
            {
                self.label: f"authentication as {self.login} to {self.where} failed with {how} ({exc})"
            },
            "check the node's user and key_file and that the key is in its authorized_keys",
        )


def _require_key_files(label: str, key_files: Sequence[str]) -> None:
    for path in key_files:
        if not os.access(path, os.R_OK):
            raise NodeUnreachable(
                "connect failed",
                {label: f"key_file {path} does not exist or is not readable"},
                "fix key_file in the cluster file",
            )


@contextmanager
def _watchdog(
    sock: socket.socket | paramiko.Channel, deadline: float, fired: threading.Event
) -> Iterator[float]:
    """Shut the socket down at the deadline (setting `fired`), whatever paramiko is waiting
    on; yields the seconds left."""
    remaining = max(0.05, deadline - time.monotonic())

    def abort() -> None:
        fired.set()
        _shutdown(sock)

    timer = threading.Timer(remaining, abort)
    timer.daemon = True
    timer.start()
    try:
        yield remaining
    finally:
        timer.cancel()


def _authenticate(
    client: paramiko.SSHClient,
    sock: socket.socket | paramiko.Channel,
    address: str,
    port: int,
    attempt: _Attempt,
    ssh: SshSettings,
    remaining: float,
) -> None:
    """The SSH handshake and login over `sock`: the given key files, else the agent and
    ~/.ssh keys."""
    client.connect(
        address,
        port=port,
        username=attempt.login,
        sock=sock,
        # paramiko's own timeouts only back up the watchdog, which fires first.
        timeout=remaining + 1.0,
        banner_timeout=remaining + 1.0,
        auth_timeout=remaining + 1.0,
        channel_timeout=ssh.command_timeout_s,
        key_filename=list(attempt.key_files) or None,  # type: ignore[arg-type]  # a list works
        allow_agent=True,
        look_for_keys=not attempt.key_files,
    )


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
    raise NodeUnreachable("connect failed", {label: why}, UNREACHABLE_REMEDY)


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
            remedy = UNREACHABLE_REMEDY
            if exc.code == 1:  # administratively prohibited
                remedy = "set AllowTcpForwarding yes in the jump host's sshd_config"
            why = f"jump host {self.label} could not open a connection to {address}:{port} ({exc.text})"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            remedy = UNREACHABLE_REMEDY
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
