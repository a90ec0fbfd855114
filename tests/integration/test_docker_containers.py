"""The Docker runtime on real daemons: a node's command in a container, and cleanup by label."""

import json
import signal
import subprocess
import time

import pytest

from orchestrator.errors import ImageError
from orchestrator.images.containers import (
    Mount,
    container_argv,
    find_containers,
    remove_run_containers,
)
from orchestrator.images.distribute import distribute
from orchestrator.images.profiles import load_profile
from orchestrator.images.workflow import targets
from orchestrator.specs import NodeSpec
from orchestrator.transport import NodeSession
from orchestrator.transport.local import LocalTransport

pytestmark = pytest.mark.docker

PROBE = """
import json, os, sys
out = sys.argv[1]
denied = False
try:
    open(os.path.join(sys.argv[2], "x"), "w")
except OSError:
    denied = True
with open(os.path.join(out, "probe.json"), "w") as handle:
    json.dump({"env": dict(os.environ), "cwd": os.getcwd(), "data_read_only": denied,
               "data": open(os.path.join(sys.argv[2], "input.txt")).read(),
               "python": sys.executable}, handle)
"""


def test_node_command_runs_in_a_container_with_env_mounts_and_labels(small_image, tmp_path):
    image = small_image("orchrun")
    profile = load_profile("orchrun", image.images_root)
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    out.mkdir()
    (data / "input.txt").write_text("coco")
    argv = container_argv(
        profile,
        image.spec.tag,
        "run-a",
        0,
        ["/opt/venv/bin/python", "-c", PROBE, str(out), str(data)],
        {"MASTER_ADDR": "127.0.0.1", "ORCH_TEST_VENDOR": "from-plan", "NOTE": "a b;$x"},
        [Mount(str(data), read_only=True), Mount(str(out))],
        workdir=str(out),
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads((out / "probe.json").read_text())
    assert probe["env"]["MASTER_ADDR"] == "127.0.0.1"
    assert probe["env"]["ORCH_TEST_VENDOR"] == "from-plan"  # the plan's env overrides the vendor's
    assert probe["env"]["NOTE"] == "a b;$x"  # passed as data, never through a shell
    assert probe["env"]["PYTHONPATH"] == "/opt/orchestrator"
    assert probe["cwd"] == str(out) and probe["data"] == "coco" and probe["data_read_only"] is True
    assert probe["python"] == "/opt/venv/bin/python"
    # --rm: the container is gone once the command ended.
    assert find_containers(LocalTransport(NodeSpec("here", "local")), "run-a") == []


def test_hostile_paths_are_mounted_as_themselves_or_refused(small_image, tmp_path):
    """Every character a path may hold but a carriage return reaches the daemon unchanged
    through --mount (':' broke `-v a:b`; ',' and '"' need the CSV quoting)."""
    image = small_image("orchpaths")
    profile = load_profile("orchpaths", image.images_root)
    data = tmp_path / 'da:ta,x "q" =y\nz'
    out = tmp_path / "ru:n, o=ut 'q'"
    data.mkdir()
    out.mkdir()
    (data / "input.txt").write_text("hostile")
    argv = container_argv(
        profile,
        image.spec.tag,
        "run-h",
        0,
        ["/opt/venv/bin/python", "-c", PROBE, str(out), str(data)],
        {},
        [Mount(str(data), read_only=True), Mount(str(out))],
        workdir=str(out),
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads((out / "probe.json").read_text())
    assert probe["data"] == "hostile" and probe["data_read_only"] is True
    assert probe["cwd"] == str(out)
    with pytest.raises(ImageError, match="carriage return"):
        container_argv(profile, image.spec.tag, "run-h", 0, ["true"], {}, [Mount("/a\r\nb")])


def test_container_sees_host_network_and_labels(small_image):
    image = small_image("orchlabel")
    here = LocalTransport(NodeSpec("here", "local"))
    argv = container_argv(
        load_profile("orchlabel", image.images_root), image.spec.tag, "run-b", 3, ["sleep", "60"]
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [c.state for c in find_containers(here, "run-b")] != [
            "running"
        ]:
            time.sleep(0.2)
        (found,) = find_containers(here, "run-b")
        assert found.name == "orch-run-b-n3" and found.state == "running"
        labels = json.loads(
            subprocess.run(
                ["docker", "inspect", "--format", "{{json .Config.Labels}}", found.container_id],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert labels["orchestrator.run_id"] == "run-b" and labels["orchestrator.node_rank"] == "3"
        host = json.loads(
            subprocess.run(
                ["docker", "inspect", "--format", "{{json .HostConfig}}", found.container_id],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert host["NetworkMode"] == "host" and host["IpcMode"] == "host" and host["Init"] is True
    finally:
        proc.kill()  # killing the client does not stop the container ...
        proc.wait()
    assert [c.name for c in find_containers(here, "run-b")] == ["orch-run-b-n3"]
    removed = remove_run_containers(here, "run-b")  # ... cleanup by label does
    assert [c.name for c in removed] == ["orch-run-b-n3"]
    assert find_containers(here, "run-b") == []


@pytest.mark.sshd
def test_failing_rank_leaves_no_container_of_the_run_on_any_node(
    docker_nodes, small_image, docker_api, tmp_path
):
    cluster = docker_nodes(2)
    image = small_image("orchfailrank")
    profile = load_profile("orchfailrank", image.images_root)
    run_id = "run-fail-1"
    with NodeSession(cluster.nodes, cluster.ssh) as session:
        distribute(docker_api, image.spec.tag, targets(cluster.nodes, session.transports))
        # A leftover of an earlier run on node 2 (its client long gone).
        leftover = container_argv(
            profile,
            image.spec.tag,
            "run-old-7",
            1,
            ["sleep", "300"],
            docker_host=cluster.nodes[1].docker_host,
        )
        leftover.insert(leftover.index("run") + 1, "-d")
        session.transports[cluster.nodes[1].name].run(leftover)
        procs = {}
        for rank, node in enumerate(cluster.nodes):
            transport = session.transports[node.name]
            transport.makedirs(node.workdir)
            # Rank 1 fails at once; rank 0 would wait for it forever.
            command = (
                ["sleep", "300"] if rank == 0 else ["sh", "-c", "echo rank 1 fails >&2; exit 3"]
            )
            argv = container_argv(
                profile,
                image.spec.tag,
                run_id,
                rank,
                command,
                {"RANK": str(rank)},
                docker_host=node.docker_host,
            )
            procs[node.name] = transport.spawn(
                argv, log_path=f"{node.workdir}/{run_id}-n{rank}.log"
            )
        failing = procs[cluster.nodes[1].name]
        assert failing.wait(120) == 3
        assert "rank 1 fails" in session.transports[cluster.nodes[1].name].read_text(
            f"{cluster.nodes[1].workdir}/{run_id}-n1.log"
        )
        # Wait until rank 0's container runs, then lose its client the hard way (SIGKILL, as
        # when the controller dies): the container goes on, so removal by label is required.
        # (A SIGTERM to the client is forwarded to the container through --init, which ends it.)
        node0 = cluster.nodes[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not find_containers(
            session.transports[node0.name], run_id, node0.docker_host
        ):
            time.sleep(0.2)
        procs[node0.name].signal(signal.SIGKILL)
        assert procs[node0.name].wait(30) is not None
        running = find_containers(session.transports[node0.name], run_id, node0.docker_host)
        assert [c.name for c in running] == [f"orch-{run_id}-n0"]
        hosts = {n.name: n.docker_host for n in cluster.nodes}
        removed = session.fan_out(
            lambda t: remove_run_containers(t, run_id, hosts[t.name]),
            timeout=60,
            what="removing the run's containers",
        )
        assert [c.name for c in removed[cluster.nodes[0].name]] == [f"orch-{run_id}-n0"]
        for node in cluster.nodes:
            transport = session.transports[node.name]
            assert find_containers(transport, run_id, node.docker_host) == []
        # Leftovers of any earlier run are found by label, and removed the same way.
        stale = find_containers(
            session.transports[cluster.nodes[1].name], None, cluster.nodes[1].docker_host
        )
        assert [c.run_id for c in stale] == ["run-old-7"]
        remove_run_containers(
            session.transports[cluster.nodes[1].name], "run-old-7", cluster.nodes[1].docker_host
        )
        for daemon in cluster.daemons:
            assert (
                daemon.docker("ps", "-aq", "--filter", "label=orchestrator.run_id").stdout.strip()
                == ""
            )
