"""orchestrator installed from its wheel, not editable, into a fresh venv and run from a folder
outside the checkout: it finds images/ and migrations/ inside the installed package, upgrades a
new SQLite store, dry-runs an image build and a submit, and has no torch. The same wheel with its
`workload` extra runs a real `submit 1x1` on the embedded default (this machine, SQLite here).

The control plane's dependencies come from the package index (pip's ordinary configuration).
The workload extra's torch, torchvision and pycocotools are not downloaded again (the CUDA torch
is gigabytes): the second venv sees this venv's site-packages through a .pth file and pip checks
that they satisfy the wheel's `workload` extra."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.images.profiles import load_profile
from orchestrator.images.spec import Sha256Cache, make_image_spec
from orchestrator.store.migrate import head_revision
from orchestrator.store.search import SQLITE_SEARCH_TABLES
from orchestrator.workload_source import workload_files, workload_hash
from tests.support.cluster_fixtures import set_args
from tests.support.store_fixtures import TABLES, VIEWS

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parents[2]
# What the build reads; the rest of the checkout (tests, docs, bench) is not in the wheel.
BUILD_SOURCES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "orchestrator",
    "workload",
    "images",
    "migrations",
)
DATA_FOLDERS = ("images", "migrations")
# The cpu profile's vendor_wheels patterns; a dry run only hashes the files.
STAND_IN_WHEELS = (
    "torch-2.14.1-cp311-cp311-linux_x86_64.whl",
    "torchvision-0.29.1-cp311-cp311-linux_x86_64.whl",
)
# Printed by the venv's Python: where the installed package is and how it was installed.
INSPECT = """
import importlib.metadata, importlib.util, json, sysconfig
import orchestrator, workload
from orchestrator import resources
dist = importlib.metadata.distribution("orchestrator")
print(json.dumps({
    "site": sysconfig.get_path("purelib"),
    "orchestrator": orchestrator.__file__,
    "workload": workload.__file__,
    "migrations": str(resources.migrations_dir()),
    "images": str(resources.images_dir()),
    "direct_url": json.loads(dist.read_text("direct_url.json") or "{}"),
    "requires": dist.requires or [],
    "torch": importlib.util.find_spec("torch") is not None,
    "torchvision": importlib.util.find_spec("torchvision") is not None,
}))
"""


@dataclass(frozen=True)
class Venv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def cli(self) -> Path:
        return self.root / "bin" / "orchestrator"

    def inspect(self) -> dict[str, object]:
        proc = _run([str(self.python), "-c", INSPECT], cwd=self.root, env=_clean_env(self.root))
        assert proc.returncode == 0, proc.stderr[-3000:]
        found: dict[str, object] = json.loads(proc.stdout)
        return found


def _run(
    argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """This venv's pip; `--python VENV_PYTHON` makes it install into another venv (pip >= 22.3).
    Without PYTHONPATH: a checkout on it that holds an orchestrator.egg-info (left by an
    in-tree build) made pip take the wheel's package for installed already and skip it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = _run(argv, cwd=cwd, env=env)
    assert proc.returncode == 0, (
        f"pip {' '.join(args)}:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    )
    return proc


def _clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH (the checkout must not leak in), no orchestrator settings, a home of its
    own (the embedded default stages under ~/.cache/orchestrator), no Docker daemon."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XDG_CACHE_HOME", "DOCKER_HOST"}
    env = {
        k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ORCHESTRATOR_")
    }
    env.update(
        {
            "HOME": str(home),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
            "DOCKER_HOST": f"unix://{home}/no-docker.sock",
        }
    )
    return env


def _fresh_venv(root: Path) -> Venv:
    """A venv with nothing in it, not even pip or setuptools."""
    proc = _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    assert proc.returncode == 0, proc.stderr
    return Venv(root)


