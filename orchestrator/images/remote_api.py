"""The docker SDK talking to a node's daemon through our own verified SSH connection.

The SDK's own `ssh://` support reads only ~/.ssh/config and the system known_hosts; ours goes
through the node's existing Transport (host key checked, jump host, key_file from the cluster
file) and runs `docker [-H docker_host] system dial-stdio` on an exec channel per HTTP
connection, which is what the docker CLI does for `ssh://` hosts.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import urllib3
import urllib3.connection
import urllib3.connectionpool

from orchestrator.errors import ImageError
from orchestrator.images.containers import docker_argv
from orchestrator.transport.ssh import SshTransport

if TYPE_CHECKING:
    import docker
    import paramiko

    from orchestrator.transport.base import Transport


class _DialStdioConnection(urllib3.connection.HTTPConnection):
    def __init__(self, ssh_transport: paramiko.Transport, command: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._ssh_transport = ssh_transport
        self._command = command
        self._channel_timeout = timeout

    def connect(self) -> None:
        chan = self._ssh_transport.open_session(timeout=self._channel_timeout)
        chan.settimeout(self._channel_timeout)
        chan.exec_command(self._command)
        self.sock = chan


class _DialStdioPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(
        self, ssh_transport: paramiko.Transport, command: str, timeout: float, maxsize: int
    ) -> None:
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self._ssh_transport = ssh_transport
        self._command = command
        self._conn_timeout = timeout

    def _new_conn(self) -> _DialStdioConnection:
        return _DialStdioConnection(self._ssh_transport, self._command, self._conn_timeout)


def _paramiko_transport(transport: Transport) -> paramiko.Transport:
    """The paramiko.Transport under one of our SshTransports."""
    client = transport.paramiko_client if isinstance(transport, SshTransport) else None
    ssh_transport = client.get_transport() if client is not None else None
    if ssh_transport is None or not ssh_transport.is_active():
        raise ImageError(
            f"no open SSH connection to {transport.name}",
            "check that the build host is reachable: orchestrator cluster check",
        )
    return ssh_transport


def open_api_over_ssh(
    transport: Transport, docker_host: str | None = None, timeout: float = 600
) -> docker.APIClient:
    """A docker APIClient whose HTTP connections are `docker system dial-stdio` channels."""
    import docker
    from docker.transport.basehttpadapter import BaseHTTPAdapter

    command = shlex.join([*docker_argv(docker_host), "system", "dial-stdio"])
    pool = _DialStdioPool(_paramiko_transport(transport), command, timeout, maxsize=4)

    class _Adapter(BaseHTTPAdapter):
        def get_connection(self, url: Any, proxies: Any = None) -> Any:
            return pool

        def close(self) -> None:
            pool.close()

    # A fixed API version avoids a request before our adapter is mounted; the daemons we
    # support (Docker 20.10 and newer) all speak 1.41.
    api = docker.APIClient(
        base_url="unix:///var/run/docker.sock", version="1.41", timeout=int(timeout)
    )
    # The SDK recognises this base URL as SSH and finds the raw socket (the channel) where it
    # needs it, e.g. to stream `docker save`.
    api.mount("http+docker://ssh", _Adapter())
    api.base_url = "http+docker://ssh"
    try:
        api.ping()
    except Exception as exc:
        raise ImageError(
            f"cannot reach the Docker daemon on {transport.name} over SSH: {exc}",
            "check that docker is installed there and the SSH user may use it",
        ) from exc
    return api
