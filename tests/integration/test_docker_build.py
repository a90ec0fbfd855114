"""Building images on the real Docker daemon: the cpu profile with torch from a wheelhouse."""

import json
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import ImageError
from orchestrator.images.build import ImageBuildError, build_image
from orchestrator.images.containers import container_argv
from orchestrator.images.profiles import load_profile
from orchestrator.images.spec import Sha256Cache, make_image_spec
from tests.support.docker_fixtures import copy_workload

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


def _docker_run(profile, image, command, **kw):
    argv = container_argv(profile, image, "test-build", 0, command, **kw)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_cpu_image_has_torch_from_the_wheels_and_no_wheel_layer(cpu_image, docker_api):
    spec, built = cpu_image
    profile = load_profile("cpu")
    probe = (
        "import json, os, sys, torch, torchvision, pycocotools, workload.faster_rcnn.result_format as rf;"
        "print(json.dumps({'torch': torch.__version__, 'vision': torchvision.__version__,"
        "'python': sys.executable, 'wheels': os.path.exists('/wheels'), 'rf': rf.__file__,"
        "'venv': sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk('/opt/venv') for f in fs"
        " if not os.path.islink(os.path.join(d, f)))}))"
    )
    result = _docker_run(profile, built.tag, ["python", "-c", probe])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["torch"].startswith("2.14.1") and info["vision"].startswith("0.29.1")
    assert info["python"] == "/opt/venv/bin/python"
    assert info["rf"] == "/opt/orchestrator/workload/faster_rcnn/result_format.py"
    assert info["wheels"] is False
    # Only three layers carry bytes: the base, the venv, the workload. No 3 GB wheel layer.
    history = docker_api.history(built.image_id)
    sized = [layer for layer in history if layer["Size"] > 0]
    assert len(sized) == 3, [(layer["Size"], layer["CreatedBy"][:60]) for layer in history]
    wheel_bytes = sum(w.size for w in spec.wheels)
    base_size = docker_api.inspect_image(spec.base_id)["Size"]
    assert built.size_bytes < base_size + info["venv"] * 1.05 + 50e6
    assert not any(
        "wheels" in layer["CreatedBy"] and layer["Size"] > 0.5 * wheel_bytes for layer in history
    )


def test_same_inputs_reuse_the_image_and_a_workload_change_rebuilds(
    cpu_image, docker_api, wheelhouse, sha_cache, tmp_path
):
    spec, built = cpu_image
    again = make_image_spec(
        spec.profile, [wheelhouse], spec.base_id, base_image=spec.base_image, cache=sha_cache
    )
    assert again.tag == spec.tag
    reused = build_image(again, docker_api)
    assert reused.reused and reused.image_id == built.image_id and reused.build_seconds == 0

    changed = copy_workload(tmp_path, change="one changed line")
    respec = make_image_spec(
        spec.profile,
        [wheelhouse],
        spec.base_id,
        base_image=spec.base_image,
        workload_dir=changed,
        cache=sha_cache,
    )
    assert respec.tag != spec.tag
    rebuilt = build_image(respec, docker_api, log_dir=tmp_path / "logs")
    try:
        assert not rebuilt.reused and rebuilt.image_id != built.image_id
        log = Path(rebuilt.log_path).read_text()
        # The wheel-install stage came from the cache: a workload change costs seconds, not minutes.
        steps = log.split("\nStep ")[1:]
        pip_step = next(step for step in steps if "pip install" in step.splitlines()[0])
        assert "Using cache" in pip_step
        out = _docker_run(
            spec.profile,
            rebuilt.tag,
            ["tail", "-1", "/opt/orchestrator/workload/faster_rcnn/__init__.py"],
        )
        assert out.stdout.strip() == "# one changed line"
    finally:
        docker_api.remove_image(rebuilt.tag, force=True)


def test_failing_step_names_the_step_and_keeps_its_log(small_image, docker_api):
    containers_before = {c["Id"] for c in docker_api.containers(all=True)}
    with pytest.raises(ImageBuildError) as err:
        small_image("orchfail", requirements='["no-such-package-anywhere"]')
    exc = err.value
    line = exc.one_line()
    assert "Step 6/" in line and "RUN /usr/bin/python3 -m venv" in line
    assert "no-such-package-anywhere" in line  # what pip said last, not the whole command
    assert any("no-such-package-anywhere" in t for t in exc.log_tail)
    assert "full log:" in line and Path(exc.log_path).is_file()
    assert "no-such-package-anywhere" in Path(exc.log_path).read_text()
    # Nothing half-made is left: no image under the tag, no intermediate container.
    assert not docker_api.images(name="orchestrator/orchfail")
    assert {c["Id"] for c in docker_api.containers(all=True)} == containers_before


