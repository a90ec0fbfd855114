"""Distribution by relay: the build host sends each needed byte once; the nodes pass it on.

    outcome = relay_to_nodes(api, tag, image_id, targets, RelayOptions(), progress=...)

1. An agent (relay_agent.py) starts on every node that lacks the image and lists the layers
   its daemon holds; what the node lacks (layers.py) is what it will load.
2. Meanwhile the build host's `docker save` starts; it becomes the relay stream with only the
   layers some node lacks and the config (relay_source.SaveSpool).
3. A chain: the stream goes over SSH into the first node's agent (relay_agent.py), which passes
   every byte on at once, over TCP, to the next node's agent, and so on. Each agent checks every
   record's sha256, loads the layers its daemon lacks, checks the image id and only then tags.
   A hop is authenticated by a one-time token that each agent got over its own SSH connection;
   an agent's port is open only until its upstream connected.
4. A node whose stream broke (its upstream failed or stalled, or a hop corrupted it) joins the
   next round, fed again by the build host; the last round is a star (each node fed directly),
   so a network where nodes cannot reach each other still gets the image. A node that failed on
   its own (its daemon, its link, its agent) is named in the result.

docs/images.md has the design, its cost model and the measurements.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ImageError, NodeError
from orchestrator.images.containers import docker_argv
from orchestrator.images.layers import missing_layers, present_chain_ids
from orchestrator.images.relay_source import SaveSpool
from orchestrator.images.targets import NodeTarget, ProgressFn, Transfer, fan_out_results, reason
from orchestrator.nodeside import relay_agent
from orchestrator.states import RelayAgentState
from orchestrator.transport.base import Pipe, stderr_tail

if TYPE_CHECKING:
    import docker

AGENT_SOURCE = Path(relay_agent.__file__).read_text(encoding="utf-8")
RETRIED = frozenset({"upstream", "corrupt", "aborted"})  # the stream broke, not the node
HOP_SLACK_S = 2.0  # a node waits this much longer per hop after it before dropping its next
POLL_S = 0.1
SAVE_CHUNK = 1 << 20


@dataclass(frozen=True)
class RelayOptions:
    stall_s: float = 60.0  # silence that means a node, a link or a hop is gone
    rounds: int = 3  # chains, the last one a star (each node fed by the build host)
    python: str = "python3"  # the nodes' interpreter for the agent (3.8+, stdlib only)
    corrupt_hop: tuple[str, int] | None = None  # tests: (node, offset) flips a bit it forwards


@dataclass
class RelayOutcome:
    transfers: dict[str, Transfer]
    failures: dict[str, str]  # node -> why, for every node without the image
    incidents: list[str]  # what went wrong along the way, also what was recovered
    layers: list[str]  # diff ids the build host sent
    payload_bytes: int  # their bytes plus the config: what had to move
    stream_bytes: int  # the relay stream (payload and framing)
    source_bytes: int  # what the build host sent, all rounds together
    rounds: int


@dataclass
class _Agent:
    target: NodeTarget
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    pipe: Pipe | None = None
    port: int = 0
    state: RelayAgentState = "starting"
    kind: str = ""
    why: str = ""
    received: int = 0
    need: list[str] = field(default_factory=list)  # diff ids it lacks, from its listing
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0
    last_word: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.target.name

    def fail(self, kind: str, why: str) -> None:
        if self.state not in ("done", "failed"):
            self.state, self.kind, self.why, self.ended = "failed", kind, why, time.monotonic()


class _Relay:
    """One distribution: the spool, the rounds, and what each node ended with."""

    def __init__(
        self,
        tag: str,
        image_id: str,
        diff_ids: list[str],
        spool: SaveSpool,
        options: RelayOptions,
        progress: ProgressFn | None,
        timeout_s: float,
        estimate: int,
    ) -> None:
        self.tag, self.image_id, self.diff_ids, self.spool = tag, image_id, diff_ids, spool
        self.options, self.progress, self.timeout_s, self.estimate = (
            options,
            progress,
            timeout_s,
            estimate,
        )
        self.incidents: list[str] = []
        self.source_bytes = 0
        self.save_error: ImageError | None = None
        self.lock = threading.Lock()
        self.round = 0
        self.hops = 1  # the longest chain there can be (set by relay_to_nodes)
        self.wanted: set[str] | None = None  # the layers the stream carries, once known

    # -- one round -------------------------------------------------------------------------

    def run_round(self, chains: list[list[NodeTarget]]) -> list[_Agent]:
        self.round += 1
        agents = [[_Agent(t) for t in chain] for chain in chains]
        everyone = [a for chain in agents for a in chain]
        by_name = {a.name: a for a in everyone}
        started = fan_out_results(
            [a.target for a in everyone], lambda t: self._start(by_name[t.name])
        )
        for name, exc in started.failed.items():
            by_name[name].fail("start", f"the relay agent did not start: {reason(name, exc)}")
        self._plan_layers([a for a in everyone if a.state == "running"])
        feeders = []
        for chain in agents:
            ready = [a for a in chain if a.state == "running"]
            self._link(ready)
            ready = [a for a in ready if a.state == "running"]
            if ready:
                feeder = threading.Thread(target=self._feed, args=(ready[0],), daemon=True)
                feeder.start()
                feeders.append(feeder)
        try:
            self._watch(everyone)
        finally:
            self._stop(everyone)
        if self.save_error is not None:
            raise self.save_error
        return everyone

    def _plan_layers(self, agents: list[_Agent]) -> None:
        """What each node loads; the first round also decides what the stream carries."""
        if self.wanted is None:
            self.wanted = {d for a in agents for d in a.need}
            self.spool.set_wanted(self.wanted)
        for agent in agents:
            beyond = [d for d in agent.need if d not in self.wanted]
            if beyond:
                agent.fail(
                    "start",
                    f"it lacks layer {beyond[0]}, which no node lacked when this distribution "
                    "began (its daemon changed meanwhile): run it again",
                )

    def _start(self, agent: _Agent) -> None:
        target = agent.target
        agent.pipe = target.runner.open_pipe(
            [self.options.python, "-c", AGENT_SOURCE],
            # longer than the head's patience with its next node (see _link)
            write_timeout=self.options.stall_s + HOP_SLACK_S * (self.hops + 1),
        )
        hop = self.options.corrupt_hop
        conf = {
            "image": self.image_id,
            "tag": self.tag,
            "docker": docker_argv(target.docker_host),
            "listen": target.relay_address or "127.0.0.1",
            "token": agent.token,
            "stall_s": self.options.stall_s,
            "deadline_s": self.timeout_s,
            "corrupt_forward_at": hop[1]
            if hop and hop[0] == agent.name and self.round == 1
            else None,
        }
        agent.pipe.write(json.dumps(conf).encode() + b"\n")
        deadline = time.monotonic() + max(self.options.stall_s, 30.0)
        while time.monotonic() < deadline:
            for line in agent.pipe.lines(0.5):
                event = _event(line)
                if event.get("ev") == "ready":
                    present = present_chain_ids(event.get("layers") or [])
                    agent.need = missing_layers(self.diff_ids, present)
                    agent.port, agent.state = int(event["port"]), "running"
                    agent.last_word = time.monotonic()
                    return
                if event.get("ev") == "failed":
                    agent.fail(str(event.get("kind", "start")), str(event.get("why")))
                    return
            if agent.pipe.poll() is not None:
                raise ImageError(
                    f"it exited: {stderr_tail(agent.pipe.stderr_text()) or 'no output'}"
                )
        raise ImageError(f"no answer within {max(self.options.stall_s, 30.0):g}s")

    def _link(self, chain: list[_Agent]) -> None:
        """Tell each agent where its stream comes from and where it goes."""
        for i, agent in enumerate(chain):
            after = chain[i + 1] if i + 1 < len(chain) else None
            plan = {
                "need": agent.need,
                "source": "stdin" if i == 0 else "listen",
                "forward": None
                if after is None
                else {
                    "host": after.target.relay_address or "127.0.0.1",
                    "port": after.port,
                    "token": after.token,
                },
                "send_timeout_s": self.options.stall_s + HOP_SLACK_S * (len(chain) - 1 - i),
            }
            try:
                assert agent.pipe is not None
                agent.pipe.write(json.dumps(plan).encode() + b"\n")
            except NodeError as exc:
                agent.fail(
                    "start", f"the relay agent did not take its plan: {reason(agent.name, exc)}"
                )

    def _feed(self, head: _Agent) -> None:
        """The build host's stream into the head of a chain, over its SSH connection."""
        assert head.pipe is not None
        try:
            for chunk in self.spool.stream():
                if head.state != "running":
                    return
                head.pipe.write(chunk)
                with self.lock:
                    self.source_bytes += len(chunk)
        except ImageError as exc:
            self.save_error = exc
        except NodeError as exc:
            self.incidents.append(
                f"round {self.round}: sending to {head.name} failed: {reason(head.name, exc)}"
            )

    def _watch(self, agents: list[_Agent]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while any(a.state == "running" for a in agents) and self.save_error is None:
            for agent in agents:
                if agent.state == "running":
                    self._listen_to(agent)
            if time.monotonic() > deadline:
                for agent in agents:
                    agent.fail("timeout", f"not done within {self.timeout_s:g}s")
            time.sleep(POLL_S)

    def _listen_to(self, agent: _Agent) -> None:
        assert agent.pipe is not None
        self._events(agent, agent.pipe.lines(0))
        try:
            code = agent.pipe.poll()
        except NodeError as exc:
            agent.fail("lost", reason(agent.name, exc))
            return
        if code is not None:
            self._events(agent, agent.pipe.lines(0))
            tail = stderr_tail(agent.pipe.stderr_text())
            agent.fail("exited", f"its relay agent exited with {code}: {tail or 'no output'}")
        elif time.monotonic() - agent.last_word > self.options.stall_s:
            agent.fail(
                "lost",
                f"no word from its relay agent for {self.options.stall_s:g}s "
                "(is the node or its link down?)",
            )

    def _events(self, agent: _Agent, lines: list[str]) -> None:
        if lines:
            agent.last_word = time.monotonic()
        for line in lines:
            event = _event(line)
            kind = event.get("ev")
            if kind in ("status", "done"):
                agent.received = int(event.get("received", agent.received))
                if self.progress is not None:
                    self.progress(agent.name, agent.received, self._total())
            if kind == "done":
                agent.state, agent.ended = "done", time.monotonic()
            elif kind == "failed":
                agent.fail(str(event.get("kind", "internal")), str(event.get("why", "?")))
            elif kind == "forward_lost":
                self.incidents.append(
                    f"round {self.round}: {agent.name} could not pass the stream on: "
                    f"{event.get('why')}"
                )

    def _total(self) -> int:
        return self.spool.stream_bytes if self.spool.finished else self.estimate

    def _stop(self, agents: list[_Agent]) -> None:
        """Every agent ends: a finished one exits by itself (given a moment); the others are
        killed (a node that cannot be reached ends its own agent when its stream stalls)."""
        killers = []
        for agent in agents:
            if agent.pipe is None:
                continue
            if agent.kind == "lost":
                agent.pipe.close()  # unreachable: its agent ends itself when its stream stalls
            elif not _ended(agent.pipe, 5.0 if agent.state == "done" else 0.0):
                thread = threading.Thread(target=_kill, args=(agent.pipe,), daemon=True)
                thread.start()
                killers.append(thread)
            else:
                agent.pipe.close()
        for thread in killers:
            thread.join(10)


def _ended(pipe: Pipe, wait_s: float) -> bool:
    try:
        return pipe.wait(wait_s) is not None
    except NodeError:
        return True  # the connection is gone: nothing to kill from here


def _kill(pipe: Pipe) -> None:
    try:
        pipe.kill_tree(2.0)
    except (NodeError, ValueError):
        pipe.close()


def _event(line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def relay_to_nodes(
    api: docker.APIClient,
    tag: str,
    image_id: str,
    targets: Sequence[NodeTarget],
    options: RelayOptions | None = None,
    progress: ProgressFn | None = None,
    timeout_s: float = 3600,
) -> RelayOutcome:
    """Put `tag` (image `image_id` on the build host `api`) on every target by relay; never
    raises for a node: each one is in `transfers` or in `failures`."""
    options = options or RelayOptions()
    inspected = api.inspect_image(tag)
    diff_ids = list(inspected["RootFS"]["Layers"])
    estimate = int(inspected.get("Size") or 0)
    # docker save starts exporting at once; what to keep is known when the agents answered.
    spool = SaveSpool(
        lambda: api.get_image(tag, chunk_size=SAVE_CHUNK), image_id, None, estimate, diff_ids
    )
    relay = _Relay(tag, image_id, diff_ids, spool, options, progress, timeout_s, estimate)
    relay.hops = len(targets)
    failures: dict[str, str] = {}
    pending = list(targets)
    transfers: dict[str, Transfer] = {}
    try:
        spool.start()
        for number in range(1, max(1, options.rounds) + 1):
            if not pending:
                break
            last = number == options.rounds and number > 1
            chains = [[t] for t in pending] if last else [list(pending)]
            agents = relay.run_round(chains)
            pending = []
            for agent in agents:
                if agent.state == "done":
                    transfers[agent.name] = Transfer(
                        agent.name, agent.received, agent.ended - agent.started
                    )
                    continue
                why = f"relay round {number}: {agent.why}"
                if agent.kind in RETRIED and number < options.rounds:
                    relay.incidents.append(f"{agent.name}: {why} (fed again in round {number + 1})")
                    pending.append(agent.target)
                else:
                    failures[agent.name] = why
        stream_bytes = spool.stream_bytes
    finally:
        spool.close()
    return RelayOutcome(
        transfers=transfers,
        failures=failures,
        incidents=relay.incidents,
        layers=list(spool.layers),
        payload_bytes=spool.payload_bytes,
        stream_bytes=stream_bytes,
        source_bytes=relay.source_bytes,
        rounds=relay.round,
    )
