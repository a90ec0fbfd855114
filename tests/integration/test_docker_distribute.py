"""Distribution without a registry, to real per-node Docker daemons over real SSH, only where the
image is missing: the star (`docker save` streamed into `docker load` on every node), and the
relay (the default) through the same commands. tests/integration/test_image_relay.py tests the
relay on shaped links."""

import re
import subprocess
from dataclasses import replace

import pytest

from orchestrator.errors import NodeError
from orchestrator.images.build import BuildObserver, build_image
from orchestrator.images.distribute import check_presence, distribute
from orchestrator.images.remote_api import open_api_over_ssh
from orchestrator.images.workflow import targets
from orchestrator.transport import NodeSession

pytestmark = [pytest.mark.docker, pytest.mark.sshd]


def test_the_star_sends_only_where_missing_and_a_second_time_moves_nothing(
    docker_nodes, small_image, docker_api
):
    cluster = docker_nodes(2)
    image = small_image("orchdist", payload_mb=48)
    for daemon in cluster.daemons:
        daemon.remove_image(image.spec.tag)
    seen = []
    with NodeSession(cluster.nodes, cluster.ssh) as session:
        first = distribute(
            docker_api,
            image.spec.tag,
            targets(cluster.nodes, session.transports),
            progress=lambda node, sent, total: seen.append((node, sent, total)),
            strategy="star",
        )
        assert first.method == "stream"
        assert first.source_bytes == sum(t.bytes_sent for t in first.transfers.values())
        assert set(first.transfers) == {n.name for n in cluster.nodes}
        for transfer in first.transfers.values():
            assert transfer.bytes_sent > 48e6
        assert {node for node, _, _ in seen} == {n.name for n in cluster.nodes}
        # Both nodes were served at once, from one stream: each began before the other ended.
        order = [node for node, _, _ in seen]
        a, b = (n.name for n in cluster.nodes)
        assert order.index(a) < len(order) - 1 - order[::-1].index(b)
        assert order.index(b) < len(order) - 1 - order[::-1].index(a)
        for daemon in cluster.daemons:
            found = daemon.docker(
                "image", "inspect", "--format", "{{.Id}}", image.spec.tag
            ).stdout.strip()
            assert found == image.built.image_id

        second = distribute(docker_api, image.spec.tag, targets(cluster.nodes, session.transports))
        assert second.method == "none" and second.transfers == {} and second.bytes_moved == 0
        # (How long deciding that takes is measured by bench/bench_image_distribution.py.)
        assert set(second.presence) == {n.name for n in cluster.nodes}
        assert all(p.image_id == image.built.image_id for p in second.presence.values())

        cluster.daemons[1].remove_image(image.spec.tag)
        third = distribute(
            docker_api, image.spec.tag, targets(cluster.nodes, session.transports), strategy="star"
        )
        assert set(third.transfers) == {cluster.nodes[1].name}


def test_a_changed_workload_is_a_new_tag_that_is_sent_again(docker_nodes, small_image, docker_api):
    cluster = docker_nodes(2)
    old = small_image("orchdist2")
    new = small_image("orchdist2", workload_change="a changed line")
    assert new.spec.tag != old.spec.tag and new.built.image_id != old.built.image_id
    with NodeSession(cluster.nodes, cluster.ssh) as session:
        nodes = targets(cluster.nodes, session.transports)
        distribute(docker_api, old.spec.tag, nodes)
        presence = check_presence(nodes, new.spec.tag)
        assert set(presence) == {n.name for n in cluster.nodes}
        assert all(p.image_id is None for p in presence.values())
        report = distribute(docker_api, new.spec.tag, nodes)
        assert set(report.transfers) == {n.name for n in cluster.nodes}


def test_a_node_that_cannot_load_is_named_and_the_others_still_get_the_image(
    docker_nodes, small_image, docker_api
):
    cluster = docker_nodes(2)
    image = small_image("orchdist3", payload_mb=8)
    for daemon in cluster.daemons:
        daemon.remove_image(image.spec.tag)
    broken = replace(cluster.nodes[1], docker_host="unix:///run/orch-test/no-such-daemon.sock")
    nodes = (cluster.nodes[0], broken)
    with NodeSession(nodes, cluster.ssh) as session:
        with pytest.raises(NodeError) as err:
            distribute(docker_api, image.spec.tag, targets(nodes, session.transports))
    assert broken.name in err.value.failures
    assert "no-such-daemon.sock" in err.value.failures[broken.name]
    assert cluster.nodes[0].name not in err.value.failures
    assert (
        cluster.daemons[0].docker("image", "inspect", image.spec.tag, check=False).returncode == 0
    )


