"""The image's system stage on the real Docker daemon: vendor profiles on a base image that, like
nvidia/cuda:*-runtime-*, has no python3 and no InfiniBand user libraries.

Each image is the vendor's real profile (its Dockerfile, python, venv options, runtime devices)
with the base swapped for the local stand-in and the wheel set for one tiny wheel: torch cannot
come from a registry here, and the stage under test does not depend on what pip installs.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from orchestrator.images.build import build_image, image_id
from orchestrator.images.profiles import load_profile
from orchestrator.images.spec import Sha256Cache, make_image_spec
from tests.support.docker_fixtures import copy_workload, tiny_wheel

pytestmark = pytest.mark.docker


def _spec(vendor, base, tmp_path, docker_api):
    profile = load_profile(vendor)
    profile = replace(profile, requirements=("orchtest",), vendor_wheels=("orchtest-*.whl",))
    wheels = tmp_path / "wheels"
    tiny_wheel(wheels)
    return make_image_spec(
        profile,
        [wheels],
        image_id(docker_api, base),
        base_image=base,
        workload_dir=copy_workload(tmp_path / "src"),
        cache=Sha256Cache(None),
    )


def test_the_nvidia_profile_builds_on_a_base_without_python_and_gets_the_ib_libraries(
    base_image_without_python, docker_api, build_logs, tmp_path
):
    base = base_image_without_python
    bare = subprocess.run(
        ["docker", "run", "--rm", base, "sh", "-c", "command -v python3; ldconfig -p"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "python3" not in bare.stdout and "libibverbs" not in bare.stdout  # the stand-in holds
    spec = _spec("nvidia", base, tmp_path, docker_api)
    built = build_image(spec, docker_api, log_dir=build_logs)
    try:
        probe = (
            "python -c 'import orchtest, sys; print(orchtest.VALUE, sys.executable)';"
            " ldconfig -p | grep -o -E 'lib(ibverbs|mlx5)\\.so\\.1 ' | sort -u"
        )
        run = subprocess.run(
            ["docker", "run", "--rm", built.tag, "sh", "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.split("\n")[:3] == [
            "42 /opt/venv/bin/python",
            "libibverbs.so.1 ",
            "libmlx5.so.1 ",
        ]
    finally:
        docker_api.remove_image(built.tag, force=True)
