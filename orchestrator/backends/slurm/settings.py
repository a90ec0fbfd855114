"""The cluster file's [slurm] table -> SlurmSettings (pure; validation with file/key/fix)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ConfigError

SLURM_KEYS = {
    "partition",
    "account",
    "qos",
    "time_limit",
    "gres",
    "sbatch_options",
    "pyxis",
    "container_image",
    "container_mounts",
    "shared_dir",
    "node_dir",
    "python",
    "socket_ifname",
    "poll_interval_s",
}
# Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
_TIME = re.compile(r"^(UNLIMITED|INFINITE|\d+(-\d+)?(:\d+){0,2})$")
_GRES = re.compile(r"^[A-Za-z][\w.-]*(:[\w.-]+)?$")


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None  # sbatch --time
    gres: str | None = None  # e.g. "gpu" -> --gres=gpu:8 for 2x8; None: no GRES asked
    sbatch_options: tuple[str, ...] = ()  # passed verbatim, e.g. ("--exclusive",)
    pyxis: bool = False  # the site has pyxis/enroot: srun --container-image
    container_image: str | None = None  # enroot/pyxis image (squashfs path or registry ref)
    container_mounts: tuple[str, ...] = ()  # extra SRC:DST mounts besides shared_dir and data
    shared_dir: str = "/tmp/orchestrator-slurm"  # a directory every node sees at the same path
    # No shared file system: run folders on each node's own disk at this path; the workload
    # travels inside the batch script and results are fetched with `srun --overlap`.
    node_dir: str | None = None
    python: str = "python3"  # interpreter with torch on the nodes (or in the container)
    socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    poll_interval_s: float = 1.0

    @property
    def fetch(self) -> bool:
        """No shared file system: results are fetched from the nodes."""
        return self.node_dir is not None

    @property
    def root(self) -> str:
        """Where run folders and the workload live: shared, or on every node's own disk."""
        return self.node_dir or self.shared_dir


def parse_slurm_table(table: Any, source: str) -> SlurmSettings:
    """Validate the [slurm] table of cluster file `source`."""

    def fail(key: str, problem: str, remedy: str) -> ConfigError:
        return ConfigError(f"{source}: slurm.{key} {problem}", remedy)

    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: slurm must be a table", "write it as [slurm]")
    unknown = sorted(set(table) - SLURM_KEYS)
    if unknown:
        raise fail(unknown[0], "is not a known key", f"known keys: {', '.join(sorted(SLURM_KEYS))}")

    def text(key: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(key, f"must be a non-empty string, got {value!r}", f'e.g. {key} = "..."')
        return value.strip()

    def texts(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(key, f"must be a list of strings, got {value!r}", f'e.g. {key} = ["..."]')
        return tuple(value)

    pyxis = table.get("pyxis", False)
    if not isinstance(pyxis, bool):
        raise fail("pyxis", f"must be true or false, got {pyxis!r}", "e.g. pyxis = true")
    time_limit = text("time_limit")
    if time_limit and not _TIME.match(time_limit):
        raise fail(
            "time_limit",
            f"{time_limit!r} is not a Slurm time",
            'write minutes or D-HH:MM:SS, e.g. time_limit = "02:00:00"',
        )
    gres = text("gres")
    if gres and not _GRES.match(gres):
        raise fail("gres", f"{gres!r} is not a GRES name", 'e.g. gres = "gpu" or "gpu:a100"')
    shared_dir = text("shared_dir", SlurmSettings.shared_dir) or SlurmSettings.shared_dir
    if not shared_dir.startswith("/"):
        raise fail(
            "shared_dir", f"{shared_dir!r} is not absolute", "a path every node sees, e.g. /shared"
        )
    node_dir = text("node_dir")
    if node_dir is not None and not node_dir.startswith("/"):
        raise fail(
            "node_dir", f"{node_dir!r} is not absolute", 'a node-local path, e.g. "/tmp/orch"'
        )
    for opt in texts("sbatch_options"):
        if not opt.startswith("-"):
            raise fail("sbatch_options", f"item {opt!r} is not an option", 'e.g. ["--exclusive"]')
    container_image = text("container_image")
    if pyxis and not container_image:
        raise fail(
            "container_image",
            "is missing while pyxis = true",
            'name the enroot image, e.g. container_image = "/shared/images/metax.sqsh"',
        )
    interval = table.get("poll_interval_s", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise fail("poll_interval_s", f"must be a positive number, got {interval!r}", "e.g. 1.0")
    return SlurmSettings(
        partition=text("partition"),
        account=text("account"),
        qos=text("qos"),
        time_limit=time_limit,
        gres=gres,
        sbatch_options=texts("sbatch_options"),
        pyxis=pyxis,
        container_image=container_image,
        container_mounts=texts("container_mounts"),
        shared_dir=shared_dir.rstrip("/") or "/",
        node_dir=node_dir.rstrip("/") or "/" if node_dir else None,
        python=text("python", "python3") or "python3",
        socket_ifname=text("socket_ifname"),
        poll_interval_s=float(interval),
    )
