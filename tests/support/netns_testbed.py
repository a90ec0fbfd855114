"""A multi-node testbed on one machine: each node in its own network namespace with its own sshd
and its own dockerd, joined by a bridge through veth links shaped to one rate; the build host
in a namespace of its own with an equally shaped link. For tests and bench/ (docs/testing.md).

    with Testbed(tmp_path, nodes=4, rate_mbit=200) as bed:
        with bed.on_build_host():                  # this thread's sockets leave through its link
            with NodeSession(bed.nodes, bed.ssh) as session: ...
        bed.cut("node2"); bed.restore("node2")      # a node that can be cut off
        bed.set_rate("node3", 20)                   # a slow link
        bed.kill_dockerd("node2")                   # a daemon that dies
        bed.counters()                               # bytes in/out of each link
        bed.leftovers()                              # processes / listening ports we left

Addresses (198.18.0.0/24, a benchmarking range) exist only inside the namespaces; the bridge
lives in a namespace of its own, so nothing is added to the machine's own network. Everything
is torn down by stop(), also after a failure, and namespaces left by a killed run are removed
by the next one. Needs root, iproute2 (ip, tc, ss), util-linux (nsenter), openssh-server and
docker.io.
"""

from __future__ import annotations

import ctypes
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.specs import NodeSpec, SshSettings
from tests.support.docker_fixtures import DATA_DIR, RUN_DIR, NodeDaemon
from tests.support.sshd_fixtures import SSHD, keygen

NETNS_DIR = Path("/run/netns")
PREFIX = "orchtb"
SUBNET = "198.18.0"
BUILD_HOST_ADDRESS = f"{SUBNET}.1"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# What may run in a node's namespace between transfers: its daemons and sshd's sessions.
DAEMONS = frozenset({"sshd", "dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2"})