def _cluster_file(tmp_path, cluster, vendor, images_root):
    lines = [
        "[cluster]",
        'name = "docker-test"',
        f'vendor = "{vendor}"',
        'runtime = "docker"',
        "[ssh]",
        f"known_hosts = [{', '.join(repr(k) for k in cluster.ssh.known_hosts)}]".replace("'", '"'),
    ]
    for node in cluster.nodes:
        lines += [
            "[[nodes]]",
            f'name = "{node.name}"',
            f'address = "{node.address}"',
            f"port = {node.port}",
            f'user = "{node.user}"',
            f'key_file = "{node.key_file}"',
            f'docker_host = "{node.docker_host}"',
        ]
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_ls_and_push_to_nodes(docker_nodes, small_image, cli_snapshot, docker_api, tmp_path):
    cluster = docker_nodes(2)
    image = small_image("orchcli")  # the profile (data) and its wheel; the CLI builds its own tag
    cluster_file = _cluster_file(tmp_path, cluster, "orchcli", image.images_root)
    env = {"ORCHESTRATOR_IMAGES_DIR": str(image.images_root)}
    db = f"sqlite:///{tmp_path / 'results.db'}"

    def cli(*args):
        return cli_snapshot("--cluster", str(cluster_file), "--db", db, *args, env=env)

    assert cli("db", "upgrade").returncode == 0
    made = cli("image", "build")
    assert made.returncode == 0, made.stderr
    tag = made.stdout.strip()
    tags = [tag]
    try:
        before = cli("image", "ls")
        assert before.returncode == 0, before.stderr
        assert before.stdout.splitlines()[0] == f"image {tag}"
        assert before.stdout.count("missing") == 2 and before.stdout.count("present") == 1

        pushed = cli("image", "push-to-nodes")
        assert pushed.returncode == 0, pushed.stderr
        for node in cluster.nodes:
            assert f"{node.name}: received" in pushed.stderr
        # The default; earlier tests may have left the base layer on the nodes.
        assert re.search(r"by relay: [1-3] layer\(s\) and the config", pushed.stderr)
        after = cli("image", "ls")
        assert after.stdout.count("present") == 3 and "missing" not in after.stdout
        again = cli("image", "push-to-nodes")
        assert again.returncode == 0 and again.stderr.count("already had") == 2

        # A new workload makes a new current tag; prune then drops the old one everywhere.
        with open(cli_snapshot.workload / "faster_rcnn" / "__init__.py", "a") as handle:
            handle.write("# next version\n")
        remade = cli("image", "build")
        assert remade.returncode == 0, remade.stderr
        new_tag = remade.stdout.strip()
        tags.append(new_tag)
        assert new_tag != tag
        starred = cli("image", "push-to-nodes", "--distribution", "star")
        assert starred.returncode == 0, starred.stderr
        assert "by star: the build host sent" in starred.stderr
        dry = cli("image", "prune", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.count(f"would remove {tag}") == 3 and new_tag not in dry.stdout
        pruned = cli("image", "prune")
        assert pruned.returncode == 0, pruned.stderr
        assert pruned.stdout.count(f"removed {tag}") == 3
        assert docker_api.images(name=tag) == []
        for daemon in cluster.daemons:
            assert daemon.docker("image", "inspect", tag, check=False).returncode != 0
            assert daemon.docker("image", "inspect", new_tag, check=False).returncode == 0
    finally:
        for each in tags:
            subprocess.run(["docker", "rmi", "-f", each], capture_output=True)
            for daemon in cluster.daemons:
                daemon.remove_image(each)


def test_with_a_registry_the_build_host_pushes_once_and_nodes_pull(
    docker_nodes, small_image, docker_api, local_registry
):
    cluster = docker_nodes(2)
    image = small_image("orchreg", payload_mb=4)
    for daemon in cluster.daemons:
        daemon.remove_image(image.spec.tag)
    with NodeSession(cluster.nodes, cluster.ssh) as session:
        report = distribute(
            docker_api,
            image.spec.tag,
            targets(cluster.nodes, session.transports),
            registry=local_registry,
        )
    assert report.method == "registry" and set(report.transfers) == {n.name for n in cluster.nodes}
    for daemon in cluster.daemons:
        # Same image id as on the build host, under the content tag.
        found = daemon.docker(
            "image", "inspect", "--format", "{{.Id}}", image.spec.tag
        ).stdout.strip()
        assert found == image.built.image_id
        daemon.remove_image(f"{local_registry}/{image.spec.tag}")
    docker_api.remove_image(f"{local_registry}/{image.spec.tag}")


def test_a_node_can_be_the_build_host_over_ssh(docker_nodes, small_image, docker_api, base_image):
    """The docker SDK through the node's own SSH connection (`docker system dial-stdio`): build
    on node 1's daemon, then distribute from there to node 2."""
    cluster = docker_nodes(2)
    local = small_image("orchremote")  # the profile and workload; built here too, for comparison
    node1, node2 = cluster.nodes
    with NodeSession(cluster.nodes, cluster.ssh) as session:
        distribute(docker_api, base_image, targets([node1], session.transports))  # the vendor base
        cluster.daemons[0].remove_image(local.spec.tag)
        cluster.daemons[1].remove_image(local.spec.tag)
        remote = open_api_over_ssh(session.transports[node1.name], node1.docker_host)
        try:
            assert remote.version()["ApiVersion"]
            lines = []
            built = build_image(local.spec, remote, observer=BuildObserver(on_line=lines.append))
            assert not built.reused and any(line.startswith("Step 1/") for line in lines)
            assert (
                cluster.daemons[0]
                .docker("image", "inspect", local.spec.tag, check=False)
                .returncode
                == 0
            )
            report = distribute(remote, local.spec.tag, targets([node2], session.transports))
            assert set(report.transfers) == {node2.name}
            assert report.image_id == built.image_id
        finally:
            remote.close()
            for daemon in cluster.daemons:
                daemon.remove_image(local.spec.tag)
            cluster.daemons[0].remove_image(base_image)


def test_ensure_image_builds_records_and_distributes_once(
    docker_nodes, small_image, docker_api, monkeypatch, tmp_path
):
    """What `submit` calls: build if needed, record in the store, put on every node."""
    from sqlalchemy import text

    from orchestrator.images.workflow import ensure_image
    from orchestrator.specs import ClusterSpec
    from orchestrator.store import open_store

    cluster_nodes = docker_nodes(2)
    profile_only = small_image("orchensure")  # its images/ folder: a vendor added as data
    docker_api.remove_image(profile_only.spec.tag, force=True)  # ensure_image builds it anew
    monkeypatch.setenv("ORCHESTRATOR_IMAGES_DIR", str(profile_only.images_root))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cluster = ClusterSpec(
        "t", "orchensure", cluster_nodes.nodes, cluster_nodes.ssh, runtime="docker"
    )
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}", create=True)
    tags = []
    try:
        with NodeSession(cluster.nodes, cluster.ssh) as session:
            first = ensure_image(cluster, cluster.nodes, session.transports, store=store)
            tags.append(first.tag)
            assert not first.built.reused and first.built.build_seconds > 0
            assert first.distribution is not None
            assert first.distribution.method == "relay"  # what submit uses by default
            assert set(first.distribution.transfers) == {n.name for n in cluster.nodes}
            second = ensure_image(cluster, cluster.nodes, session.transports, store=store)
        assert second.tag == first.tag and second.built.reused
        assert second.distribution is not None and second.distribution.bytes_moved == 0
        with store.reading() as conn:
            rows = conn.execute(
                text("SELECT tag, image_id, build_seconds, build_log_path FROM images")
            ).all()
            wheels = conn.execute(text("SELECT filename FROM image_wheels")).scalars().all()
        assert [(r.tag, r.image_id) for r in rows] == [(first.tag, first.built.image_id)]
        assert rows[0].build_seconds == first.built.build_seconds  # kept when reused
        assert rows[0].build_log_path == first.built.log_path
        assert wheels == ["orchtest-1.0-py3-none-any.whl"]
    finally:
        store.close()
        for tag in tags:
            subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
            for daemon in cluster_nodes.daemons:
                daemon.remove_image(tag)
