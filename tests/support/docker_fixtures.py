"""A real Docker daemon, real images and per-node daemons, for tests and bench/.

Session fixtures (built once, reused by content across sessions on the same machine):
- `docker_api`: the local daemon (fails, never skips, when it is not running).
- `base_image`: the debootstrap bookworm base (scripts/make-base-image.sh), tagged by content.
- `base_image_without_python`: the same without python3 (a CUDA runtime image stand-in).
- `wheelhouse`: torch 2.14.1, torchvision 0.29.1, pycocotools wheels (scripts/make-wheelhouse.sh)
  in /var/cache/orchestrator-test/wheelhouse (or $ORCHESTRATOR_TEST_WHEELHOUSE).
- `cpu_image`: the `cpu` profile's image built from that wheelhouse: (ImageSpec, BuiltImage).
- `node_daemons(n)`: n extra dockerd, one per test node, each with its own data root and socket
  (so "is the image on the node" is a real question); `docker_nodes(n)` pairs them with
  `sshd_nodes(n)`: NodeSpecs whose docker_host is their own daemon, plus SshSettings.

Function fixtures:
- `small_image(name, payload_mb=0, workload_change="")`: a quick image of a test-only profile
  (a tiny real wheel, a copy of the workload with an optional payload file) on the local daemon.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.images.build import BuiltImage, build_image, image_id, open_api
from orchestrator.images.profiles import load_profile
from orchestrator.images.records import record_for
from orchestrator.images.spec import ImageSpec, Sha256Cache, make_image_spec
from orchestrator.specs import NodeSpec, SshSettings

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("ORCHESTRATOR_TEST_CACHE", "/var/cache/orchestrator-test"))
RUN_DIR = Path("/run/orch-test")
DATA_DIR = Path("/var/lib/orch-test")
_DAEMON_READY_S = 60.0


def _script(name: str, *args: str) -> str:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/{name} failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def docker_api() -> Iterator[Any]:
    try:
        api = open_api()
    except Exception as exc:  # a missing daemon is a failure with the fix, not a skip
        raise RuntimeError(
            f"the Docker daemon is not reachable ({exc}): start it with scripts/start-services.sh"
        ) from exc
    yield api
    api.close()


@pytest.fixture(scope="session")
def base_image(docker_api: Any) -> str:
    """The bookworm base image reference (made once per machine, ~70 s the first time)."""
    ref = _script("make-base-image.sh")
    assert image_id(docker_api, ref) is not None
    return ref


@pytest.fixture(scope="session")
def base_image_without_python(docker_api: Any) -> str:
    """A bookworm base like a CUDA runtime image: no python3, no InfiniBand libraries."""
    ref = _script("make-base-image.sh", "--without-python")
    assert image_id(docker_api, ref) is not None
    return ref


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    override = os.environ.get("ORCHESTRATOR_TEST_WHEELHOUSE")
    return Path(_script("make-wheelhouse.sh", override or str(CACHE_DIR / "wheelhouse")))


@pytest.fixture(scope="session")
def sha_cache() -> Sha256Cache:
    return Sha256Cache(CACHE_DIR / "sha256-cache.json")


@pytest.fixture(scope="session")
def build_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build-logs")


@pytest.fixture(scope="session")
def cpu_image(
    docker_api: Any, base_image: str, wheelhouse: Path, sha_cache: Sha256Cache
) -> tuple[ImageSpec, BuiltImage]:
    """The cpu profile's image with torch: ~3.5 min the first time on a machine, then reused
    (or ~30 s when only the workload changed: the wheel-install stage is cached)."""
    profile = load_profile("cpu")
    spec = make_image_spec(
        profile,
        [wheelhouse],
        image_id(docker_api, base_image),
        base_image=base_image,
        cache=sha_cache,
    )
    built = build_image(spec, docker_api)
    record_for(spec, built)  # its build record, as `orchestrator image build` keeps it
    return spec, built


# -- a quick test-only profile -------------------------------------------------------------


def tiny_wheel(directory: Path, name: str = "orchtest", version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel (one module) that pip installs without an index."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: orchestrator-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, data)
    wheel.write_bytes(buf.getvalue())
    return wheel


TEST_PROFILE = """
name = "{name}"
description = "test-only profile: the bookworm base and one tiny wheel"
[image]
base = "{base}"
python = "/usr/bin/python3"
wheel_dir = "{wheels}"
vendor_wheels = ["orchtest-*.whl"]
requirements = {requirements}
venv_options = []
[runtime]
shm_size = "256m"
ulimits = ["stack=67108864"]  # as the cpu profile: this machine caps locked memory
env = {{ ORCH_TEST_VENDOR = "1" }}
"""


def write_test_profile(
    root: Path, name: str, base: str, wheels: Path, requirements: str = '["orchtest"]'
) -> Path:
    """images/<name>/profile.toml in `root` (with the shared template): a vendor added as data."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "images" / "Dockerfile.template", root / "Dockerfile.template")
    (root / name).mkdir(exist_ok=True)
    (root / name / "profile.toml").write_text(
        TEST_PROFILE.format(name=name, base=base, wheels=wheels, requirements=requirements)
    )
    return root


