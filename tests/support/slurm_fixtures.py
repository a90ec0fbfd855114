"""A real two-node Slurm cluster on this machine, for tests and bench/.

`SlurmCluster(root).start()` runs its own munged (own key and socket under root), one slurmctld
and one `slurmd -N nX` per node, the nodes on their own loopback addresses (127.0.1.1,
127.0.1.2) and ports; everything is configured by root/slurm.conf, which `SLURM_CONF` points
every client (sbatch, squeue, scontrol, scancel, srun) at. Stopped at teardown: scontrol
shutdown, then every daemon by its pid file. Needs root, slurm-wlm and munge; FAILS, never skips,
without them (scripts/install-system-packages.sh installs them).

Fixtures: `slurm_cluster` (session-scoped; sets SLURM_CONF in os.environ for the session so the
CLI started as a subprocess talks to this cluster) and `slurm_cfg` (writes a cluster file for
it; checks at teardown that the test left no job).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.workload_fixtures import free_port

NODES = (("n1", "127.0.1.1", 17001), ("n2", "127.0.1.2", 17002))
CTLD_PORT = 16817
_TOOLS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "munged", "mungekey")

_CONF = """\
ClusterName=orchtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
{nodes}
PartitionName=test Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


def _require_tools() -> None:
    missing = [t for t in _TOOLS if not shutil.which(t)]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not found: install slurm-wlm and munge "
            "(scripts/install-system-packages.sh)"
        )
    if os.geteuid() != 0:
        raise RuntimeError("the Slurm test cluster runs slurmd as root: run the tests as root")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class SlurmCluster:
    root: Path
    partition: str = "test"
    node_names: tuple[str, ...] = tuple(n for n, _, _ in NODES)
    pid_files: list[Path] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _run(self, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> SlurmCluster:
        _require_tools()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(exist_ok=True)
        munge_dir = self.root / "munge"
        key, sock = munge_dir / "munge.key", munge_dir / "munge.socket"
        subprocess.run(["mungekey", "-c", "-f", "-k", str(key)], check=True, capture_output=True)
        key.chmod(0o600)
        munge_pid = munge_dir / "munged.pid"
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={munge_pid}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
        )
        self.pid_files.append(munge_pid)
        nodes = "\n".join(
            f"NodeName={name} NodeAddr={addr} NodeHostname={socket.gethostname()} Port={port} "
            "CPUs=2 RealMemory=1000 State=UNKNOWN"
            for name, addr, port in NODES
        )
        self.conf.write_text(
            _CONF.format(
                host=socket.gethostname(),
                ctld_port=CTLD_PORT,
                munge_socket=sock,
                root=self.root,
                nodes=nodes,
                node_names=",".join(self.node_names),
            )
        )
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], env=self.env, check=True)
        self.pid_files.append(self.root / "slurmctld.pid")
        for name, _, _ in NODES:
            subprocess.run(["slurmd", "-N", name, "-f", str(self.conf)], env=self.env, check=True)
            self.pid_files.append(self.root / f"slurmd-{name}.pid")
        self._wait_idle()
        return self

    def _wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            res = self._run("sinfo", "-h", "-N", "-o", "%N %t")
            out = res.stdout + res.stderr
            states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
            if set(states) == set(self.node_names) and all(
                s.rstrip("*") == "idle" for s in states.values()
            ):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm test nodes not idle after {timeout:.0f}s: {out.strip()}")

    def jobs(self) -> list[str]:
        """Ids of every job the controller still has pending or running."""
        res = self._run("squeue", "-h", "-o", "%i %T")
        return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]

    def wait_no_jobs(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.jobs():
            raise AssertionError(f"Slurm jobs still active: {self.jobs()}")

    def stop(self) -> None:
        self._run("scancel", "--full", "--user=root", timeout=10)
        self._run("scontrol", "shutdown", timeout=10)
        deadline = time.monotonic() + 15
        for pid_file in reversed(self.pid_files):
            pid = _pid(pid_file)
            if pid is None:
                continue
            while _alive(pid) and time.monotonic() < deadline:
                if pid_file.name.startswith("munged"):
                    os.kill(pid, signal.SIGTERM)
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    # A short root: slurm's socket paths are limited in length.
    root = Path(tmp_path_factory.mktemp("slurm"))
    cluster = SlurmCluster(root)
    old = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def write_slurm_cluster_file(
    path: Path, *, data_dir: Path, shared_dir: Path, extra_sbatch: tuple[str, ...] = ()
) -> Path:
    options = ", ".join(json.dumps(o) for o in extra_sbatch)
    path.write_text(
        "\n".join(
            [
                "[cluster]",
                'name = "slurmtest"',
                'vendor = "cpu"',
                'backend = "slurm"',
                f"master_port = {free_port()}",  # other tests on this machine use 29500
                "[case]",
                f"data_dir = {json.dumps(str(data_dir))}",
                "[slurm]",
                'partition = "test"',
                'time_limit = "00:15:00"',
                f"sbatch_options = [{options}]",
                f"shared_dir = {json.dumps(str(shared_dir))}",
                f"python = {json.dumps(sys.executable)}",
                'socket_ifname = "lo"',
                "poll_interval_s = 0.5",
                "",
            ]
        )
    )
    return path


def node_local_cfg(cfg: Path, tmp_path: Path) -> Path:
    """Turn a cluster file into a site without a shared file system: node_dir set, shared_dir
    made unusable (below a plain file), so any use of it would fail."""
    blocker = tmp_path / "no-shared-fs"
    blocker.write_text("")
    text = cfg.read_text().replace(str(tmp_path / "shared"), str(blocker / "shared"))
    cfg.write_text(text.replace("[slurm]\n", f'[slurm]\nnode_dir = "{tmp_path}/node-local"\n'))
    return cfg


@pytest.fixture
def slurm_cfg(slurm_cluster, tiny_coco, tmp_path):
    def make(*extra_sbatch: str, name: str = "cluster.toml") -> Path:
        return write_slurm_cluster_file(
            tmp_path / name,
            data_dir=tiny_coco,
            shared_dir=tmp_path / "shared",
            extra_sbatch=extra_sbatch,
        )

    yield make
    slurm_cluster.wait_no_jobs()
