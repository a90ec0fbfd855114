"""Operations fanned out to all nodes in parallel, and the session that holds their connections.

Every node runs in its own thread; the caller waits for all of them (each with the timeout),
then gets every node's result, or ONE error naming every node that failed and why (fabric's
GroupResult/GroupException, with the timeouts it lacks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from orchestrator.errors import NodeError, OrchestratorError
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport.base import Transport

K = TypeVar("K")
T = TypeVar("T")


class FanOutTimeout(NodeError):
    """A node's share of a fan-out did not finish within the fan-out's timeout."""


class FanOutError(NodeError, Generic[T]):
    """`what` failed on some nodes. `failures` maps node -> reason, `errors` node -> exception,
    `results` holds what the other nodes returned."""

    def __init__(
        self,
        what: str,
        total: int,
        errors: dict[str, BaseException],
        results: dict[str, T],
    ) -> None:
        self.errors = errors
        self.results = results
        remedies = []
        for exc in errors.values():
            remedy = exc.remedy if isinstance(exc, OrchestratorError) else None
            if remedy and remedy not in remedies:
                remedies.append(remedy)
        super().__init__(
            f"{what} failed on {len(errors)} of {total} node{'s' if total != 1 else ''}",
            {node: failure_reason(node, exc) for node, exc in errors.items()},
            "; ".join(remedies) or None,
        )


def failure_reason(node: str, exc: BaseException) -> str:
    """One line saying why `node` failed, without repeating the node's name."""
    if isinstance(exc, NodeError) and node in exc.failures:
        return exc.failures[node]
    if isinstance(exc, OrchestratorError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, eq=False)
