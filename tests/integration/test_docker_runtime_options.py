"""The vendor profiles' runtime options on a node that lacks their hardware (this machine: no
/dev/infiniband, /dev/mxcd or /dev/dri, and a daemon that refuses --ulimit memlock=-1).

Each test profile is the real profile's [runtime] table, loaded from images/<vendor>/profile.toml,
with only what cannot exist here overridden (the GPUs: --gpus, or MetaX's needed devices; the SMI
tool), and the `cpu` profile's [image] table, so that the run uses the cpu image with torch."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.images.build import image_id
from orchestrator.images.profiles import load_profile
from orchestrator.images.spec import Sha256Cache, make_image_spec
from orchestrator.images.system_setup import system_setup_script
from tests.support.cluster_fixtures import (
    cli_env,
    run_processes,
    set_args,
    write_cluster_file,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = [pytest.mark.sshd, pytest.mark.docker, pytest.mark.torch]

REPO = Path(__file__).resolve().parents[2]
ABSENT = ("/dev/infiniband", "/dev/mxcd", "/dev/dri")


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings and lists of strings: TOML and JSON agree


def _profile_text(vendor: str, runtime: dict[str, Any]) -> str:
    cpu = tomllib.loads((REPO / "images" / "cpu" / "profile.toml").read_text())
    lines = [f'name = "{vendor}"', "[image]"]
    lines += [f"{key} = {_toml(value)}" for key, value in cpu["image"].items()]
    lines += ["[runtime]"] + [f"{key} = {_toml(value)}" for key, value in runtime.items()]
    return "\n".join(lines) + "\n"


def _real_runtime(vendor: str, **override: Any) -> dict[str, Any]:
    data = tomllib.loads((REPO / "images" / vendor / "profile.toml").read_text())
    return {**data["runtime"], **override}


@pytest.fixture
def vendor_setup(sshd_nodes, cpu_image, tiny_coco, tmp_path, docker_api):
    """make(vendor, runtime) -> (cluster file, env, node name): the vendor's test profile in an
    images folder of its own, its image the cpu image under the vendor's tag."""
    cluster = sshd_nodes(1)
    made: list[str] = []

    def make(vendor: str, runtime: dict[str, Any]) -> tuple[Path, dict[str, str], str]:
        for p in ABSENT:
            assert not Path(p).exists(), f"{p} exists here: this test needs a node without it"
        root = tmp_path / "images"
        (root / vendor).mkdir(parents=True, exist_ok=True)
        # The template names its profile in a comment only: rendered as the cpu profile's, the
        # Dockerfile (and so the image) is the cpu image's, tagged here under the vendor's name.
        # Its system stage is the cpu profile's too (an IB profile's would add the verbs
        # libraries, which the cpu image has no need of).
        template = (REPO / "images" / "Dockerfile.template").read_text()
        cpu_system = system_setup_script(load_profile("cpu").python, infiniband=False)
        (root / vendor / "Dockerfile.template").write_text(
            template.replace("{{profile}}", "cpu").replace("{{system_setup}}", cpu_system)
        )
        (root / vendor / "profile.toml").write_text(_profile_text(vendor, runtime))
        spec, built = cpu_image
        ours = make_image_spec(
            load_profile(vendor, root),
            None,
            spec.base_id,
            base_image=spec.base_image,
            cache=Sha256Cache(None),
        )
        assert ours.digest == spec.digest  # the same content: tag it, build nothing
        docker_api.tag(built.tag, ours.repository, ours.tag.split(":")[1])
        assert image_id(docker_api, ours.tag) == built.image_id
        made.append(ours.tag)
        cfg = write_cluster_file(
            tmp_path / "cluster.toml",
            cluster.nodes,
            cluster.ssh,
            data_dir=tiny_coco,
            workdir_root=tmp_path / "nodes",
            runtime="docker",
        )
        cfg.write_text(cfg.read_text().replace('vendor = "cpu"', f'vendor = "{vendor}"'))
        return cfg, cli_env(ORCHESTRATOR_IMAGES_DIR=str(root)), cluster.nodes[0].name

    yield make
    for tag in made:
        docker_api.remove_image(tag)  # only the tag: the cpu image stays


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _containers(run_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=orchestrator.run_id={run_id}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def _runs(db: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT run_id, status, reason FROM runs").fetchall()


def _failure_line(proc: subprocess.CompletedProcess[str], start: str) -> str:
    """A run that failed before starting: exit 1, one line saying why, no traceback."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if start in ln]
    return line


@pytest.mark.parametrize(
    ("vendor", "override"),
    [
        ("nvidia", {"gpus": "", "monitor": []}),
        ("metax-c500", {"devices": [], "monitor": []}),
    ],
)
def test_a_vendor_run_on_a_node_without_ib_drops_optional_devices_and_goes(
    vendor_setup, tmp_path, vendor, override
):
    cfg, env, node = vendor_setup(vendor, _real_runtime(vendor, **override))
    db = tmp_path / "results.db"
    dry = _cli(["--cluster", str(cfg), "submit", "1x1", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert (
        "runtime:   --device /dev/infiniband: optional, used when present "
        "(preflight looks on the node)"
    ) in dry.stdout
    proc = _cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "1x1", *set_args()],
        env,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ((run_id, status, _),) = _runs(db)
    assert status == "succeeded"
    node_env = json.loads((tmp_path / "runs" / run_id / "nodes" / node / "env.json").read_text())
    assert node_env["devices"] == {"/dev/infiniband": False}
    assert node_env["runtime_options"][:1] == [
        "--device /dev/infiniband: optional, left out: not on the node"
    ]
    assert (
        "--ulimit memlock=-1: left out: no InfiniBand device is used on this node"
        in node_env["runtime_options"]
    )
    assert _containers(run_id) == [] and run_processes(run_id) == []
    doctor = _cli(["--cluster", str(cfg), "doctor", "1x1", "--format", "json"], env, tmp_path)
    assert doctor.returncode == 0, doctor.stdout[-2000:]
    checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["runtime options"]["ok"] is True
    assert checks["runtime options"]["detail"].startswith("accepted by the daemon (orchestrator/")


def test_a_missing_needed_device_is_refused_by_preflight_and_doctor(vendor_setup, tmp_path):
    cfg, env, node = vendor_setup("metax-c500", _real_runtime("metax-c500", monitor=[]))
    db = tmp_path / "results.db"
    proc = _cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "1x1", *set_args()],
        env,
        tmp_path,
    )
    line = _failure_line(proc, "preflight failed")
    remedy = (
        "profile metax-c500 needs it: install the vendor's driver, or move it to "
        "optional_devices in the profile if runs can go without it"
    )
    assert (
        f"preflight failed on 1 of 1 node(s), nothing was started: {node}: "
        f"device /dev/dri: missing ({remedy}); device /dev/mxcd: missing ({remedy})"
    ) in line
    ((run_id, status, reason),) = _runs(db)
    assert status == "failed" and f"{node}: device /dev/dri: missing" in str(reason)
    assert _containers(run_id) == [] and run_processes(run_id) == []
    assert not (tmp_path / "nodes" / node / "runs").exists(), "something was staged"
    checks = _doctor(cfg, env, tmp_path)
    assert checks["device /dev/dri"] == (False, f"missing ({remedy})")
    assert checks["device /dev/mxcd"] == (False, f"missing ({remedy})")
    assert checks["docker"][0] is True


def _doctor(cfg: Path, env: dict[str, str], cwd: Path) -> dict[str, tuple[bool, str]]:
    """`orchestrator doctor 1x1 --format json` (exit 3: not ready) -> check -> (ok, detail)."""
    proc = _cli(["--cluster", str(cfg), "doctor", "1x1", "--format", "json"], env, cwd)
    assert proc.returncode == 3, proc.stderr[-2000:]
    return {c["check"]: (c["ok"], c["detail"]) for c in json.loads(proc.stdout)["checks"]}


def test_a_ulimit_the_daemon_refuses_stops_the_run_before_it_starts(vendor_setup, tmp_path):
    """The nvidia profile as it was: memlock=-1 on every node. This daemon refuses it."""
    runtime = _real_runtime("nvidia", gpus="", monitor=[], ulimits=["memlock=-1", "stack=67108864"])
    cfg, env, node = vendor_setup("nvidia", runtime)
    db = tmp_path / "results.db"
    proc = _cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "1x1", *set_args()],
        env,
        tmp_path,
    )
    line = _failure_line(proc, "runtime options refused")
    assert (
        f"runtime options refused on 1 of 1 node(s), nothing was started: {node}: "
        "docker run refused the runtime options: docker: Error response from daemon:"
    ) in line
    assert "error setting rlimit type 8: operation not permitted" in line
    assert "move the limit to rdma_ulimits" in line
    ((run_id, status, reason),) = _runs(db)
    assert status == "failed" and "error setting rlimit type 8" in str(reason)
    assert _containers(run_id) == [] and run_processes(run_id) == []
    assert not (tmp_path / "nodes" / node / "runs").exists(), "something was staged"
    ok, detail = _doctor(cfg, env, tmp_path)["runtime options"]
    assert not ok and "error setting rlimit type 8: operation not permitted" in detail
