"""The relay agent's port does only what it must: idle or wrong connections do not hold up the
upstream, it listens on the node's own address or fails saying so, and an upstream that
trickles is stopped after the stall time. Real agent processes on loopback addresses, with
tests/support/fake_docker.py for the docker CLI (as tests/unit/test_image_relay_stream.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from orchestrator.nodeside.relay_agent import MAGIC
from tests.unit.test_image_relay_stream import Agent, Image, spooled


def test_idle_connections_do_not_hold_up_the_upstream(tmp_path: Path) -> None:
    image = Image()
    agent = Agent(tmp_path / "n1", image)
    agent.plan(source="listen", forward=None)
    idle = [socket.create_connection(("127.0.0.1", agent.port), timeout=5) for _ in range(3)]
    half = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
    half.sendall(agent.token[:8].encode())  # a token's start, then silence
    try:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as upstream:
            upstream.sendall(agent.token.encode() + b"\n")
            assert upstream.recv(3) == b"OK\n"
            accepted_s = time.monotonic() - began
            upstream.sendall(spooled(image, image.diff_ids))
            upstream.shutdown(socket.SHUT_WR)
            assert agent.wait_for("done", "failed")["ev"] == "done"
        assert accepted_s < 1.0, accepted_s  # not behind the idle ones' wait
        assert agent.tags() == f"{image.id} orchestrator/test:1\n"
        for conn in idle + [half]:  # the agent closed them all, none was taken for upstream
            conn.settimeout(5)
            assert conn.recv(3) == b""
    finally:
        for conn in idle + [half]:
            conn.close()


def test_idle_connections_are_dropped_after_the_token_time(tmp_path: Path) -> None:
    image = Image()
    agent = Agent(tmp_path / "n1", image)
    agent.plan(source="listen", forward=None)
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as idle:
        began = time.monotonic()
        assert idle.recv(3) == b""  # closed, not answered
        assert 1.5 < time.monotonic() - began < 4.0  # AUTH_S = 2 s


def test_an_address_that_is_not_the_nodes_own_fails_loudly(tmp_path: Path) -> None:
    image = Image()
    agent = Agent(tmp_path / "n1", image, listen="192.0.2.1")  # TEST-NET-1: no one's address
    assert agent.ready["ev"] == "failed" and agent.ready["kind"] == "listen"
    assert agent.ready["why"].startswith("cannot listen on 192.0.2.1: ")
    assert 'distribution = "star"' in agent.ready["why"]
    assert agent.pipe.wait(10) == 1


def test_it_listens_on_its_address_only(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "n1", Image(), listen="127.0.0.3")
    assert agent.ready["ev"] == "ready"
    with socket.create_connection(("127.0.0.3", agent.port), timeout=5):
        pass
    refused = socket.socket()
    try:
        assert refused.connect_ex(("127.0.0.2", agent.port)) != 0  # not bound to all addresses
    finally:
        refused.close()
        agent.pipe.close_stdin()


def test_a_trickling_upstream_is_stopped_after_the_stall_time(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "n1", Image(), stall_s=2)
    agent.plan(source="listen", forward=None)
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as upstream:
        upstream.sendall(agent.token.encode() + b"\n")
        assert upstream.recv(3) == b"OK\n"
        upstream.sendall(MAGIC)
        began = time.monotonic()
        failed = None
        for _ in range(40):  # a byte every 0.25 s: never silent for a second
            try:
                upstream.sendall(b"L")
            except OSError:
                break
            events = [json.loads(line) for line in agent.pipe.lines(0.25)]
            ended = [e for e in events if e["ev"] == "failed"]
            if ended:
                failed, event = time.monotonic() - began, ended[0]
                break
    assert failed is not None, agent.pipe.stderr_text()
    assert 1.5 < failed < 4.0, failed
    assert event["kind"] == "upstream" and "no whole record in 2s" in event["why"]
    assert agent.pipe.wait(10) == 1
    assert agent.tags() == ""