class GroupResult(Mapping[str, T | BaseException]):
    """What a fan-out got from every node (fabric's GroupResult): `succeeded` maps node ->
    result, `failed` node -> the exception its call raised (a FanOutTimeout for a call past the
    fan-out's timeout). As a mapping it is node -> result or exception, in the order the nodes
    were given, and so are `succeeded` and `failed`. All three are read-only.

        group = session.fan_out_results(fn, timeout=30, what="start")
        procs = dict(group.succeeded)
        group.raise_for_failures("start")  # `start failed on 1 of 3 nodes: n2: ...`
    """

    outcomes: Mapping[str, T | BaseException]
    succeeded: Mapping[str, T] = field(init=False, repr=False)
    failed: Mapping[str, BaseException] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        outcomes = dict(self.outcomes)
        succeeded: dict[str, T] = {}
        failed: dict[str, BaseException] = {}
        for node, outcome in outcomes.items():
            if isinstance(outcome, BaseException):
                failed[node] = outcome
            else:
                succeeded[node] = outcome
        object.__setattr__(self, "outcomes", MappingProxyType(outcomes))
        object.__setattr__(self, "succeeded", MappingProxyType(succeeded))
        object.__setattr__(self, "failed", MappingProxyType(failed))

    def __getitem__(self, node: str) -> T | BaseException:
        return self.outcomes[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def ok(self) -> bool:
        """True when no node failed (also when there was no node)."""
        return not self.failed

    def reasons(
        self, reason: Callable[[str, BaseException], str] = failure_reason
    ) -> dict[str, str]:
        """node -> one line saying why it failed, for every failed node, in order."""
        return {node: reason(node, exc) for node, exc in self.failed.items()}

    def recover(self, fallback: Callable[[str, BaseException], T]) -> dict[str, T]:
        """node -> result for every node, in order; `fallback(node, exception)` stands in for
        the result of a node that failed."""
        return {
            node: fallback(node, outcome) if isinstance(outcome, BaseException) else outcome
            for node, outcome in self.outcomes.items()
        }

    def error(self, what: str) -> FanOutError[T] | None:
        """The one error naming every failed node with its reason, remedies merged
        (`what failed on k of n nodes: node: reason; ...`), carrying `.errors` and the other
        nodes' `.results`; None when no node failed."""
        if not self.failed:
            return None
        return FanOutError(what, len(self.outcomes), dict(self.failed), dict(self.succeeded))

    def raise_interrupts(self) -> None:
        """Re-raise, as it is, a KeyboardInterrupt or SystemExit that a node's call raised."""
        for exc in self.failed.values():
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise exc

    def raise_for_failures(self, what: str) -> None:
        """Raise `error(what)` if any node failed (after `raise_interrupts`)."""
        self.raise_interrupts()
        error = self.error(what)
        if error is not None:
            raise error


def fan_out_calls(
    items: Mapping[str, K],
    fn: Callable[[K], T],
    *,
    timeout: float,
    what: str,
    on_late: Callable[[T], object] | None = None,
) -> GroupResult[T]:
    """Call fn(item) for every item in its own thread, wait for all (up to `timeout` seconds
    from the start), and return each key's result or exception, in the items' order. A call
    still running at the deadline counts as a FanOutTimeout; its thread is left to finish on
    its own (the operations it runs have their own timeouts) and `on_late(result)` disposes
    of what it returns then (e.g. closes a connection nobody will use)."""
    outcomes: dict[str, T | BaseException] = {}
    done = threading.Condition()
    gave_up = False

    def call(key: str, item: K) -> None:
        try:
            value: T | BaseException = fn(item)
        except BaseException as exc:  # reported per node, never lost
            value = exc
        with done:
            if not gave_up:
                outcomes[key] = value
                done.notify_all()
                return
        if on_late is not None and not isinstance(value, BaseException):
            on_late(value)

    threads = [
        threading.Thread(target=call, args=(key, item), name=f"fan-out-{key}", daemon=True)
        for key, item in items.items()
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    with done:
        done.wait_for(lambda: len(outcomes) == len(threads), max(0.0, deadline - time.monotonic()))
        gave_up = True
        snapshot = dict(outcomes)
    ordered: dict[str, T | BaseException] = {}
    for key in items:
        if key in snapshot:
            ordered[key] = snapshot[key]
        else:
            ordered[key] = FanOutTimeout(
                f"{what} timed out", {key: f"{what} did not finish within {timeout:g}s"}
            )
    return GroupResult(ordered)


class NodeSession:
    """The connections to a set of nodes: one per node, opened in parallel, reused for every
    operation of a run, all closed on exit (even on errors).

        with NodeSession(job.nodes, cluster.ssh) as session:
            session.fan_out(lambda t: t.run(["nproc"]), timeout=30, what="counting CPUs")

    With `require_all=False` the session opens whatever it can: `transports` has the nodes
    that answered and `connect_failures` the reasons of the others (for `doctor`);
    `connected` is the connect's GroupResult.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        ssh: SshSettings,
        connect_timeout: float | None = None,
        *,
        require_all: bool = True,
    ) -> None:
        names = [n.name for n in nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"nodes named twice: {', '.join(duplicates)}")
        self.nodes = tuple(nodes)
        self.ssh = ssh
        self.connect_timeout = ssh.connect_timeout_s if connect_timeout is None else connect_timeout
        self.require_all = require_all
        self.transports: dict[str, Transport] = {}
        self.connect_failures: dict[str, str] = {}
        self.connected: GroupResult[Transport] = GroupResult({})  # every node's connect
        #: node (or "jump host ...") -> SHA256 fingerprint of each host key accepted and
        #: recorded while connecting (accept_new_host_keys); the run stores them.
        self.accepted_new_host_keys: dict[str, str] = {}
        self._jump: Any = None  # ssh.JumpHost, imported lazily with paramiko
        self._opened = False

    def open(self) -> NodeSession:
        """Connect to every node in parallel (done by `with`); one error for all failures."""
        if self._opened:
            return self
        self._opened = True
        try:
            self.connected = self._connect_all()
            self.transports = dict(self.connected.succeeded)
            self.connect_failures = self.connected.reasons()
            for name, transport in self.transports.items():
                if transport.accepted_new_host_key:
                    self.accepted_new_host_keys[name] = transport.accepted_new_host_key
            if self._jump is not None and self._jump.accepted_new_host_key:
                self.accepted_new_host_keys[f"jump host {self._jump.label}"] = (
                    self._jump.accepted_new_host_key
                )
            if self.require_all:
                self.connected.raise_for_failures("connect")
            else:
                self.connected.raise_interrupts()
        except BaseException:
            self.close()
            raise
        return self

    def connect_error(self) -> FanOutError[Transport] | None:
        """The one error naming every node that could not be connected, with the remedies
        (`connect failed on k of n nodes: node: reason (remedy)`): what `open` raises when
        all are required, and what `doctor` prints under its report; None if all answered."""
        return self.connected.error("connect")

    def _connect_all(self) -> GroupResult[Transport]:
        from orchestrator.transport.local import LocalTransport

        remote = [n for n in self.nodes if not n.is_local]
        known = None
        if remote:
            from orchestrator.transport.connection import JumpHost, connect_ssh
            from orchestrator.transport.hostkeys import KnownHosts

            known = KnownHosts.from_settings(self.ssh)
            if self.ssh.jump_host:
                try:
                    key_files = sorted({n.key_file for n in remote if n.key_file})
                    self._jump = JumpHost(
                        self.ssh.jump_host, self.ssh, known, key_files, self.connect_timeout
                    )
                except NodeError as exc:
                    # Every node behind the jump host fails for the same reason.
                    failed: dict[str, Transport | BaseException] = {}
                    for node in self.nodes:
                        failed[node.name] = LocalTransport(node, self.ssh) if node.is_local else exc
                    return GroupResult(failed)

        def open_one(node: NodeSpec) -> Transport:
            if node.is_local:
                return LocalTransport(node, self.ssh)
            return connect_ssh(
                node, self.ssh, known=known, jump=self._jump, timeout=self.connect_timeout
            )

        # Each connect is bounded by its own watchdog; the margin only guards against bugs.
        return fan_out_calls(
            {n.name: n for n in self.nodes},
            open_one,
            timeout=self.connect_timeout + 5.0,
            what="connect",
            on_late=lambda transport: transport.close(),
        )

    def fan_out(self, fn: Callable[[Transport], T], *, timeout: float, what: str) -> dict[str, T]:
        """fn(transport) on every node in parallel; waits for all (each up to `timeout`
        seconds), then returns node -> result, or raises ONE FanOutError
        (`what failed on k of n nodes: node: reason; ...`) carrying `.results` of the nodes
        that succeeded and `.errors` with each failure's exception."""
        group = self.fan_out_results(fn, timeout=timeout, what=what)
        group.raise_for_failures(what)
        return dict(group.succeeded)

    def fan_out_results(
        self, fn: Callable[[Transport], T], *, timeout: float, what: str
    ) -> GroupResult[T]:
        """Like `fan_out`, without raising: every node's result or exception, in the nodes'
        order (`.succeeded`, `.failed`, `.raise_for_failures(what)`)."""
        if not self._opened:
            self.open()
        return fan_out_calls(self.transports, fn, timeout=timeout, what=what)

    def close(self) -> None:
        """Close every connection (and the jump host's); spawned jobs keep running."""
        transports, self.transports = self.transports, {}
        for transport in transports.values():
            try:
                transport.close()
            except Exception:  # closing must not hide the error that got us here
                pass
        if self._jump is not None:
            jump, self._jump = self._jump, None
            try:
                jump.close()
            except Exception:
                pass

    def __enter__(self) -> NodeSession:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
