"""Reaching the nodes: commands, process groups and files over SSH or locally.

    from orchestrator.transport import NodeSession, connect

    with NodeSession(nodes, cluster.ssh) as session:          # one connection per node
        session.fan_out(lambda t: t.run(["docker", "info"]), timeout=30, what="docker check")

`connect(node, ssh)` gives one node's Transport (LocalTransport for the `local` node). paramiko
is imported only when a remote node is connected. See docs/ssh.md.
"""

from __future__ import annotations

from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport.base import (
    CommandFailed,
    CommandResult,
    CommandTimedOut,
    NodeUnreachable,
    Pipe,
    RemoteProcess,
    Transport,
    kill_process_group,
)
from orchestrator.transport.fanout import FanOutError, FanOutTimeout, GroupResult, NodeSession


def connect(node: NodeSpec, ssh: SshSettings) -> Transport:
    """One node's transport: local subprocesses for the `local` node, else an SSH connection
    (host key verified, within ssh.connect_timeout_s). Close it when done (or use `with`)."""
    if node.is_local:
        from orchestrator.transport.local import LocalTransport

        return LocalTransport(node, ssh)
    from orchestrator.transport.connection import connect_ssh

    return connect_ssh(node, ssh)


__all__ = [
    "CommandFailed",
    "CommandResult",
    "CommandTimedOut",
    "FanOutError",
    "FanOutTimeout",
    "GroupResult",
    "NodeSession",
    "NodeUnreachable",
    "Pipe",
    "RemoteProcess",
    "Transport",
    "connect",
    "kill_process_group",
]
