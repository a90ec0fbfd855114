"""Runtime options that fit the node: needed vs optional devices, RDMA ulimits with IB, the
dry run's reasons, the probe's device check, and `--mount` values for any Linux path."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.backends.ssh.runtime_check import device_facts, refusal, trial_argvs
from orchestrator.backends.ssh.submit import make_plan
from orchestrator.errors import ImageError
from orchestrator.images.containers import Mount
from orchestrator.images.profiles import load_profile
from orchestrator.images.runtime_choice import choose_runtime, needed_devices, probe_devices
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.specs import ClusterSpec, NodeSpec, Topology
from orchestrator.workload_source import NODE_PROBE_PATH

PLAIN = NodeSpec("n1", "10.0.0.2")
IB = NodeSpec("n2", "10.0.0.3", ib_hcas=("mlx5_0",))
NOTHING_HERE = {"/dev/dri": False, "/dev/mxcd": False, "/dev/infiniband": False}


def test_metax_on_a_node_without_ib_keeps_its_gpus_and_drops_ib_and_memlock():
    chosen = choose_runtime(load_profile("metax-c500").runtime, PLAIN, NOTHING_HERE)
    assert chosen.options.devices == ("/dev/dri", "/dev/mxcd")
    assert chosen.options.ulimits == ("stack=67108864",)
    assert chosen.options.optional_devices == () and chosen.options.rdma_ulimits == ()
    assert chosen.lines() == (
        "--device /dev/dri: needed: preflight refuses a node without it",
        "--device /dev/mxcd: needed: preflight refuses a node without it",
        "--device /dev/infiniband: optional, left out: not on the node",
        "--ulimit stack=67108864: always (the daemon must accept it)",
        "--ulimit memlock=-1: left out: no InfiniBand device is used on this node",
    )


def test_nvidia_on_a_node_with_ib_present_uses_it_and_unlimited_memlock():
    chosen = choose_runtime(load_profile("nvidia").runtime, PLAIN, {"/dev/infiniband": True})
    assert chosen.options.devices == ("/dev/infiniband",)
    assert chosen.options.ulimits == ("stack=67108864", "memlock=-1")
    assert "--device /dev/infiniband: optional, used: present on the node" in chosen.lines()
    assert "--gpus all: needed (NVIDIA Container Toolkit)" in chosen.lines()


def test_ib_hcas_make_ib_used_before_any_probe_and_needed_at_preflight():
    profile = load_profile("nvidia")
    chosen = choose_runtime(profile.runtime, IB, None)
    assert chosen.options.devices == ("/dev/infiniband",)
    assert chosen.lines()[0] == (
        "--device /dev/infiniband: optional, used: the cluster names ib_hcas mlx5_0 (needed)"
    )
    (needed,) = needed_devices(profile, IB.ib_hcas)
    assert needed.path == "/dev/infiniband" and "ib_hcas mlx5_0" in needed.remedy
    assert needed_devices(profile, ()) == ()


def test_the_dry_run_leaves_optional_devices_to_preflight():
    chosen = choose_runtime(load_profile("nvidia").runtime, PLAIN, None)
    assert chosen.options.devices == () and "memlock=-1" not in chosen.options.ulimits
    assert chosen.lines()[0] == (
        "--device /dev/infiniband: optional, used when present (preflight looks on the node)"
    )
    assert chosen.lines()[2] == (
        "--ulimit memlock=-1: with RDMA only: used where preflight finds an InfiniBand device"
    )


def test_probe_looks_for_every_device_and_needs_only_the_needed():
    profile = load_profile("metax-c500")
    args = probe_devices(profile)
    assert args["look"] == ["/dev/dri", "/dev/infiniband", "/dev/mxcd"]
    needed = args["needed"]
    assert [p for p, _ in needed] == ["/dev/dri", "/dev/mxcd"]
    assert "profile metax-c500 needs it" in needed[0][1]
    assert [p for p, _ in probe_devices(profile, IB.ib_hcas)["needed"]][-1] == "/dev/infiniband"


def _probe(args: dict) -> dict:
    out = subprocess.run(
        [sys.executable, str(NODE_PROBE_PATH), json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_the_node_probe_reports_devices_and_fails_a_missing_needed_one(tmp_path: Path):
    present = tmp_path / "dev-here"
    present.write_text("")
    gone = str(tmp_path / "dev-gone")
    args = {
        "workdir": str(tmp_path),
        "devices": {
            "look": [str(present), gone],
            "needed": [[str(present), "r1"], [gone, "install the driver"]],
        },
    }
    data = _probe(args)
    assert data["env"]["devices"] == {str(present): True, gone: False}
    checks = {c["name"]: c for c in data["checks"]}
    assert checks[f"device {present}"]["ok"] is True
    assert checks[f"device {gone}"] == {
        "name": f"device {gone}",
        "ok": False,
        "detail": "missing (install the driver)",
    }
    assert device_facts({"n1": data["env"], "n2": {}}) == {"n1": {str(present): True, gone: False}}


def _docker_cluster(vendor: str, *nodes: NodeSpec) -> ClusterSpec:
    return ClusterSpec("lab", vendor, nodes, runtime="docker")


def test_dry_run_shows_each_nodes_options_and_why():
    cluster = _docker_cluster("nvidia", PLAIN, IB)
    plan = make_plan(cluster, SubmitRequest(topology=Topology(2, 1)), run_id="r1")
    text = plan.render()
    assert (
        "  runtime:   --device /dev/infiniband: optional, used when present "
        "(preflight looks on the node)"
    ) in text
    assert (
        "  runtime:   --device /dev/infiniband: optional, used: the cluster names ib_hcas "
        "mlx5_0 (needed)"
    ) in text
    n1, n2 = plan.nodes
    assert "/dev/infiniband" not in n1.argv and "/dev/infiniband" in n2.argv


def test_the_plan_after_preflight_takes_the_probe_facts():
    cluster = _docker_cluster("nvidia", PLAIN)
    req = SubmitRequest(topology=Topology(1, 1))
    with_ib = make_plan(cluster, req, run_id="r1", facts={"n1": {"/dev/infiniband": True}})
    argv = with_ib.nodes[0].argv
    assert argv[argv.index("--device") + 1] == "/dev/infiniband"
    assert "memlock=-1" in argv
    without = make_plan(cluster, req, run_id="r1", facts={"n1": {"/dev/infiniband": False}})
    assert "--device" not in without.nodes[0].argv and "memlock=-1" not in without.nodes[0].argv
    assert "optional, left out: not on the node" in without.render()
    # The trial run asks the daemon about the same options, with a no-op command.
    trial = trial_argvs(load_profile("nvidia"), with_ib, {"n1": {"/dev/infiniband": True}})
    assert trial["n1"][-2:] == ["-c", ""] and "--device" in trial["n1"]
    assert "memlock=-1" in trial["n1"] and "--mount" not in trial["n1"]


def test_a_daemon_refusal_is_one_line_with_the_remedy():
    stderr = (
        "docker: Error response from daemon: failed to create shim task: OCI runtime create "
        "failed: error setting rlimit type 8: operation not permitted: unknown.\n\n"
        "Run 'docker run --help' for more information\n"
    )
    line = refusal(stderr, 125)
    assert "\n" not in line and "--help" not in line  # the daemon's reason, not the CLI's hint
    assert line.startswith("docker run refused the runtime options: docker: Error response")
    assert "error setting rlimit type 8" in line and "move the limit to rdma_ulimits" in line
    device = 'docker: Error response from daemon: error gathering device information while adding custom device "/dev/mxcd": no such file or directory'
    assert refusal(device, 125) == (
        f"docker run refused the runtime options: {device} "
        "(a --device the profile names is not usable on the node)"
    )
    assert "LimitMEMLOCK" in refusal("error setting rlimit type 8: operation not permitted", 125)


@pytest.mark.parametrize("bad", ["/dev/a:b", "dev/rel", "/dev/a,b", "/dev/a b"])
def test_a_profile_device_docker_would_split_is_refused_at_load(tmp_path: Path, bad: str):
    (tmp_path / "acme").mkdir()
    (tmp_path / "Dockerfile.template").write_text("FROM {{base_image}}\n")
    (tmp_path / "acme" / "profile.toml").write_text(
        'name = "acme"\n[image]\nbase = "b:1"\nwheel_dir = "/w"\nrequirements = ["torch"]\n'
        f"[runtime]\noptional_devices = [{json.dumps(bad)}]\n"
    )
    with pytest.raises(ImageError) as caught:
        load_profile("acme", tmp_path)
    assert caught.value.one_line() == (
        f"{tmp_path}/acme/profile.toml: runtime.optional_devices {bad!r} is not an absolute "
        "device path without ':', ',' or spaces (e.g. optional_devices = [\"/dev/infiniband\"])"
    )


HOSTILE = ["/d/a:b", "/d/c,d", '/d/e"f', "/d/g=h", "/d/sp ace", "/d/new\nline", '/d/x",y:z=1']


@pytest.mark.parametrize("path", HOSTILE)
def test_a_mount_of_any_path_reads_back_as_that_path(path: str):
    """docker parses --mount with Go's encoding/csv; Python's csv reads the same dialect."""
    value = Mount(path, read_only=True).option()
    (fields,) = list(csv.reader(io.StringIO(value)))
    assert fields == ["type=bind", f"source={path}", f"target={path}", "readonly"]
    assert [f.split("=", 1)[1] for f in fields[1:3]] == [path, path]


def test_a_path_mount_cannot_carry_is_refused_in_one_line():
    with pytest.raises(ImageError) as caught:
        Mount("/d/cr\r\nlf").option()
    assert caught.value.one_line() == (
        "mount path '/d/cr\\r\\nlf' holds a carriage return, which docker's --mount parser "
        "drops (rename the file or folder)"
    )
    with pytest.raises(ImageError, match="is not absolute"):
        Mount("relative/dir").option()


def test_a_field_with_a_quote_comma_or_newline_is_quoted_as_go_csv_requires():
    """Go's reader (docker's) refuses a bare quote in an unquoted field, where Python's is lax."""
    assert Mount('/d/e"f', read_only=True).option() == (
        'type=bind,"source=/d/e""f","target=/d/e""f",readonly'
    )
    assert Mount("/d/a,b").option() == 'type=bind,"source=/d/a,b","target=/d/a,b"'
    assert Mount("/d/a\nb").option() == 'type=bind,"source=/d/a\nb","target=/d/a\nb"'
    assert Mount("/d/a:b =c").option() == "type=bind,source=/d/a:b =c,target=/d/a:b =c"