def test_missing_base_image_is_a_clear_error(docker_api, tmp_path):
    from tests.support.docker_fixtures import tiny_wheel, write_test_profile

    wheels = tmp_path / "wheels"
    tiny_wheel(wheels)
    root = write_test_profile(
        tmp_path / "images", "orchnobase", "orchestrator/no-such-base:1", wheels
    )
    spec = make_image_spec(
        load_profile("orchnobase", root), None, "sha256:" + "0" * 64, cache=Sha256Cache(None)
    )
    with pytest.raises(ImageError) as err:
        build_image(spec, docker_api)
    assert "orchestrator/no-such-base:1 is not on the build host" in err.value.one_line()
    assert "docker load" in err.value.one_line()


def test_cli_dry_run_shows_dockerfile_and_tag_and_builds_nothing(
    cpu_image, docker_api, wheelhouse, sha_cache, cli_snapshot
):
    spec, _ = cpu_image
    before = sorted(i["Id"] for i in docker_api.images(all=True))
    result = cli_snapshot(
        "image",
        "build",
        "--vendor",
        "cpu",
        "--wheels",
        str(wheelhouse),
        "--base",
        spec.base_image,
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert f"FROM {spec.base_image} AS system" in result.stdout
    assert "FROM system AS builder" in result.stdout
    assert "COPY --from=builder /opt/venv /opt/venv" in result.stdout
    assert "# wheel torch-2.14.1-" in result.stdout
    # The tag the CLI shows is the tag of exactly this content.
    expected = make_image_spec(
        spec.profile,
        [wheelhouse],
        spec.base_id,
        base_image=spec.base_image,
        workload_dir=cli_snapshot.workload,
        cache=sha_cache,
    )
    assert result.stdout.strip().splitlines()[-1] == f"tag: {expected.tag}"
    assert sorted(i["Id"] for i in docker_api.images(all=True)) == before


def test_cli_build_records_the_image_in_the_store_and_then_reuses_it(
    cpu_image, docker_api, wheelhouse, cli_snapshot
):
    spec, built = cpu_image
    db = f"sqlite:///{cli_snapshot.cwd / 'results.db'}"
    up = cli_snapshot("--db", db, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    args = (
        "--db",
        db,
        "image",
        "build",
        "--vendor",
        "cpu",
        "--wheels",
        str(wheelhouse),
        "--base",
        spec.base_image,
    )
    first = cli_snapshot(*args)
    assert first.returncode == 0, first.stderr
    tag = first.stdout.strip()
    try:
        second = cli_snapshot(*args)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == tag and "already on the build host" in second.stderr
        query = cli_snapshot(
            "--db",
            db,
            "query",
            "--format",
            "json",
            "SELECT i.tag, i.image_id, i.size_bytes, i.build_seconds, i.build_log_path, w.filename, w.sha256 "
            "FROM images i JOIN image_wheels w ON w.image_id = i.image_id WHERE w.filename LIKE 'torch-%'",
        )
        assert query.returncode == 0, query.stderr
        rows = json.loads(query.stdout)
        assert len(rows) == 1
        row = rows[0]
        torch = next(w for w in spec.wheels if w.name.startswith("torch-"))
        assert row["tag"] == tag and row["image_id"] == docker_api.inspect_image(tag)["Id"]
        assert row["size_bytes"] > 1e9 and row["sha256"] == torch.sha256
        if tag != spec.tag:  # built by the CLI just now: its build time and log are recorded
            assert row["build_seconds"] > 0 and Path(row["build_log_path"]).is_file()
    finally:
        if tag != spec.tag:
            docker_api.remove_image(tag, force=True)


def test_cli_build_of_an_unknown_vendor_is_one_line(cli_snapshot):
    result = cli_snapshot("image", "build", "--vendor", "acme")
    assert result.returncode == 2
    assert result.stderr.startswith("error: no vendor profile 'acme'")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
