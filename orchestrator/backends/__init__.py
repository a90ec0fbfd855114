"""The backends, chosen in one place: `for_cluster(spec)` (or `by_name` for a stored run).
Each is a package that implements orchestrator.backends.base.Backend; see that module."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.states import BACKENDS

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend
    from orchestrator.specs import ClusterSpec


def by_name(name: str) -> Backend:
    # Imported on use: `orchestrator --help` and the unit tests of one backend stay light.
    if name == "ssh":
        from orchestrator.backends.ssh.backend import SshBackend

        return SshBackend()
    if name == "slurm":
        from orchestrator.backends.slurm.backend import SlurmBackend

        return SlurmBackend()
    raise ConfigError(f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")


def for_cluster(cluster: ClusterSpec) -> Backend:
    return by_name(cluster.backend)


def all_backends() -> list[Backend]:
    return [by_name(name) for name in BACKENDS]