_SSHD_CONFIG = """\
ListenAddress {address}:22
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
MaxStartups 200:30:400
MaxSessions 64
UseDNS no
PrintMotd no
"""


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _tc(netns: str, *args: str) -> None:
    proc = subprocess.run(["tc", "-n", netns, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {netns} failed: {proc.stderr.strip()}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread in network namespace `name` (setns is per thread); sockets made
    here, and threads and processes started here, stay in it. Back to the old one at exit."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces(prefix: str = PREFIX) -> list[str]:
    """Namespaces of testbeds whose process is gone (a killed run): their processes are killed
    and the namespaces deleted. Returns their names."""
    removed = []
    for path in NETNS_DIR.glob(f"{prefix}-*") if NETNS_DIR.exists() else []:
        match = re.match(rf"{prefix}-(\d+)-", path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        for pid in _ns_pids(path.name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", path.name], capture_output=True)
        removed.append(path.name)
    return removed


def _ns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class BedNode:
    name: str
    netns: str
    address: str
    port: str  # the bridge-side end of its veth, in the switch namespace
    dir: Path
    host_key: Path
    daemon: NodeDaemon | None = None
    sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    listening: set[str] = field(default_factory=set)  # TCP ports open when it was started


class Testbed:
    """See the module docstring. `docker=False` gives nodes with sshd only."""

    __test__ = False  # not a test class, for pytest

    def __init__(
        self,
        root: Path,
        nodes: int,
        rate_mbit: int = 200,
        *,
        docker: bool = True,
        tag: str = "",
        prefix: str = PREFIX,
    ) -> None:
        if not 1 <= nodes <= 200:
            raise ValueError("1 to 200 nodes")
        self.root = Path(root)
        self.rate_mbit = rate_mbit
        self.docker = docker
        # `prefix`: the namespaces' names begin with it (tests of one area keep their own)
        self.prefix = prefix
        self.id = f"{prefix}-{os.getpid()}-{tag or str(time.monotonic_ns() % 100000)}"
        self.switch = f"{self.id}-sw"
        self.build_host = BedNode(
            "build-host", f"{self.id}-bh", BUILD_HOST_ADDRESS, "pbh", self.root / "bh", Path()
        )
        self.node_list = [
            BedNode(
                f"node{i}",
                f"{self.id}-n{i}",
                f"{SUBNET}.{10 + i}",
                f"p{i}",
                self.root / f"node{i}",
                self.root / f"node{i}" / "ssh_host_ed25519_key",
            )
            for i in range(1, nodes + 1)
        ]
        self.client_key = self.root / "id_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.user = getpass.getuser()
        self._namespaces: list[str] = []

    # -- what tests and the benchmark use -------------------------------------------------------

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(
            NodeSpec(
                name=n.name,
                address=n.address,
                port=22,
                user=self.user,
                key_file=str(self.client_key),
                workdir=str(self.root / "work" / n.name),
                docker_host=n.daemon.docker_host if n.daemon else None,
            )
            for n in self.node_list
        )

    @property
    def ssh(self) -> SshSettings:
        return SshSettings(known_hosts=(str(self.known_hosts),), connect_timeout_s=10.0)

    def node(self, name: str) -> BedNode:
        return next(n for n in self.node_list if n.name == name)

    def daemon(self, name: str) -> NodeDaemon:
        daemon = self.node(name).daemon
        assert daemon is not None, "started with docker=False"
        return daemon

    def on_build_host(self) -> Iterator[None]:
        """The calling thread's network is the build host's until the block ends."""
        return in_netns(self.build_host.netns)

    def build_host_argv(self, argv: list[str]) -> list[str]:
        """argv run in the build host's namespace (for subprocesses: the CLI, ssh)."""
        return ["nsenter", f"--net={NETNS_DIR / self.build_host.netns}", *argv]

    def ssh_options(self) -> list[str]:
        """OpenSSH client options that trust these nodes, with the test key."""
        return [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(self.client_key),
        ]  # fmt: skip

    def counters(self) -> dict[str, tuple[int, int]]:
        """(rx bytes, tx bytes) of each namespace's end of its link, by node name and
        "build-host": what the machine received and sent."""
        found = {}
        for bed in [self.build_host, *self.node_list]:
            link = json.loads(_ip("-n", bed.netns, "-s", "-j", "link", "show", "dev", "eth0"))[0]
            stats = link["stats64"]
            found[bed.name] = (int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"]))
        return found

    def cpu_seconds(self) -> float:
        """CPU time used so far by everything in the nodes' namespaces (the running processes
        and the children they reaped): a difference of two readings is the nodes' work."""
        ticks = 0
        for bed in self.node_list:
            for pid in _ns_pids(bed.netns):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                ticks += sum(int(x) for x in stat[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def cut(self, name: str) -> None:
        """The node's cable pulled: its bridge port goes down; the node and its daemons run on."""
        _ip("-n", self.switch, "link", "set", "dev", self.node(name).port, "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", "dev", self.node(name).port, "up")

    def set_rate(self, name: str, rate_mbit: int) -> None:
        """Shape the node's link (both directions) to another rate."""
        bed = self.node(name)
        self._shape(bed.netns, "eth0", rate_mbit, "change")
        self._shape(self.switch, bed.port, rate_mbit, "change")

    def kill_dockerd(self, name: str) -> None:
        """SIGKILL the node's dockerd, as a crash would."""
        daemon = self.daemon(name)
        if daemon.proc is not None:
            daemon.proc.kill()
            daemon.proc.wait(10)

    def restart_dockerd(self, name: str) -> None:
        """A fresh daemon (empty data root) for the node, after kill_dockerd."""
        daemon = self.daemon(name)
        daemon.stop()
        for pid in _ns_pids(self.node(name).netns):
            if _comm(pid).startswith("containerd"):
                os.kill(pid, signal.SIGKILL)  # the killed daemon's containerd, if it outlived it
        daemon.start()

    def leftovers(self) -> dict[str, list[str]]:
        """Per node: processes other than its daemons and sshd, and TCP ports listening that
        were not when it started. Empty lists when a transfer left nothing behind."""
        found = {}
        for bed in self.node_list:
            extra = [f"{pid} {_comm(pid)}" for pid in _ns_pids(bed.netns)]
            extra = [p for p in extra if p.split(" ", 1)[1] not in DAEMONS and p.split(" ", 1)[1]]
            ports = sorted(self._listening(bed.netns) - bed.listening)
            found[bed.name] = extra + [f"listening on {p}" for p in ports]
        return found

    def wait_for_no_leftovers(self, timeout: float = 15.0) -> dict[str, list[str]]:
        """leftovers() once it is empty, or what is still there after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.leftovers()
            if not any(found.values()) or time.monotonic() > deadline:
                return {name: items for name, items in found.items() if items}
            time.sleep(0.2)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Testbed:
        remove_stale_namespaces(self.prefix)
        try:
            self._network()
            self._keys()
            for bed in self.node_list:
                self._start_sshd(bed)
            if self.docker:
                for bed in self.node_list:
                    bed.daemon = NodeDaemon(
                        name=f"{self.id}-{bed.name}",
                        data_root=DATA_DIR / f"{self.id}-{bed.name}",
                        exec_root=RUN_DIR / f"{self.id}-{bed.name}-x",
                        pidfile=RUN_DIR / f"{self.id}-{bed.name}.pid",
                        socket=RUN_DIR / f"{self.id}-{bed.name}.sock",
                        log=bed.dir / "dockerd.log",
                        netns=bed.netns,
                    )
                self._start_daemons()
            for bed in self.node_list:
                bed.listening = self._listening(bed.netns)
        except BaseException:
            self.stop()
            raise
        return self

    def _network(self) -> None:
        for netns in [self.switch, self.build_host.netns, *(b.netns for b in self.node_list)]:
            _ip("netns", "add", netns)
            self._namespaces.append(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for bed in [self.build_host, *self.node_list]:
            # Both ends are made in their namespaces: nothing appears in the machine's own.
            _ip("link", "add", "eth0", "netns", bed.netns, "type", "veth", "peer", "name",
                bed.port, "netns", self.switch)  # fmt: skip
            _ip("-n", self.switch, "link", "set", bed.port, "master", "br0", "up")
            _ip("-n", bed.netns, "addr", "add", f"{bed.address}/24", "dev", "eth0")
            _ip("-n", bed.netns, "link", "set", "eth0", "up")
            self._shape(bed.netns, "eth0", self.rate_mbit, "add")
            self._shape(self.switch, bed.port, self.rate_mbit, "add")

    @staticmethod
    def _shape(netns: str, dev: str, rate_mbit: int, verb: str) -> None:
        # One tick's worth of bytes at least (HZ 250), or tbf cannot reach the rate.
        burst = max(32 * 1024, rate_mbit * 1_000_000 // 8 // 250)
        _tc(netns, "qdisc", verb, "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
            "burst", str(burst), "latency", "50ms")  # fmt: skip

    def _keys(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.client_key.exists():
            keygen(self.client_key, "orchestrator-testbed")
        (self.root / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        lines = []
        for bed in self.node_list:
            bed.dir.mkdir(parents=True, exist_ok=True)
            if not bed.host_key.exists():
                keygen(bed.host_key, bed.name)
            key_type, key = Path(f"{bed.host_key}.pub").read_text().split()[:2]
            lines.append(f"{bed.address} {key_type} {key}\n")
        self.known_hosts.write_text("".join(lines))

    def _start_sshd(self, bed: BedNode) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = bed.dir / "sshd_config"
        config.write_text(
            _SSHD_CONFIG.format(
                address=bed.address,
                host_key=bed.host_key,
                pid_file=bed.dir / "sshd.pid",
                authorized_keys=self.root / "authorized_keys",
            )
        )
        bed.sshd = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / bed.netns}", SSHD, "-D", "-f", str(config),
             "-E", str(bed.dir / "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        with in_netns(bed.netns):
            while time.monotonic() < deadline and bed.sshd.poll() is None:
                try:
                    with socket.create_connection((bed.address, 22), timeout=1.0) as sock:
                        if sock.recv(8).startswith(b"SSH-"):
                            return
                except OSError:
                    time.sleep(0.05)
        raise RuntimeError(f"sshd of {bed.name} did not start (see {bed.dir / 'sshd.log'})")

    def _start_daemons(self) -> None:
        """All dockerd at once (each takes ~2 s to answer)."""
        from concurrent.futures import ThreadPoolExecutor

        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        daemons = [b.daemon for b in self.node_list if b.daemon is not None]
        with ThreadPoolExecutor(max_workers=len(daemons)) as pool:
            for future in [pool.submit(d.start) for d in daemons]:
                future.result()

    @staticmethod
    def _listening(netns: str) -> set[str]:
        out = subprocess.run(
            ["nsenter", f"--net={NETNS_DIR / netns}", "ss", "-Hltn"],
            capture_output=True,
            text=True,
        ).stdout
        return {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}

    def stop(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        for bed in self.node_list:
            if bed.sshd is not None and bed.sshd.poll() is None:
                bed.sshd.terminate()
                try:
                    bed.sshd.wait(5)
                except subprocess.TimeoutExpired:
                    bed.sshd.kill()
        daemons = [b.daemon for b in self.node_list if b.daemon is not None]
        if daemons:  # in parallel: removing a data root full of layers takes seconds
            with ThreadPoolExecutor(max_workers=len(daemons)) as pool:
                list(pool.map(NodeDaemon.stop, daemons))
        for netns in reversed(self._namespaces):
            for pid in _ns_pids(netns):  # anything else still in there (an agent, a session)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self._namespaces.clear()

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
