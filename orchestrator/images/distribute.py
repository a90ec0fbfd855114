"""Putting an image on every node without a registry.

Each node's daemon is asked for the image id (one short command per node, in parallel); only
the nodes that lack it take part. Two ways to bring it to them:

- "relay" (the default): the build host sends each layer some node lacks once; the nodes pass
  it on to each other (relay.py), so time and the build host's bytes barely grow with the
  number of nodes, and a changed workload moves only its own layer;
- "star": one `docker save` stream from the build host, teed to a `docker load` on each node
  over SSH at the same time (N copies through the build host's link; for two-node labs).

With a registry named in the cluster file, push once and pull on the nodes instead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ImageError, NodeError
from orchestrator.images.containers import docker_argv
from orchestrator.images.relay import RelayOptions, relay_to_nodes
from orchestrator.images.targets import (
    NodeTarget,
    ProgressFn,
    Transfer,
    fan_out_results,
)
from orchestrator.images.targets import (
    reason as _reason,
)
from orchestrator.states import Distribution
from orchestrator.transport.fanout import GroupResult

if TYPE_CHECKING:
    import docker

__all__ = [
    "DistributionReport",
    "NodeTarget",
    "Presence",
    "ProgressFn",
    "RelayOptions",
    "Transfer",
    "check_presence",
    "distribute",
    "fan_out_results",
    "stream_to_nodes",
]

CHUNK = 1 << 20
QUEUE_CHUNKS = 32  # per node: how far the fastest node may run ahead of the slowest


@dataclass(frozen=True)
class Presence:
    node: str
    image_id: str | None  # what the node has under the tag, None when nothing
    seconds: float  # how long it took to find out

    def has(self, expected_id: str) -> bool:
        return self.image_id == expected_id


@dataclass(frozen=True)
class DistributionReport:
    tag: str
    image_id: str
    presence: dict[str, Presence]
    transfers: dict[str, Transfer]  # only the nodes that received the image
    method: str  # "relay", "stream" (the star), "registry" or "none"
    source_bytes: int = 0  # what the build host sent (the star: every node's copy)
    payload_bytes: int = 0  # relay: the layers some node lacked, and the config
    stream_bytes: int = 0  # relay: the stream each node received (payload and framing)
    layers: tuple[str, ...] = ()  # relay: the diff ids sent
    incidents: tuple[str, ...] = ()  # relay: what broke on the way (and was recovered)
    rounds: int = 0  # relay: 1 unless a node had to be fed again

    @property
    def bytes_moved(self) -> int:
        """Bytes the nodes received, all together."""
        return sum(t.bytes_sent for t in self.transfers.values())


def inspect_argv(tag: str, docker_host: str | None = None) -> list[str]:
    return docker_argv(docker_host) + ["image", "inspect", "--format", "{{.Id}}", tag]


def load_argv(docker_host: str | None = None) -> list[str]:
    return docker_argv(docker_host) + ["load", "--quiet"]


def node_image_id(target: NodeTarget, tag: str, timeout: float = 30.0) -> str | None:
    result = target.runner.run(inspect_argv(tag, target.docker_host), timeout=timeout, check=False)
    if result.exit_code == 0:
        return str(result.stdout).strip() or None
    stderr = str(result.stderr)
    if "No such image" in stderr or "No such object" in stderr:
        return None
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {result.exit_code}"
    raise ImageError(f"cannot ask the Docker daemon: {last}")


def _presence(target: NodeTarget, tag: str, timeout: float = 30.0) -> Presence:
    started = time.monotonic()
    found = node_image_id(target, tag, timeout)
    return Presence(target.name, found, time.monotonic() - started)


def check_presence(targets: Sequence[NodeTarget], tag: str) -> dict[str, Presence]:
    """Which image each node has under `tag`; one NodeError naming every node that failed."""
    found = fan_out_results(targets, lambda t: _presence(t, tag))
    if not found.ok():
        failures = found.reasons(_reason)
        raise NodeError(f"checking for image {tag} failed on {len(failures)} node(s)", failures)
    return dict(found.succeeded)


def distribute(
    api: docker.APIClient,
    tag: str,
    targets: Sequence[NodeTarget],
    *,
    progress: ProgressFn | None = None,
    registry: str | None = None,
    timeout_s: float = 3600,
    strategy: Distribution = "relay",
    relay_options: RelayOptions | None = None,
) -> DistributionReport:
    """Make `tag` (as it is on the build host `api`) present on every target node.

    Every node that can be served is; the ones that cannot are named together in one NodeError
    at the end (a later call skips the nodes that have the image by then).
    """
    from orchestrator.images.build import image_id

    expected = image_id(api, tag)
    if expected is None:
        raise ImageError(
            f"image {tag} is not on the build host", "build it first: orchestrator image build"
        )
    found = fan_out_results(targets, lambda t: _presence(t, tag))
    presence, failures = dict(found.succeeded), found.reasons(_reason)
    missing = [t for t in targets if t.name in presence and not presence[t.name].has(expected)]
    report = DistributionReport(tag, expected, presence, {}, "none")
    if missing:
        if registry:
            sent = _via_registry(api, tag, registry, missing, timeout_s)
            transfers = dict(sent.succeeded)
            failures.update(sent.reasons(_reason))
            report = DistributionReport(tag, expected, presence, transfers, "registry")
        elif strategy == "star":
            report = _star(api, tag, expected, presence, missing, progress, timeout_s, failures)
        else:
            outcome = relay_to_nodes(
                api, tag, expected, missing, relay_options, progress, timeout_s
            )
            failures.update(outcome.failures)
            report = DistributionReport(
                tag,
                expected,
                presence,
                outcome.transfers,
                "relay",
                source_bytes=outcome.source_bytes,
                payload_bytes=outcome.payload_bytes,
                stream_bytes=outcome.stream_bytes,
                layers=tuple(outcome.layers),
                incidents=tuple(outcome.incidents),
                rounds=outcome.rounds,
            )
        # The relay's agents checked the id under the tag themselves before saying done.
        received = [t for t in missing if t.name in report.transfers and report.method != "relay"]
        after = fan_out_results(received, lambda t: _presence(t, tag))
        failures.update(after.reasons(_reason))
        for name, there in after.succeeded.items():
            if not there.has(expected):
                failures[name] = f"has {there.image_id or 'nothing'} under {tag}, not {expected}"
        presence.update(after.succeeded)
        if report.method == "relay":  # checked on the node by its agent, under the tag
            presence.update({n: Presence(n, expected, 0.0) for n in report.transfers})
    if failures:
        raise NodeError(
            f"putting image {tag} on the nodes failed on {len(failures)} of {len(targets)} node(s)",
            failures,
            "fix those nodes, then run `orchestrator image push-to-nodes` (it skips nodes that have it)",
        )
    return report


def _star(
    api: docker.APIClient,
    tag: str,
    expected: str,
    presence: dict[str, Presence],
    missing: Sequence[NodeTarget],
    progress: ProgressFn | None,
    timeout_s: float,
    failures: dict[str, str],
) -> DistributionReport:
    total = int(api.inspect_image(tag).get("Size") or 0)
    sent = stream_to_nodes(
        lambda: api.get_image(tag, chunk_size=CHUNK), missing, total, progress, timeout_s
    )
    failures.update(sent.reasons(_reason))
    transfers = dict(sent.succeeded)
    moved = sum(t.bytes_sent for t in transfers.values())
    return DistributionReport(tag, expected, presence, transfers, "stream", source_bytes=moved)


def stream_to_nodes(
    open_source: Callable[[], Any],
    targets: Sequence[NodeTarget],
    expected_bytes: int,
    progress: ProgressFn | None = None,
    timeout_s: float = 3600,
) -> GroupResult[Transfer]:
    """One `docker save` stream, teed into `docker load` on every target in parallel.

    Each node has a bounded queue; a node that fails is dropped from the tee and the others go
    on. Returns every node's Transfer or exception, once every node has finished.
    """
    queues = {t.name: queue.Queue[bytes | None](maxsize=QUEUE_CHUNKS) for t in targets}
    done = {t.name: threading.Event() for t in targets}
    sent = {t.name: 0 for t in targets}
    source_error: list[BaseException] = []

    def feed() -> None:
        # Reads the source once; each chunk goes to every node still loading.
        try:
            for chunk in open_source():
                if not chunk:
                    continue
                live = [n for n in queues if not done[n].is_set()]
                if not live:
                    return
                for name in live:
                    while not done[name].is_set():
                        try:
                            queues[name].put(chunk, timeout=0.5)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:
            source_error.append(exc)
        finally:
            for name, q in queues.items():
                while not done[name].is_set():
                    try:
                        q.put(None, timeout=0.5)
                        break
                    except queue.Full:
                        continue

    def chunks_for(name: str) -> Iterator[bytes]:
        q = queues[name]
        while True:
            chunk = q.get()
            if chunk is None:
                if source_error:
                    raise ImageError(f"docker save on the build host failed: {source_error[0]}")
                return
            sent[name] += len(chunk)
            if progress:
                progress(name, sent[name], expected_bytes)
            yield chunk

    def load(target: NodeTarget) -> Transfer:
        started = time.monotonic()
        try:
            result = target.runner.run(
                load_argv(target.docker_host),
                stdin=chunks_for(target.name),
                timeout=timeout_s,
                check=False,
            )
        finally:
            done[target.name].set()
        if source_error:
            raise ImageError(f"docker save on the build host failed: {source_error[0]}")
        if result.exit_code != 0:
            lines = str(result.stderr).strip().splitlines()
            raise ImageError(
                f"docker load failed: {lines[-1] if lines else 'exit ' + str(result.exit_code)}"
            )
        return Transfer(target.name, sent[target.name], time.monotonic() - started)

    feeder = threading.Thread(target=feed, name="docker-save", daemon=True)
    feeder.start()
    try:
        return fan_out_results(targets, load)
    finally:
        for event in done.values():
            event.set()
        feeder.join(5)


def _via_registry(
    api: docker.APIClient, tag: str, registry: str, targets: Sequence[NodeTarget], timeout_s: float
) -> GroupResult[Transfer]:
    """Push once from the build host, pull on every node, and tag it there under `tag`."""
    repository, _, version = tag.rpartition(":")
    remote_repo = f"{registry.rstrip('/')}/{repository}"
    remote = f"{remote_repo}:{version}"
    api.tag(tag, remote_repo, version)
    for event in api.push(remote_repo, tag=version, stream=True, decode=True):
        if "error" in event:
            raise ImageError(
                f"push of {remote} failed: {event['error']}",
                "check the registry in the cluster file",
            )

    def pull(target: NodeTarget) -> Transfer:
        started = time.monotonic()
        for argv in (
            docker_argv(target.docker_host) + ["pull", "--quiet", remote],
            docker_argv(target.docker_host) + ["tag", remote, tag],
        ):
            result = target.runner.run(argv, timeout=timeout_s, check=False)
            if result.exit_code != 0:
                lines = str(result.stderr).strip().splitlines()
                raise ImageError(f"{argv[-2]} failed: {lines[-1] if lines else result.exit_code}")
        return Transfer(target.name, 0, time.monotonic() - started)

    return fan_out_results(targets, pull)
