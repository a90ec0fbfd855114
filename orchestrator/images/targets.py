"""What distribution knows of a node, and the fan-out it uses: shared by the star
(distribute.py) and the relay (relay.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from orchestrator.errors import NodeError, OrchestratorError
from orchestrator.images.containers import Runner
from orchestrator.transport.base import Pipe
from orchestrator.transport.fanout import GroupResult

T = TypeVar("T")

ProgressFn = Callable[[str, int, int], None]  # node, bytes received, expected total


class NodeRunner(Runner, Protocol):
    """What distribution needs of a node's transport: commands, and a pipe for the relay."""

    def open_pipe(self, argv: Sequence[str], *, write_timeout: float | None = None) -> Pipe: ...


@dataclass(frozen=True)
class NodeTarget:
    """A node's daemon as seen from here: its name, a runner (Transport), its docker_host, and
    the address other nodes reach it at for a relay (None: this node cannot be a relay hop)."""

    name: str
    runner: NodeRunner
    docker_host: str | None = None
    relay_address: str | None = None


@dataclass(frozen=True)
class Transfer:
    node: str
    bytes_sent: int  # bytes the node received
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0


def fan_out_results(targets: Sequence[NodeTarget], fn: Callable[[NodeTarget], T]) -> GroupResult[T]:
    """Run `fn` on every node at once: every node's result or exception, in the targets' order
    (`.reasons(reason)` says why each failed one did)."""
    outcomes: dict[str, T | BaseException] = {}
    if not targets:
        return GroupResult(outcomes)
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        futures = {t.name: pool.submit(fn, t) for t in targets}
        for name, future in futures.items():
            try:
                outcomes[name] = future.result()
            except Exception as exc:
                outcomes[name] = exc
    return GroupResult(outcomes)


def reason(node: str, exc: BaseException) -> str:
    """One line on why `exc` failed `node`."""
    if isinstance(exc, NodeError) and node in exc.failures:
        return exc.failures[node]
    if isinstance(exc, OrchestratorError):
        return exc.message
    return str(exc) or type(exc).__name__
