"""Distribution by relay on the namespace testbed: 4 nodes, each with its own network namespace,
sshd and dockerd, on 200 Mbit/s links through a bridge; the build host (this machine's daemon,
the controller's sockets in a namespace of their own) on an equally shaped link. The image has
three layers and 126 MB: about 5 s on one link."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.errors import NodeError
from orchestrator.images.build import image_id
from orchestrator.images.distribute import DistributionReport, RelayOptions, distribute
from orchestrator.images.workflow import targets
from orchestrator.nodeside.relay_agent import HEADER
from orchestrator.transport import NodeSession
from tests.support.docker_fixtures import layered_image
from tests.support.netns_testbed import Testbed

pytestmark = [pytest.mark.docker, pytest.mark.sshd, pytest.mark.netns]


@dataclass
class Built:
    tag: str
    image_id: str
    diff_ids: list[str]


@pytest.fixture(scope="module")
def images(docker_api: Any) -> Iterator[list[Built]]:
    """Two 126 MB images of three layers (an incompressible 100 MB base, a 20 MB layer, the
    workload), the second with one workload file changed."""
    made = []
    for change in ("", "one changed line"):
        tag, diff_ids = layered_image(docker_api, "relay", (100, 20), change)
        made.append(Built(tag, image_id(docker_api, tag) or "", diff_ids))
    yield made
    for image in made:
        docker_api.remove_image(image.tag, force=True)


@pytest.fixture(scope="module")
def bed(testbed: Any) -> Testbed:
    return testbed(4, 200)


def empty(bed: Testbed) -> None:
    """No image and no layer on any node."""
    for node in bed.nodes:
        daemon = bed.daemon(node.name)
        ids = daemon.docker("image", "ls", "--all", "--quiet", "--no-trunc").stdout.split()
        if ids:
            daemon.docker("rmi", "--force", *sorted(set(ids)), check=False)
        assert daemon.docker("image", "ls", "--all", "--quiet").stdout.strip() == ""


def node_image(bed: Testbed, node: str, ref: str) -> str | None:
    found = bed.daemon(node).docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def relay(bed: Testbed, api: Any, tag: str, **kwargs: Any) -> DistributionReport:
    with bed.on_build_host():
        with NodeSession(bed.nodes, bed.ssh) as session:
            return distribute(api, tag, targets(bed.nodes, session.transports), **kwargs)


def traffic(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in before}


def keepalives(received: int, stream_bytes: int) -> int:
    """How many K records (sent while docker save was still exporting) a node got besides the
    stream; fails if the difference is not whole K records."""
    extra = received - stream_bytes
    assert extra >= 0 and extra % HEADER.size == 0, (received, stream_bytes)
    return extra // HEADER.size


def when_received(node: str, at_least: int, then: Any) -> Any:
    """A progress callback that calls `then()` once, when `node` has received `at_least` bytes."""
    fired = threading.Event()

    def progress(name: str, received: int, _total: int) -> None:
        if name == node and received >= at_least and not fired.is_set():
            fired.set()
            then()

    progress.fired = fired  # type: ignore[attr-defined]
    return progress


def test_four_nodes_get_the_image_by_relay_and_the_build_host_sends_it_once(
    bed, images, docker_api
):
    first = images[0]
    empty(bed)
    before = bed.counters()
    report = relay(bed, docker_api, first.tag)
    moved = traffic(before, bed.counters())
    assert report.method == "relay" and report.rounds == 1 and report.incidents == ()
    assert set(report.transfers) == {n.name for n in bed.nodes}
    assert sorted(report.layers) == sorted(first.diff_ids)  # every layer, each once
    for node in bed.nodes:
        assert node_image(bed, node.name, first.tag) == first.image_id
        assert keepalives(report.transfers[node.name].bytes_sent, report.stream_bytes) < 100
        assert moved[node.name][0] >= report.payload_bytes  # each node received it all
    # One copy leaves the build host (the star: four); TCP/IP and SSH add a few percent.
    assert report.payload_bytes <= moved["build-host"][1] <= 1.1 * report.payload_bytes
    assert keepalives(report.source_bytes, report.stream_bytes) < 100
    assert bed.wait_for_no_leftovers() == {}


def test_a_second_distribution_moves_only_the_changed_layer(bed, images, docker_api):
    old, new = images
    assert new.diff_ids[:-1] == old.diff_ids[:-1] and new.diff_ids[-1] != old.diff_ids[-1]
    relay(bed, docker_api, old.tag)  # the nodes have the old image (a no-op after the test above)
    before = bed.counters()
    report = relay(bed, docker_api, new.tag)
    moved = traffic(before, bed.counters())
    assert report.layers == (new.diff_ids[-1],)
    image_bytes = docker_api.inspect_image(old.tag)["Size"]
    for node in bed.nodes:
        assert node_image(bed, node.name, new.tag) == new.image_id
        assert keepalives(report.transfers[node.name].bytes_sent, report.stream_bytes) < 100
        assert moved[node.name][0] < 0.05 * image_bytes
    assert moved["build-host"][1] < 0.05 * image_bytes
    assert bed.wait_for_no_leftovers() == {}


def test_a_relay_node_whose_dockerd_dies_is_named_and_the_nodes_after_it_still_get_the_image(
    bed, images, docker_api
):
    image = images[0]
    empty(bed)
    progress = when_received("node2", 40_000_000, lambda: bed.kill_dockerd("node2"))
    try:
        with pytest.raises(NodeError) as err:
            relay(bed, docker_api, image.tag, progress=progress)
        assert progress.fired.is_set()
        assert set(err.value.failures) == {"node2"}
        assert "docker load failed" in err.value.failures["node2"], err.value.failures
        for node in ("node1", "node3", "node4"):
            assert node_image(bed, node, image.tag) == image.image_id
        assert bed.wait_for_no_leftovers() == {}
    finally:
        bed.restart_dockerd("node2")


def test_a_relay_node_whose_link_is_cut_is_named_and_the_nodes_after_it_are_fed_again(
    bed, images, docker_api
):
    image = images[0]
    empty(bed)
    progress = when_received("node2", 40_000_000, lambda: bed.cut("node2"))
    try:
        with pytest.raises(NodeError) as err:
            relay(
                bed, docker_api, image.tag, progress=progress, relay_options=RelayOptions(stall_s=5)
            )
        assert set(err.value.failures) == {"node2"}
        assert "no word from its relay agent for 5s" in err.value.failures["node2"]
        for node in ("node1", "node3", "node4"):
            assert node_image(bed, node, image.tag) == image.image_id
    finally:
        bed.restore("node2")
    # Its agent noticed the silence and ended by itself; nothing listens anywhere.
    assert bed.wait_for_no_leftovers(timeout=20) == {}
    assert node_image(bed, "node2", image.tag) is None


def test_a_corrupted_byte_on_one_hop_is_detected_and_that_node_tags_nothing(
    bed, images, docker_api
):
    image = images[0]
    empty(bed)
    flip = RelayOptions(corrupt_hop=("node3", 30_000_000), rounds=1)  # node3 -> node4
    with pytest.raises(NodeError) as err:
        relay(bed, docker_api, image.tag, relay_options=flip)
    assert set(err.value.failures) == {"node4"}
    assert "the stream is corrupted" in err.value.failures["node4"]
    assert node_image(bed, "node4", image.image_id) is None  # nothing loaded, no tag
    for node in ("node1", "node2", "node3"):
        assert node_image(bed, node, image.tag) == image.image_id
    # The next distribution feeds node4 alone, from the build host: it ends complete.
    report = relay(bed, docker_api, image.tag)
    assert set(report.transfers) == {"node4"} and report.rounds == 1
    assert node_image(bed, "node4", image.tag) == image.image_id
    assert bed.wait_for_no_leftovers() == {}


def test_a_corrupted_hop_is_recovered_in_the_next_round(bed, images, docker_api):
    image = images[0]
    empty(bed)
    report = relay(
        bed, docker_api, image.tag, relay_options=RelayOptions(corrupt_hop=("node2", 20_000_000))
    )
    assert report.rounds == 2
    assert any(
        i.startswith("node3: relay round 1: the stream is corrupted") for i in report.incidents
    )
    for node in bed.nodes:
        assert node_image(bed, node.name, image.tag) == image.image_id
    assert bed.wait_for_no_leftovers() == {}
