"""Real sshd daemons on loopback addresses (127.0.0.2, 127.0.0.3, ...), for tests and bench/.

`SshdCluster(root, n).start()` runs n `sshd -D`, each on its own address with its own ed25519
host key, all on one free port, sharing one client key and one authorized_keys file; it writes
a known_hosts file listing every node as `[addr]:port`. `.nodes` are NodeSpecs (key_file,
port, user), `.ssh` the SshSettings that trust them. Needs root (sshd's /run/sshd) and
openssh-server; fails, never skips, without them.

Fixtures:
- `sshd_nodes(n)`: session-scoped, cached per n; do not change these nodes.
- `private_sshd_nodes(n)`: a fresh cluster for one test, stopped after it; change it freely.
- `changed_host_key_node`: one node whose sshd was restarted with a new host key (known_hosts
  still lists the old one).
- `silent_node(mode)`: a NodeSpec for an address that never answers SSH: "banner" accepts the
  TCP connection and says nothing; "syn" never completes the TCP handshake (full backlog).

Helpers: `alive(pid)` and `group_members(pgid)` look at /proc for live (non-zombie) processes;
`SshdCluster.drop_connections(i)` cuts node i's connections as a crashed node would.
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from orchestrator.specs import NodeSpec, SshSettings

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
_READY_TIMEOUT_S = 10.0

_SSHD_CONFIG = """\
{extra}
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
MaxStartups 200:30:400
MaxSessions 64
UseDNS no
PrintMotd no
LogLevel VERBOSE
"""


def _require_tools() -> None:
    missing = [tool for tool in (SSHD, SSH_KEYGEN) if not shutil.which(tool)]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not found: install openssh-server and openssh-client "
            "(scripts/install-system-packages.sh)"
        )
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    except PermissionError as exc:
        raise RuntimeError("sshd test nodes need /run/sshd: run the tests as root") from exc


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at path (+ .pub); returns the public key line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def _port_is_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _wait_for_banner(address: str, port: int, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((address, port), timeout=1.0) as sock:
                if sock.recv(8).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.01)
    return False


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            table[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), name)
    return table


def _children_of(pid: int) -> list[int]:
    """Direct children of pid (sshd's per-connection processes)."""
    return [child for child, (parent, _) in _parents().items() if parent == pid]


def _sshd_descendants(pid: int) -> list[int]:
    """sshd processes below the listener `pid`: those serving its connections."""
    table = _parents()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, name) in table.items():
            if ppid == parent and name.startswith("sshd"):
                found.append(child)
                frontier.append(child)
    return found


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Running (zombies waiting for init to reap them do not count)."""
    return _process_state(pid) not in (None, "Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


@dataclass
class SshdNode:
    name: str
    address: str
    port: int
    dir: Path
    host_key: Path
    public_host_key: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def known_hosts_line(self) -> str:
        key_type, key_b64 = self.public_host_key.split()[:2]
        return f"[{self.address}]:{self.port} {key_type} {key_b64}"


class SshdCluster:
    """n sshd daemons on 127.0.0.{first_host}..; see the module docstring."""

    def __init__(
        self,
        root: Path,
        count: int,
        *,
        first_host: int = 2,
        name_prefix: str = "node",
        extra_config: str = "",
    ) -> None:
        if not 1 <= count or first_host + count > 255:
            raise ValueError("addresses 127.0.0.2..254 only: at most 253 nodes")
        self.root = Path(root)
        self.count = count
        self.extra_config = extra_config  # sshd_config lines, e.g. "AllowTcpForwarding no"
        self.port = 0
        self.user = getpass.getuser()
        self.client_key = self.root / "id_ed25519"
        self.authorized_keys = self.root / "authorized_keys"
        self.known_hosts = self.root / "known_hosts"
        self.sshd_nodes = [
            SshdNode(
                name=f"{name_prefix}{i + 1}",
                address=f"127.0.0.{first_host + i}",
                port=0,
                dir=self.root / f"{name_prefix}{i + 1}",
                host_key=self.root / f"{name_prefix}{i + 1}" / "ssh_host_ed25519_key",
            )
            for i in range(count)
        ]

    # -- what tests use ---------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(
            NodeSpec(
                name=n.name,
                address=n.address,
                port=n.port,
                user=self.user,
                key_file=str(self.client_key),
                workdir=str(self.root / "work" / n.name),
            )
            for n in self.sshd_nodes
        )

    @property
    def ssh(self) -> SshSettings:
        return self.settings()

    def settings(self, **overrides: object) -> SshSettings:
        """SshSettings trusting these nodes (known_hosts file), with overrides."""
        base = SshSettings(known_hosts=(str(self.known_hosts),), connect_timeout_s=10.0)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def ssh_options(self) -> list[str]:
        """OpenSSH client options for the same trust and key (for `ssh` in tests/bench)."""
        return [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(self.client_key),
        ]  # fmt: skip

    def open_connections(self, index: int) -> int:
        """How many SSH connections node `index`'s sshd is serving now."""
        proc = self.sshd_nodes[index].proc
        return len(_children_of(proc.pid)) if proc is not None else 0

    def drop_connections(self, index: int) -> None:
        """Cut every connection to node `index` the hard way (SIGKILL to the sshd processes
        serving them), as a crashed or rebooted node would; the listener stays up."""
        proc = self.sshd_nodes[index].proc
        for pid in _sshd_descendants(proc.pid) if proc is not None else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def accepted_logins(self, index: int) -> int:
        """How many logins node `index`'s sshd accepted so far (from its log)."""
        log = self.sshd_nodes[index].log
        return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SshdCluster:
        _require_tools()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.client_key.exists():
            self.authorized_keys.write_text(keygen(self.client_key, "orchestrator-tests") + "\n")
        for node in self.sshd_nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            if not node.host_key.exists():
                keygen(node.host_key, node.name)
            node.public_host_key = Path(f"{node.host_key}.pub").read_text().strip()
        for _attempt in range(8):
            port = self._free_port()
            try:
                for node in self.sshd_nodes:
                    node.port = port
                    self._start_node(node)
            except RuntimeError:
                self.stop()
                continue
            self.port = port
            self.write_known_hosts()
            return self
        raise RuntimeError(
            f"could not start {self.count} sshd daemons (see {self.root}/*/sshd.log)"
        )

    def _free_port(self) -> int:
        for _ in range(200):
            port = random.randint(20000, 45000)
            if all(_port_is_free(n.address, port) for n in self.sshd_nodes):
                return port
        raise RuntimeError("no free port on the test addresses")

    def _start_node(self, node: SshdNode) -> None:
        config = node.dir / "sshd_config"
        config.write_text(
            _SSHD_CONFIG.format(
                address=node.address,
                port=node.port,
                host_key=node.host_key,
                pid_file=node.dir / "sshd.pid",
                authorized_keys=self.authorized_keys,
                extra=self.extra_config,  # first: sshd keeps the first value of an option
            )
        )
        node.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(node.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _wait_for_banner(node.address, node.port, node.proc):
            raise RuntimeError(f"sshd for {node.name} did not start (see {node.log})")

    def write_known_hosts(self) -> None:
        self.known_hosts.write_text("".join(n.known_hosts_line + "\n" for n in self.sshd_nodes))

    def stop_node(self, index: int) -> None:
        node = self.sshd_nodes[index]
        if node.proc is None:
            return
        for child in _children_of(node.proc.pid):  # its open connections
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        node.proc.terminate()
        try:
            node.proc.wait(5)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
        node.proc = None

    def restart_with_new_host_key(self, index: int) -> str:
        """Give node `index` a new host key (same address and port); known_hosts keeps the old
        one. Returns the new public key line."""
        node = self.sshd_nodes[index]
        self.stop_node(index)
        node.host_key.unlink()
        Path(f"{node.host_key}.pub").unlink()
        node.public_host_key = keygen(node.host_key, f"{node.name}-new")
        self._start_node(node)
        return node.public_host_key

    def stop(self) -> None:
        for index in range(self.count):
            self.stop_node(index)

    def __enter__(self) -> SshdCluster:
        # `with SshdCluster(...).start() as c:` must not start a second set of sshd processes
        # (the first would outlive the block).
        if self.sshd_nodes and all(node.proc is not None for node in self.sshd_nodes):
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def sshd_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], SshdCluster]]:
    """`sshd_nodes(3)` -> a running SshdCluster of 3 nodes, shared by the whole session."""
    clusters: dict[int, SshdCluster] = {}

    def get(count: int) -> SshdCluster:
        if count not in clusters:
            clusters[count] = SshdCluster(tmp_path_factory.mktemp(f"sshd{count}"), count).start()
        return clusters[count]

    yield get
    for cluster in clusters.values():
        cluster.stop()


