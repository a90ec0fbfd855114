"""The relay stream without a daemon: the build host's spool (docker save -> records) and the
node agent (records -> a `docker load` tar, passed on to the next node), run as real processes
through local pipes, with tests/support/fake_docker.py standing in for the docker CLI."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

from orchestrator.errors import ImageError
from orchestrator.images import relay_source
from orchestrator.images.layers import chain_ids, missing_layers, present_chain_ids
from orchestrator.images.relay import AGENT_SOURCE
from orchestrator.images.relay_source import SaveSpool
from orchestrator.nodeside.relay_agent import CONFIG, END, HEADER, LAYER, MAGIC, pack_header
from orchestrator.specs import NodeSpec
from orchestrator.transport.local import LocalTransport

FAKE_DOCKER = Path(__file__).resolve().parents[1] / "support" / "fake_docker.py"


def layer_tar(name: str, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(hashlib.sha256(name.encode()).digest() * (size // 32 + 1)))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Image:
    """Three layers, a config naming their diff ids, and a `docker save` of them (members in
    name order, as Docker 20.10 writes them)."""

    def __init__(self, sizes: tuple[int, ...] = (40_000, 3_000, 700)) -> None:
        self.layers = [layer_tar(f"file{i}", size) for i, size in enumerate(sizes)]
        self.diff_ids = [sha(layer) for layer in self.layers]
        self.config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            }
        ).encode()
        self.id = sha(self.config)

    def save(self, v1_names: bool = False, tamper: int | None = None) -> bytes:
        """v1_names: folders named and described as Docker 20.10 does (v1 ids); tamper: that
        layer's bytes differ from its diff id."""
        folders = (
            self.v1_folders() if v1_names else [(f"v1-{d[7:19]}", b"{}") for d in self.diff_ids]
        )
        members = {}
        for i, ((folder, v1_json), layer) in enumerate(zip(folders, self.layers)):
            members[f"{folder}/json"] = v1_json
            members[f"{folder}/layer.tar"] = layer[:-1] + b"!" if i == tamper else layer
        members[self.id[7:] + ".json"] = self.config
        members["manifest.json"] = b"[]"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in sorted(members):
                info = tarfile.TarInfo(name)
                info.size = len(members[name])
                tar.addfile(info, io.BytesIO(members[name]))
        return buf.getvalue()

    def v1_folders(self) -> list[tuple[str, bytes]]:
        """(v1 id, json) per layer, as moby's image/v1.CreateID and saveLayer make them."""
        folders, parent = [], ""
        for chain in chain_ids(self.diff_ids):
            fields = {"created": '"1970-01-01T00:00:00Z"', "layer_id": json.dumps(chain)}
            if parent:
                fields["parent"] = json.dumps("sha256:" + parent)
            body = ",".join(f"{json.dumps(k)}:{fields[k]}" for k in sorted(fields))
            v1 = hashlib.sha256(("{" + body + "}").encode()).hexdigest()
            saved = {"id": v1, **({"parent": parent} if parent else {})}
            saved.update({"created": "1970-01-01T00:00:00Z", "os": "linux"})
            folders.append((v1, json.dumps(saved, separators=(",", ":")).encode()))
            parent = v1
        return folders


def spooled(image: Image, wanted: list[str], v1_names: bool = False) -> bytes:
    data = image.save(v1_names)
    spool = SaveSpool(
        lambda: [data[i : i + 5000] for i in range(0, len(data), 5000)],
        image.id,
        wanted,
        diff_ids=image.diff_ids,
    )
    try:
        spool.start()
        return b"".join(c for c in spool.stream() if c != pack_header(b"K"))
    finally:
        spool.close()


def records(stream: bytes) -> list[tuple[bytes, int, str]]:
    assert stream.startswith(MAGIC)
    pos, found = len(MAGIC), []
    while pos < len(stream):
        kind, length, digest = HEADER.unpack_from(stream, pos)
        pos += HEADER.size + length
        found.append((kind, length, "sha256:" + digest.hex() if kind in (LAYER, CONFIG) else ""))
    assert pos == len(stream)
    return found


# -- the build host's spool ------------------------------------------------------------------


def test_the_spool_keeps_only_the_wanted_layers_then_the_config_then_the_end():
    image = Image()
    stream = spooled(image, image.diff_ids[1:])
    # Layers in docker save's order (by v1 name), the config after the last layer, then E.
    order = sorted(image.diff_ids[1:], key=lambda d: d[7:19])
    assert records(stream) == [
        *((LAYER, len(image.layers[image.diff_ids.index(d)]), d) for d in order),
        (CONFIG, len(image.config), image.id),
        (END, 0, ""),
    ]


def test_layers_larger_than_memory_are_spooled_on_disk_with_the_same_result(monkeypatch):
    image = Image()
    small = spooled(image, image.diff_ids)
    monkeypatch.setattr(relay_source, "IN_MEMORY_MAX", 1024)  # every layer through the file
    assert spooled(image, image.diff_ids) == small
    assert spooled(image, [image.diff_ids[0]]).count(MAGIC) == 1


