"""The image's system stage: what it installs, decided in a real shell against stand-in tools.

The script runs in bash with a PATH of stubs: a `python3` that can or cannot make a venv, an
`ldconfig -p` that lists (or not) the verbs libraries, and a package manager that records what it
was asked to install (and "installs" it by flipping the stubs). The real build on a base image
without Python is tests/integration/test_docker_system_stage.py.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.images.profiles import load_profile
from orchestrator.images.spec import render_dockerfile
from orchestrator.images.system_setup import system_setup_script

PYTHON = """#!/bin/sh
# A python3 that makes a venv only once "installed" (or when born so).
[ -e "{root}/state/python-ok" ] && exit 0
exit 1
"""
LDCONFIG = """#!/bin/sh
if [ -e "{root}/state/ib-ok" ]; then
  printf '\\tlibibverbs.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libibverbs.so.1\\n'
  printf '\\tlibmlx5.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libmlx5.so.1\\n'
fi
printf '\\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\\n'
"""
INSTALLER = """#!/bin/sh
echo "$0 $*" >> "{root}/calls"
case "$*" in *python3*) touch "{root}/state/python-ok" ;; esac
case "$*" in *libibverbs*) touch "{root}/state/ib-ok" ;; esac
exit 0
"""


# The only host tools the script may find: never this machine's own apt-get, dnf or ldconfig.
BASIC_TOOLS = ("sh", "rm", "grep", "touch")


def _link_basic_tools(bin_dir: Path) -> None:
    for tool in BASIC_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)


def _bash(bin_dir: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", f"PATH={bin_dir}; {script}"], capture_output=True, text=True, timeout=30
    )


def _run(tmp_path: Path, *, python_ok: bool, ib_ok: bool, infiniband: bool, manager: str | None):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    if python_ok:
        (state / "python-ok").touch()
    if ib_ok:
        (state / "ib-ok").touch()
    tools = {"python3": PYTHON, "ldconfig": LDCONFIG}
    if manager:
        tools[manager] = INSTALLER
    for name, text in tools.items():
        (bin_dir / name).write_text(text.format(root=tmp_path))
        (bin_dir / name).chmod(0o755)
    _link_basic_tools(bin_dir)
    # As Docker runs it: one line, the Dockerfile's backslash-newlines joined.
    script = system_setup_script(str(bin_dir / "python3"), infiniband).replace("\\\n", "")
    result = _bash(bin_dir, script)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return result, [c.split("/")[-1] for c in calls]


def test_a_base_with_everything_installs_nothing(tmp_path):
    result, calls = _run(tmp_path, python_ok=True, ib_ok=True, infiniband=True, manager="apt-get")
    assert result.returncode == 0, result.stderr
    assert calls == []
    assert "base image has all the workload needs" in result.stdout


def test_a_base_without_python_gets_python_and_venv_but_no_ib_unless_the_profile_uses_it(
    tmp_path,
):
    result, calls = _run(
        tmp_path, python_ok=False, ib_ok=False, infiniband=False, manager="apt-get"
    )
    assert result.returncode == 0, result.stderr
    assert calls[0] == "apt-get update -qq"
    assert calls[1].endswith("--no-install-recommends python3 python3-venv")
    assert "lacks: python-with-venv;" in result.stdout


def test_an_ib_profile_on_a_base_without_verbs_gets_the_verbs_and_mlx5_provider(tmp_path):
    result, calls = _run(tmp_path, python_ok=True, ib_ok=False, infiniband=True, manager="apt-get")
    assert result.returncode == 0, result.stderr
    assert calls[1].endswith("--no-install-recommends libibverbs1 ibverbs-providers librdmacm1")


def test_an_rpm_base_lacking_both_uses_dnf_with_rpm_names(tmp_path):
    result, calls = _run(tmp_path, python_ok=False, ib_ok=False, infiniband=True, manager="dnf")
    assert result.returncode == 0, result.stderr
    assert calls[0] == "dnf install -y -q python3 libibverbs librdmacm"


def test_a_base_without_a_package_manager_fails_naming_what_it_lacks(tmp_path):
    result, calls = _run(tmp_path, python_ok=False, ib_ok=False, infiniband=True, manager=None)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the base image lacks python-with-venv infiniband-libraries and has no apt-get,"
        " dnf or yum to install it: use a base image that has them"
    )


def test_a_python_path_the_packages_do_not_provide_fails_naming_the_key(tmp_path):
    # The package manager "installs" python3, but the profile's interpreter stays unable.
    bin_dir = tmp_path / "bin"
    result, _ = _run(tmp_path, python_ok=False, ib_ok=True, infiniband=False, manager="yum")
    assert result.returncode == 0  # yum's python3 made the stub work: the control case
    (tmp_path / "state" / "python-ok").unlink()
    (bin_dir / "yum").write_text("#!/bin/sh\nexit 0\n")
    script = system_setup_script(str(bin_dir / "python3"), False).replace("\\\n", "")
    again = _bash(bin_dir, script)
    assert again.returncode == 1
    assert f"error: {bin_dir}/python3 cannot make a venv after installing python3" in again.stderr
    assert "set [image] python" in again.stderr


@pytest.mark.parametrize(
    ("vendor", "infiniband"), [("cpu", False), ("nvidia", True), ("metax-c500", True)]
)
def test_each_profile_renders_a_system_stage_that_checks_ib_only_when_it_uses_ib(
    vendor, infiniband
):
    profile = load_profile(vendor)
    assert profile.uses_infiniband is infiniband
    text = render_dockerfile(profile)
    assert text.count("FROM ") == 3
    assert "AS system\nRUN set -e;" in text
    assert "FROM system AS builder" in text and "\nFROM system\n" in text
    assert ("libmlx5" in text) is infiniband
    no_ib = replace(
        profile, runtime=replace(profile.runtime, devices=("/dev/dri",), optional_devices=())
    )
    assert "libmlx5" not in render_dockerfile(no_ib)