@pytest.fixture
def private_sshd_nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[int], SshdCluster]]:
    """`private_sshd_nodes(n)` -> a fresh SshdCluster for this test only."""
    clusters: list[SshdCluster] = []

    def make(count: int) -> SshdCluster:
        cluster = SshdCluster(tmp_path_factory.mktemp("sshd-private"), count).start()
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def changed_host_key_node(private_sshd_nodes: Callable[[int], SshdCluster]) -> SshdCluster:
    """One node whose host key changed after known_hosts recorded it."""
    cluster = private_sshd_nodes(1)
    cluster.restart_with_new_host_key(0)
    return cluster


@pytest.fixture
def silent_node() -> Iterator[Callable[[str], NodeSpec]]:
    """`silent_node("banner" | "syn")` -> a NodeSpec whose address never answers SSH."""
    sockets: list[socket.socket] = []

    def make(mode: str = "banner") -> NodeSpec:
        listener = socket.socket()
        listener.bind(("127.0.0.250", 0))
        sockets.append(listener)
        port = listener.getsockname()[1]
        if mode == "banner":
            listener.listen(16)  # the kernel accepts connections; nobody ever speaks
        elif mode == "syn":
            listener.listen(0)  # one queued connection fills the backlog: SYNs are dropped
            filler = socket.create_connection(("127.0.0.250", port), timeout=2)
            sockets.append(filler)
        else:
            raise ValueError(f"unknown silent_node mode {mode!r}")
        return NodeSpec(name=f"silent-{mode}", address="127.0.0.250", port=port)

    yield make
    for sock in sockets:
        sock.close()
