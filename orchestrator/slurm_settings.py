"""The cluster file's [slurm] table -> SlurmSettings (pure; validation with file/key/fix)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

from orchestrator.tables import Dialect, Table, Words

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
# fullmatch, not ^...$: "$" also matches before a trailing newline.
# Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
_TIME = re.compile(r"UNLIMITED|INFINITE|\d+(-\d+)?(:\d+){0,2}", re.ASCII)
_GRES = re.compile(r"[A-Za-z][\w.-]*(:[\w.-]+)?", re.ASCII)
# The cluster file's words, but for the known keys, the lists (no lone string) and the numbers.
SLURM = replace(
    Dialect(),
    unknown=Words("{source}: {key} is not a known key", "known keys: {known}"),
    number=Words("{source}: {key} must be a positive number, got {value}", "e.g. {example}"),
    strings=Words(
        "{source}: {key} must be a list of strings, got {value}", 'e.g. {name} = ["..."]'
    ),
    lone_string=False,
)


def default_shared_dir() -> str:
    """The user's own folder under their home: private, and on most clusters the home is
    the file system every node mounts."""
    return os.path.expanduser("~/.cache/orchestrator/slurm")


def default_script_dir() -> str:
    return os.path.expanduser("~/.cache/orchestrator/slurm-scripts")


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
    # A directory every node sees at the same path, and only this user can write.
    shared_dir: str = field(default_factory=default_shared_dir)
    # No shared file system: run folders on each node's own disk at this path; the workload
    # travels inside the batch script and results are fetched with `srun --overlap`.
    node_dir: str | None = None
    python: str = "python3"  # interpreter with torch on the nodes (or in the container)
    socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    poll_interval_s: float = 1.0
    # node_dir sites: this machine's private folder for the batch scripts sbatch reads (not a
    # key of the file; the test of the golden script pins it).
    script_dir: str = field(default_factory=default_script_dir)

    @property
    def fetch(self) -> bool:
        """No shared file system: results are fetched from the nodes."""
        return self.node_dir is not None

    @property
    def root(self) -> str:
        """Where run folders and the workload live: shared, or on every node's own disk."""
        return self.node_dir or self.shared_dir


def parse_slurm_table(table: object, source: str) -> SlurmSettings:
    """Validate the [slurm] table of cluster file `source`."""
    t = Table(table, source, SLURM, "slurm", SLURM_KEYS)
    pyxis = t.boolean("pyxis", False, example=True)
    time_limit = t.string("time_limit")
    if time_limit and not _TIME.fullmatch(time_limit):
        t.fail(
            "time_limit",
            f"{time_limit!r} is not a Slurm time",
            'write minutes or D-HH:MM:SS, e.g. time_limit = "02:00:00"',
        )
    gres = t.string("gres")
    if gres and not _GRES.fullmatch(gres):
        t.fail("gres", f"{gres!r} is not a GRES name", 'e.g. gres = "gpu" or "gpu:a100"')
    shared_dir = os.path.expanduser(t.string("shared_dir", default_shared_dir()))
    if not shared_dir.startswith("/"):
        t.fail(
            "shared_dir", f"{shared_dir!r} is not absolute", "a path every node sees, e.g. /shared"
        )
    node_dir = t.string("node_dir")
    if node_dir is not None and not node_dir.startswith("/"):
        t.fail(
            "node_dir",
            f"{node_dir!r} is not absolute",
            'a node-local path, e.g. "/local/scratch/orchestrator"',
        )
    for opt in t.strings("sbatch_options"):
        if not opt.startswith("-"):
            t.fail("sbatch_options", f"item {opt!r} is not an option", 'e.g. ["--exclusive"]')
    container_image = t.string("container_image")
    if pyxis and not container_image:
        t.fail(
            "container_image",
            "is missing while pyxis = true",
            'name the enroot image, e.g. container_image = "/shared/images/metax.sqsh"',
        )
    interval = t.number("poll_interval_s", 1.0)
    return SlurmSettings(
        partition=t.string("partition"),
        account=t.string("account"),
        qos=t.string("qos"),
        time_limit=time_limit,
        gres=gres,
        sbatch_options=t.strings("sbatch_options"),
        pyxis=pyxis,
        container_image=container_image,
        container_mounts=t.strings("container_mounts"),
        shared_dir=shared_dir.rstrip("/") or "/",
        node_dir=node_dir.rstrip("/") or "/" if node_dir else None,
        python=t.string("python", "python3"),
        socket_ifname=t.string("socket_ifname"),
        poll_interval_s=interval,
    )