def _copy_sources(dest: Path) -> Path:
    """The checkout's build inputs in `dest`, so the build leaves no build/ or egg-info here."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True, exist_ok=True)
    for name in BUILD_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=skip)
        else:
            shutil.copy2(source, dest / name)
    return dest


def _data_files(prefix: str) -> set[str]:
    """images/ and migrations/ of the checkout, as paths under `prefix`."""
    return {
        f"{prefix}{path.relative_to(REPO).as_posix()}"
        for folder in DATA_FOLDERS
        for path in (REPO / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _work_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder outside the checkout to run the CLI in, and its environment."""
    work = (tmp_path / "elsewhere").resolve()
    work.mkdir()
    assert REPO not in work.parents
    return work, _clean_env(work)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel that `pip install .` builds, made once for the module."""
    source = _copy_sources(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source), cwd=out)
    (built,) = out.glob("orchestrator-*.whl")
    return built


@pytest.fixture(scope="module")
def control_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the wheel and its dependencies from the package index: no extras."""
    venv = _fresh_venv(tmp_path_factory.mktemp("control") / "venv")
    _pip("--python", str(venv.python), "install", "-q", str(wheel), cwd=venv.root)
    return venv


def test_the_wheel_carries_images_and_migrations_as_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    assert {n for n in names if n.startswith("orchestrator/_data/")} == _data_files(
        "orchestrator/_data/"
    )
    assert "orchestrator/_data/migrations/env.py" in names
    assert "orchestrator/_data/images/cpu/profile.toml" in names
    # The workload ships as its own top-level package, every file the nodes get.
    assert {rel for rel, _ in workload_files()} <= names
    # Nothing lands at the top of site-packages but the two packages and the metadata.
    assert {n.split("/")[0] for n in names} == {
        "orchestrator",
        "workload",
        wheel.name.split("-py3")[0] + ".dist-info",
    }


def test_a_wheel_built_from_the_sdist_has_the_same_files(wheel: Path, tmp_path: Path) -> None:
    """`python -m build` makes the sdist first and the wheel from it: MANIFEST.in must carry the
    data folders into the sdist."""
    source = _copy_sources(tmp_path / "source")
    hook = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    made = _run([sys.executable, "-c", hook, tmp_path / "sdist"], cwd=source)
    assert made.returncode == 0, made.stderr[-3000:]
    sdist = tmp_path / "sdist" / made.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        top = f"{sdist.name.removesuffix('.tar.gz')}/"
        in_sdist = {m.name for m in tar.getmembers() if m.isfile()}
    assert _data_files(top) <= in_sdist
    assert f"{top}setup.py" in in_sdist

    out = tmp_path / "from-sdist"
    _pip(
        "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(sdist), cwd=tmp_path
    )
    (from_sdist,) = out.glob("orchestrator-*.whl")

    assert sorted(zipfile.ZipFile(from_sdist).namelist()) == sorted(
        zipfile.ZipFile(wheel).namelist()
    )


def test_the_installed_package_is_the_wheel_not_the_checkout_and_has_no_torch(
    control_venv: Venv, wheel: Path
) -> None:
    found = control_venv.inspect()
    site = Path(str(found["site"]))

    assert site.is_relative_to(control_venv.root)
    assert Path(str(found["orchestrator"])) == site / "orchestrator" / "__init__.py"
    assert Path(str(found["workload"])) == site / "workload" / "__init__.py"
    assert Path(str(found["migrations"])) == site / "orchestrator" / "_data" / "migrations"
    assert Path(str(found["images"])) == site / "orchestrator" / "_data" / "images"
    # Installed from the wheel file, not editable (an editable install has dir_info.editable).
    direct_url = found["direct_url"]
    assert isinstance(direct_url, dict)
    assert "dir_info" not in direct_url
    assert str(direct_url["url"]).endswith("/" + wheel.name)
    # The control plane installs without torch; the extra names it.
    assert found["torch"] is False and found["torchvision"] is False
    requires = found["requires"]
    assert isinstance(requires, list) and 'torch>=2.0; extra == "workload"' in requires
    plain = _run([control_venv.python, "-c", "import torch"], cwd=control_venv.root)
    assert plain.returncode == 1 and "No module named 'torch'" in plain.stderr


