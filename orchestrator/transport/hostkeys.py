"""Host key verification: the user's and the cluster file's known_hosts, nothing accepted
silently.

An unknown key refuses the node (HostKeyError naming the key's type and SHA256 fingerprint and
how to record it) unless the cluster file says `accept_new_host_keys = true`; then the key is
appended to the first known_hosts file of the settings and the fingerprint is reported so that
the run can store it. A changed key is refused always ("possible man-in-the-middle").
"""

from __future__ import annotations

import fnmatch
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from orchestrator.errors import HostKeyError
from orchestrator.specs import SshSettings

USER_KNOWN_HOSTS = "~/.ssh/known_hosts"


def host_key_name(address: str, port: int) -> str:
    """The name a host has in known_hosts: `addr` on port 22, else `[addr]:port`."""
    return address if port == 22 else f"[{address}]:{port}"


def describe_key(key: paramiko.PKey) -> str:
    """`ssh-ed25519 SHA256:...`, as `ssh-keygen -lf` shows it."""
    return f"{key.get_name()} {key.fingerprint}"


@dataclass
class _Entry:
    patterns: tuple[str, ...]
    key: paramiko.PKey
    source: Path
    revoked: bool = False

    def matches(self, name: str) -> bool:
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            pattern = pattern[1:] if negated else pattern
            if pattern.startswith("|1|"):
                hit = paramiko.HostKeys.hash_host(name, pattern) == pattern
            elif "*" in pattern or "?" in pattern:
                hit = fnmatch.fnmatchcase(name, pattern)
            else:
                hit = pattern == name
            if hit and negated:
                return False
            matched = matched or hit
        return matched


class KnownHosts:
    """The known host keys of a session: ~/.ssh/known_hosts plus the settings' files.

    Shared by all nodes' connections; appending (accept_new_host_keys) is thread-safe.
    """

    def __init__(self, files: list[Path], write_to: Path) -> None:
        self.files = files
        self.write_to = write_to
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        for path in files:
            self._load(path)

    @classmethod
    def from_settings(cls, ssh: SshSettings) -> KnownHosts:
        extra = [Path(p).expanduser() for p in ssh.known_hosts]
        user = Path(USER_KNOWN_HOSTS).expanduser()
        files = ([user] if user.is_file() else []) + extra
        return cls(files, extra[0] if extra else user)

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return  # a configured file that does not exist yet knows no hosts
        except OSError as exc:
            raise HostKeyError(
                f"cannot read known_hosts file {path}: {exc.strerror}", remedy="fix its permissions"
            ) from exc
        for line in text.splitlines():
            entry = self._parse(line.strip(), path)
            if entry is not None:
                self._entries.append(entry)

    @staticmethod
    def _parse(line: str, source: Path) -> _Entry | None:
        if not line or line.startswith("#"):
            return None
        revoked = False
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            if marker != "@revoked":
                return None  # @cert-authority: certificates are not used here
            revoked = True
        try:
            parsed = HostKeyEntry.from_line(line.strip())
        except Exception:  # InvalidHostKey, SSHException, ValueError: a broken line
            return None  # a line OpenSSH would also ignore
        if parsed is None:
            return None
        return _Entry(tuple(parsed.hostnames), parsed.key, source, revoked)

    def lookup(self, name: str) -> list[paramiko.PKey]:
        """Keys recorded for a host name (revoked ones excluded)."""
        with self._lock:
            return [e.key for e in self._entries if not e.revoked and e.matches(name)]

    def source_of(self, name: str) -> Path:
        """The file that records `name` (for the remedy of a changed key)."""
        with self._lock:
            for entry in self._entries:
                if not entry.revoked and entry.matches(name):
                    return entry.source
        return self.write_to

    def is_revoked(self, key: paramiko.PKey) -> bool:
        with self._lock:
            return any(e.revoked and e.key == key for e in self._entries)

    def append(self, name: str, key: paramiko.PKey) -> None:
        """Record a newly accepted key: one line appended to `write_to` (created 0600)."""
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        with self._lock:
            self.write_to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.write_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line)
            self._entries.append(_Entry((name,), key, self.write_to))


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """What to do with a key known_hosts does not list: refuse, or accept and record it."""

    def __init__(self, known: KnownHosts, accept_new: bool, node: str, address: str, port: int):
        self.known, self.accept_new = known, accept_new
        self.node, self.address, self.port = node, address, port
        self.accepted: str | None = None  # fingerprint of the key accepted by this connection

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if self.known.is_revoked(key):
            raise revoked_key_error(self.node, hostname, key)
        if not self.accept_new:
            raise unknown_key_error(self.node, self.address, self.port, key, self.known)
        self.known.append(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.accepted = key.fingerprint


def unknown_key_error(
    node: str, address: str, port: int, key: paramiko.PKey, known: KnownHosts
) -> HostKeyError:
    name = host_key_name(address, port)
    scan = f"ssh-keyscan -p {port} {address}" if port != 22 else f"ssh-keyscan {address}"
    return HostKeyError(
        "host key check failed",
        {node: f"unknown host key for {name} ({describe_key(key)}); refused"},
        f"check that fingerprint with the node's admin, then record it with "
        f"`{scan} >> {known.write_to}`, or set accept_new_host_keys = true in the "
        f"cluster file's [ssh] section to accept and record new keys",
    )


def changed_key_error(
    node: str, name: str, expected: paramiko.PKey, got: paramiko.PKey, known: KnownHosts
) -> HostKeyError:
    source = known.source_of(name)
    return HostKeyError(
        "host key check failed",
        {
            node: f"host key for {name} has CHANGED (possible man-in-the-middle attack): "
            f"expected {describe_key(expected)}, got {describe_key(got)}; refused"
        },
        f"if the node was reinstalled, verify the new fingerprint with its admin, then remove "
        f"the old key with `ssh-keygen -R '{name}' -f {source}` and connect again",
    )


def revoked_key_error(node: str, name: str, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        "host key check failed",
        {node: f"host key for {name} ({describe_key(key)}) is marked @revoked; refused"},
        "ask the node's admin for its current key",
    )