def copy_workload(dest: Path, change: str = "", payload_mb: int = 0) -> Path:
    """A copy of this checkout's workload/ (optionally one file changed, plus a payload)."""
    target = dest / "workload"
    shutil.copytree(REPO / "workload", target, ignore=shutil.ignore_patterns("__pycache__"))
    if change:
        with open(target / "faster_rcnn" / "__init__.py", "a") as handle:
            handle.write(f"# {change}\n")
    if payload_mb:
        # Random bytes (hex, so the workload's .txt filter ships it): incompressible payload.
        with open(target / "payload.txt", "wb") as handle:
            for _ in range(payload_mb):
                handle.write(os.urandom(1 << 19).hex().encode())
    return target


@dataclass
class SmallImage:
    spec: ImageSpec
    built: BuiltImage
    images_root: Path
    workload: Path


@pytest.fixture
def small_image(
    docker_api: Any, base_image: str, build_logs: Path, tmp_path: Path
) -> Iterator[Callable[..., SmallImage]]:
    made: list[str] = []

    def make(
        name: str = "orchtest",
        payload_mb: int = 0,
        workload_change: str = "",
        requirements: str = '["orchtest"]',
    ) -> SmallImage:
        work = tmp_path / f"{name}-{len(made)}"
        wheels = work / "wheels"
        tiny_wheel(wheels)
        root = write_test_profile(work / "images", name, base_image, wheels, requirements)
        workload = copy_workload(work / "src", workload_change, payload_mb)
        spec = make_image_spec(
            load_profile(name, root),
            None,
            image_id(docker_api, base_image),
            workload_dir=workload,
            cache=Sha256Cache(None),
        )
        built = build_image(spec, docker_api, log_dir=build_logs)
        made.append(spec.tag)
        return SmallImage(spec, built, root, workload)

    yield make
    for tag in made:
        try:
            docker_api.remove_image(tag, force=True)
        except Exception:
            pass


# -- layered images without a base image or a package ---------------------------------------


def _blob(seed: str, size_mb: int) -> bytes:
    """size_mb MB of incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size_mb << 20)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layered_image(
    api: Any, name: str, sizes_mb: tuple[int, ...], change: str = ""
) -> tuple[str, list[str]]:
    """An image of len(sizes_mb) + 1 layers, made without a registry: an imported base of
    sizes_mb[0] MB of incompressible bytes, one COPY layer per further size, and this checkout's
    workload on top (with one file changed when `change` is given). Returns (tag, diff ids).
    Tagged by content: the same arguments give the same layers and reuse the image."""
    base = f"orchestrator-test/{name}-base:{sizes_mb[0]}"
    if image_id(api, base) is None:
        api.import_image_from_data(
            _tar({"data0/blob": _blob(f"{name}-0", sizes_mb[0])}), repository=base.split(":")[0],
            tag=str(sizes_mb[0]),
        )  # fmt: skip
    members = {f"data{i}/blob": _blob(f"{name}-{i}", mb) for i, mb in enumerate(sizes_mb) if i}
    for path in sorted((REPO / "workload").rglob("*.py")):
        members[f"workload/{path.relative_to(REPO / 'workload')}"] = path.read_bytes()
    if change:
        members["workload/faster_rcnn/__init__.py"] += f"# {change}\n".encode()
    lines = [f"FROM {base}"] + [f"COPY data{i}/ /data{i}/" for i in range(1, len(sizes_mb))]
    members["Dockerfile"] = "\n".join(
        [*lines, "COPY workload/ /opt/orchestrator/workload/", ""]
    ).encode()
    digest = hashlib.sha256()
    for member, data in sorted(members.items()):
        digest.update(f"{member} {hashlib.sha256(data).hexdigest()}\n".encode())
    tag = f"orchestrator-test/{name}:{digest.hexdigest()[:16]}"
    if image_id(api, tag) is None:
        for event in api.build(
            fileobj=io.BytesIO(_tar(members)), custom_context=True, tag=tag, rm=True, decode=True
        ):
            if "error" in event:
                raise RuntimeError(f"building {tag} failed: {event['error']}")
    return tag, list(api.inspect_image(tag)["RootFS"]["Layers"])


# -- per-node Docker daemons -----------------------------------------------------------------


@dataclass
class NodeDaemon:
    """A dockerd of its own for one test node; it shares the host's docker0 bridge (never
    --bridge=none: that would delete docker0 for the machine's main daemon)."""

    name: str
    data_root: Path
    exec_root: Path
    pidfile: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    netns: str | None = None  # run in this network namespace (its own, so --bridge=none is safe)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.docker_host, *args], capture_output=True, text=True, check=check
        )

    def start(self) -> NodeDaemon:
        for path in (self.data_root, self.exec_root):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        self.socket.unlink(missing_ok=True)
        argv = [
            "dockerd",
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.docker_host,
            "--iptables=false",
            "--ip-masq=false",
        ]
        if self.netns:
            # nsenter, not `ip netns exec`: that mounts a fresh /sys without the cgroups dockerd needs
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv, "--bridge=none"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + _DAEMON_READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd for {self.name} exited: {self.log.read_text()[-2000:]}"
                )
            if self.docker("info", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dockerd for {self.name} did not answer within {_DAEMON_READY_S:g}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        # dockerd leaves its network namespace bind-mounted in the exec root, and a killed one
        # its private bind mount of the data root's overlay2 folder: unmount what is left.
        for mount in self._mounts():
            subprocess.run(["umount", "-l", mount], capture_output=True)
        for path in (self.data_root, self.exec_root):
            shutil.rmtree(path, ignore_errors=True)
        self.socket.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)

    def remove_image(self, tag: str) -> None:
        self.docker("rmi", "-f", tag, check=False)

    def _mounts(self) -> list[str]:
        """Mount points under the data and exec roots, deepest first."""
        roots = (f"{self.data_root}/", f"{self.exec_root}/")
        points = []
        with open("/proc/self/mountinfo") as info:
            for line in info:
                point = line.split()[4]
                if (point + "/").startswith(roots):
                    points.append(point)
        return sorted(set(points), key=len, reverse=True)