def test_folders_told_by_their_v1_json_give_the_same_stream_and_are_checked_all_the_same():
    image = Image()
    for wanted in (image.diff_ids, image.diff_ids[2:], []):
        told, hashed = spooled(image, wanted, v1_names=True), spooled(image, wanted)
        # The same records (in docker save's order, which follows the folder names) and bytes.
        assert sorted(records(told)) == sorted(records(hashed))
        assert records(told)[-2:] == records(hashed)[-2:] and len(told) == len(hashed)
    data = image.save(v1_names=True, tamper=1)
    spool = SaveSpool(lambda: [data], image.id, image.diff_ids, diff_ids=image.diff_ids)
    try:
        spool.start()
        with pytest.raises(ImageError, match=f"gave layer {image.diff_ids[1]} other content"):
            list(spool.stream())
    finally:
        spool.close()
    # A tampered layer no node lacks is skipped unread: nothing to check, nothing sent.
    data = image.save(v1_names=True, tamper=0)
    spool = SaveSpool(lambda: [data], image.id, image.diff_ids[1:], diff_ids=image.diff_ids)
    try:
        spool.start()
        assert records(b"".join(spool.stream()))[-1] == (END, 0, "")
    finally:
        spool.close()


def test_a_layer_the_save_stream_lacks_fails_the_stream_naming_it():
    image = Image()
    stranger = sha(b"not in this image")
    spool = SaveSpool(lambda: [image.save()], image.id, [image.diff_ids[0], stranger])
    try:
        spool.start()
        with pytest.raises(ImageError, match=f"did not contain layer {stranger}"):
            list(spool.stream())
    finally:
        spool.close()


def test_while_docker_save_is_silent_readers_get_keepalives():
    image = Image()
    data = image.save()

    def slow_save():
        time.sleep(0.5)
        yield data

    spool = SaveSpool(slow_save, image.id, image.diff_ids).start()
    try:
        chunks = list(spool.stream(keepalive_s=0.05))
    finally:
        spool.close()
    assert chunks.count(pack_header(b"K")) >= 3
    assert records(b"".join(c for c in chunks if c != pack_header(b"K")))[-1] == (END, 0, "")


# -- the node agent ----------------------------------------------------------------------------


class Agent:
    """relay_agent.py as the controller runs it, on this machine, with a fake docker."""

    def __init__(
        self,
        state: Path,
        image: Image,
        holds: list[list[str]] | None = None,
        corrupt_at: int | None = None,
        listen: str = "127.0.0.1",
        stall_s: float = 5,
    ):
        """`holds`: the diff ids of each image the node's (fake) daemon has already."""
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        held = {sha(json.dumps(layers).encode()): layers for layers in holds or []}
        (state / "images.json").write_text(json.dumps(held))
        self.pipe = LocalTransport(NodeSpec("local", "local")).open_pipe(
            [sys.executable, "-c", AGENT_SOURCE]
        )
        self.token = hashlib.sha256(str(state).encode()).hexdigest()[:32]
        self.send(
            image=image.id,
            tag="orchestrator/test:1",
            docker=[sys.executable, str(FAKE_DOCKER), str(state)],
            listen=listen,
            token=self.token,
            stall_s=stall_s,
            deadline_s=60,
            corrupt_forward_at=corrupt_at,
        )
        self.events: list[dict] = []
        self.ready = self.wait_for("ready", "failed")
        self.port = self.ready.get("port")
        # What the controller does with the listing: the layers this node lacks.
        self.need = missing_layers(image.diff_ids, present_chain_ids(self.ready.get("layers", [])))

    def plan(self, **fields: object) -> None:
        """Line 2: what to load, where the stream comes from and goes."""
        self.send(need=self.need, **fields)

    def send(self, **fields: object) -> None:
        self.pipe.write(json.dumps(fields).encode() + b"\n")

    def wait_for(self, *kinds: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.pipe.lines(0.2):
                self.events.append(json.loads(line))
                if self.events[-1]["ev"] in kinds:
                    return self.events[-1]
        raise AssertionError(
            f"no {kinds} event; got {self.events}; stderr {self.pipe.stderr_text()}"
        )

    def load_members(self) -> dict[str, bytes]:
        (tar_path,) = self.state.glob("load-*.tar")
        with tarfile.open(tar_path) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}

    def tags(self) -> str:
        path = self.state / "tags"
        return path.read_text() if path.exists() else ""