def test_installed_cli_upgrades_a_new_sqlite_store(control_venv: Venv, tmp_path: Path) -> None:
    work, env = _work_dir(tmp_path)

    proc = _run([control_venv.cli, "--db", "sqlite:///x.db", "db", "upgrade"], cwd=work, env=env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    head = head_revision()
    assert f"upgraded from none (empty) to {head}" in proc.stdout + proc.stderr
    with sqlite3.connect(work / "x.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        made = set(
            db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view')")
        )
    search = {("table", t) for t in SQLITE_SEARCH_TABLES}  # FTS5 and its shadow tables (0009)
    assert made == {("table", t) for t in TABLES} | {("view", v) for v in VIEWS} | search


def test_installed_cli_dry_runs_an_image_build(control_venv: Venv, tmp_path: Path) -> None:
    work, env = _work_dir(tmp_path)
    wheels = work / "wheels"
    wheels.mkdir()
    for name in STAND_IN_WHEELS:
        (wheels / name).write_bytes(name.encode())

    proc = _run(
        [control_venv.cli, "image", "build", "--vendor", "cpu", "--wheels", wheels, "--dry-run"],
        cwd=work,
        env=env,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    # The same profile, template and workload as the checkout's give the same content tag.
    expected = make_image_spec(load_profile("cpu"), [wheels], None, cache=Sha256Cache(None))
    assert proc.stdout.startswith(f"# profile cpu: {expected.profile.description}\n")
    assert expected.dockerfile in proc.stdout
    assert f"# workload: {len(expected.workload)} file(s)" in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"tag: {expected.tag} (base image id unknown: ")


def test_installed_cli_dry_runs_submit_1x1(control_venv: Venv, tmp_path: Path) -> None:
    work, env = _work_dir(tmp_path)

    proc = _run([control_venv.cli, "submit", "1x1", "--dry-run"], cwd=work, env=env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "faster_rcnn on cluster local (vendor cpu), topology 1x1" in proc.stdout
    # The node's Python is the venv's; the workload staged is the wheel's (same content hash).
    stage = work / ".cache" / "orchestrator" / "workload" / workload_hash()
    torchrun = f"{control_venv.python} -m torch.distributed.run --nnodes=1 --nproc-per-node=1 "
    assert f"PYTHONPATH={stage} " in proc.stdout
    assert torchrun in proc.stdout
    assert f"--data-dir {work / 'data' / 'coco-synth'} " in proc.stdout
    assert not (work / "runs").exists()


@pytest.mark.torch
def test_wheel_with_workload_extra_runs_a_real_submit_1x1(
    wheel: Path, tiny_coco: Path, tmp_path: Path
) -> None:
    venv = _fresh_venv(tmp_path / "venv")
    _pip("--python", str(venv.python), "install", "-q", "--no-deps", str(wheel), cwd=tmp_path)
    # The workload's packages (and the control plane's) from this venv, after the venv's own.
    ours = dict.fromkeys(sysconfig.get_path(p) for p in ("purelib", "platlib"))
    site = Path(str(venv.inspect()["site"]))
    (site / "zz-workload-deps.pth").write_text("".join(f"{p}\n" for p in ours))
    extra = _pip(
        "--python", str(venv.python), "install", "--no-index", f"{wheel}[workload]", cwd=tmp_path
    )
    for requirement in ("torch>=2.0", "torchvision>=0.15", "pycocotools>=2.0.6"):
        assert f"Requirement already satisfied: {requirement} " in extra.stdout
    found = venv.inspect()
    assert Path(str(found["orchestrator"])) == site / "orchestrator" / "__init__.py"
    assert found["torch"] is True
    work, env = _work_dir(tmp_path)
    (work / "data").mkdir()
    (work / "data" / "coco-synth").symlink_to(tiny_coco, target_is_directory=True)

    proc = _run([venv.cli, "submit", "1x1", *set_args()], cwd=work, env=env)

    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with sqlite3.connect(work / "orchestrator.db") as db:
        rows = db.execute("SELECT status, topology, world_size, p_core FROM runs").fetchall()
    assert len(rows) == 1
    status, topology, world_size, p_core = rows[0]
    assert (status, topology, world_size) == ("succeeded", "1x1", 1)
    assert p_core > 0
    assert (work / ".cache" / "orchestrator" / "workload" / workload_hash()).is_dir()