def start_node_daemons(
    count: int, prefix: str = "", log_dir: Path | None = None
) -> list[NodeDaemon]:
    """`count` daemons named <prefix>-node<i>; their logs go to `log_dir` (default: the data root's
    parent, removed with nothing else)."""
    prefix = prefix or f"p{os.getpid()}"
    log_dir = log_dir or DATA_DIR
    daemons = []
    try:
        for i in range(1, count + 1):
            name = f"{prefix}-node{i}"
            daemons.append(
                NodeDaemon(
                    name=name,
                    data_root=DATA_DIR / name,
                    exec_root=RUN_DIR / f"{name}-exec",
                    pidfile=RUN_DIR / f"{name}.pid",
                    socket=RUN_DIR / f"{name}.sock",
                    log=log_dir / f"{name}.log",
                ).start()
            )
    except BaseException:
        for daemon in daemons:
            daemon.stop()
        raise
    return daemons


@pytest.fixture(scope="session")
def node_daemons(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[int], list[NodeDaemon]]]:
    started: dict[int, list[NodeDaemon]] = {}

    def get(count: int) -> list[NodeDaemon]:
        if count not in started:
            RUN_DIR.mkdir(parents=True, exist_ok=True)
            DATA_DIR.mkdir(parents=True, exist_ok=True)
            logs = tmp_path_factory.mktemp("dockerd-logs")
            started[count] = start_node_daemons(count, f"p{os.getpid()}n{count}", logs)
        return started[count]

    yield get
    for daemons in started.values():
        for daemon in daemons:
            daemon.stop()


@dataclass
class DockerNodes:
    nodes: tuple[NodeSpec, ...]  # docker_host set to each node's own daemon
    ssh: SshSettings
    daemons: list[NodeDaemon]


@pytest.fixture(scope="session")
def docker_nodes(
    sshd_nodes: Callable[[int], Any], node_daemons: Callable[[int], list[NodeDaemon]]
) -> Callable[[int], DockerNodes]:
    """`docker_nodes(2)`: two sshd nodes, each with its own Docker daemon."""

    def get(count: int) -> DockerNodes:
        cluster = sshd_nodes(count)
        daemons = node_daemons(count)
        nodes = tuple(replace(n, docker_host=d.docker_host) for n, d in zip(cluster.nodes, daemons))
        return DockerNodes(nodes, cluster.ssh, daemons)

    return get


# -- the CLI on a frozen copy of this checkout -------------------------------------------------


@dataclass
class CliSnapshot:
    """`orchestrator` run from a copy of orchestrator/, workload/ and images/: image tags cover
    the workload source, so a copy keeps them stable while the checkout is being edited."""

    root: Path
    cwd: Path

    @property
    def workload(self) -> Path:
        return self.root / "workload"

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "orchestrator", *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**os.environ, "PYTHONPATH": str(self.root), **(env or {})},
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def cli_snapshot(tmp_path: Path) -> CliSnapshot:
    root = tmp_path / "checkout"
    for part in ("orchestrator", "workload", "images", "migrations"):
        if (REPO / part).exists():
            shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return CliSnapshot(root, cwd)


# -- a registry on loopback (Debian's docker-registry) -----------------------------------------


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`127.0.0.1:PORT` of a real registry (docker-registry, apt package) for this session.
    Docker trusts plain-HTTP registries on loopback addresses without configuration."""
    import socket
    import urllib.request

    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed: apt-get install -y docker-registry")
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "log:\n  level: warn\n"
    )
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(root / 'registry.log').read_text()[-1000:]}"
                    ) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