def test_an_agent_loads_only_the_layers_it_lacks_with_a_manifest_naming_all_and_tags_after_the_check(
    tmp_path,
):
    image = Image()
    agent = Agent(tmp_path / "n1", image, holds=[image.diff_ids[:1]])
    assert agent.ready["layers"] == [image.diff_ids[:1]] and agent.need == image.diff_ids[1:]
    agent.plan(source="stdin", forward=None)
    stream = spooled(image, image.diff_ids)
    agent.pipe.write(stream)
    done = agent.wait_for("done", "failed")
    assert done["ev"] == "done", done
    assert done["received"] == len(stream)
    assert agent.pipe.wait(10) == 0
    members = agent.load_members()
    assert members == {
        image.diff_ids[1][7:] + "/layer.tar": image.layers[1],
        image.diff_ids[2][7:] + "/layer.tar": image.layers[2],
        image.id[7:] + ".json": image.config,
        "manifest.json": json.dumps(
            [
                {
                    "Config": image.id[7:] + ".json",
                    "RepoTags": None,
                    "Layers": [d[7:] + "/layer.tar" for d in image.diff_ids],
                }
            ]
        ).encode(),
    }
    assert agent.tags() == f"{image.id} orchestrator/test:1\n"


def test_two_agents_in_a_chain_each_load_what_they_lack_from_one_stream(tmp_path):
    image = Image()
    second = Agent(tmp_path / "n2", image)
    first = Agent(tmp_path / "n1", image, holds=[image.diff_ids[:2], image.diff_ids[:1]])
    assert (first.need, second.need) == (image.diff_ids[2:], image.diff_ids)
    second.plan(source="listen", forward=None)
    first.plan(
        source="stdin",
        forward={"host": "127.0.0.1", "port": second.port, "token": second.token},
        send_timeout_s=5,
    )
    stream = spooled(image, image.diff_ids)
    first.pipe.write(stream)
    assert first.wait_for("done", "failed")["ev"] == "done"
    assert second.wait_for("done", "failed") == {
        "ev": "done",
        "received": len(stream),
        "loaded": second.events[-1]["loaded"],
        "layers": sorted(image.diff_ids),
        "cpu_s": second.events[-1]["cpu_s"],
    }
    assert sorted(first.load_members()) == sorted(
        [image.diff_ids[2][7:] + "/layer.tar", image.id[7:] + ".json", "manifest.json"]
    )
    assert len(second.load_members()) == 5
    assert second.tags() == first.tags() == f"{image.id} orchestrator/test:1\n"


def test_a_bit_flipped_on_a_hop_fails_the_next_node_which_loads_and_tags_nothing(tmp_path):
    image = Image()
    stream = spooled(image, image.diff_ids)
    flip_at = len(MAGIC) + HEADER.size + 100  # inside the first layer's payload
    second = Agent(tmp_path / "n2", image)
    first = Agent(tmp_path / "n1", image, corrupt_at=flip_at)
    second.plan(source="listen", forward=None)
    first.plan(
        source="stdin", forward={"host": "127.0.0.1", "port": second.port, "token": second.token}
    )
    first.pipe.write(stream)
    assert first.wait_for("done", "failed")["ev"] == "done"  # it got good bytes
    failed = second.wait_for("done", "failed")
    assert failed["ev"] == "failed" and failed["kind"] == "corrupt"
    assert "the stream is corrupted: a L record" in failed["why"]
    assert second.pipe.wait(10) == 1
    assert second.tags() == "" and not (second.state / "images").exists()


def test_a_stream_that_stops_before_its_end_is_not_loaded(tmp_path):
    image = Image()
    agent = Agent(tmp_path / "n1", image)
    agent.plan(source="stdin", forward=None)
    stream = spooled(image, image.diff_ids)
    agent.pipe.write(stream[: len(stream) - 200])  # the config's last bytes and E never come
    agent.pipe.close_stdin()
    failed = agent.wait_for("done", "failed")
    assert failed["kind"] == "upstream" and "before its end" in failed["why"]
    assert agent.tags() == "" and not (agent.state / "images").exists()


def test_a_connection_without_the_token_is_not_taken_for_the_upstream(tmp_path):
    import socket

    image = Image()
    agent = Agent(tmp_path / "n2", image)
    agent.plan(source="listen", forward=None)
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as intruder:
        intruder.sendall(b"0" * 32 + b"\n")
        assert intruder.recv(3) == b""  # closed without OK
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as upstream:
        upstream.sendall(agent.token.encode() + b"\n")
        assert upstream.recv(3) == b"OK\n"
        upstream.sendall(spooled(image, image.diff_ids))
        upstream.shutdown(socket.SHUT_WR)
        assert agent.wait_for("done", "failed")["ev"] == "done"


def test_an_agent_whose_daemon_does_not_answer_says_so_before_anything_moves(tmp_path):
    image = Image()
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "down").touch()
    agent = Agent(tmp_path / "n1", image)
    assert agent.ready["ev"] == "failed" and agent.ready["kind"] == "load"
    assert agent.ready["why"] == (
        "cannot ask the Docker daemon: Cannot connect to the Docker daemon at unix:///fake.sock"
    )
    assert agent.pipe.wait(10) == 1
