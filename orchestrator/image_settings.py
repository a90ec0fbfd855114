"""The cluster file's [image] table -> ImageSettings (pure; validation with file/key/fix).

Parsed with the rest of the cluster file, so `config` needs nothing of `orchestrator.images`
(the docker SDK, the relay, the fan-out): those are loaded only by what builds or ships images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from orchestrator.states import DISTRIBUTIONS, Distribution
from orchestrator.tables import Dialect, Table, Words

#: build_host meaning this machine's own Docker daemon.
LOCAL = "local"
IMAGE_KEYS = {"vendor", "wheels", "base", "build_host", "registry", "distribution"}
# The cluster file's words, but for the known keys and the wheels (paths, not any strings).
IMAGE_TABLE = replace(
    Dialect(),
    unknown=Words("{source}: {key} is not a known key", "known keys: {known}"),
    strings=Words(
        "{source}: {key} must be a list of paths, got {value}", 'e.g. {name} = ["/opt/wheels"]'
    ),
)


@dataclass(frozen=True)
class ImageSettings:
    """What the cluster file's [image] table (or command-line options) say about images."""

    vendor: str | None = None  # profile name; default: the cluster's vendor
    wheels: tuple[str, ...] = ()  # wheel files or directories; default: the profile's wheel_dir
    base_image: str | None = None  # overrides the profile's base image
    build_host: str = LOCAL  # 'local' (this machine's daemon) or a node name
    registry: str | None = None  # push/pull through it instead of streaming to each node
    distribution: Distribution = "relay"  # or "star": the build host streams to every node


def parse_image_table(table: object, source: str) -> ImageSettings:
    """A cluster file's [image] table -> ImageSettings, for the config loader:

    [image]
    wheels = ["/opt/wheels/metax"]     # files or directories
    base = "metax/c500-pytorch-base:2.19.0.6-ubuntu20.04"
    build_host = "c500-01"             # or "local"
    registry = "registry.lab:5000"     # optional: push/pull instead of streaming
    distribution = "relay"             # default; "star" streams from the build host to each node
    """
    t = Table(table, source, IMAGE_TABLE, "image", IMAGE_KEYS)
    vendor, base, build_host, registry = (
        t.string(key) for key in ("vendor", "base", "build_host", "registry")
    )
    return ImageSettings(
        vendor=vendor,
        wheels=tuple(os.path.expanduser(w) for w in t.strings("wheels")),
        base_image=base,
        build_host=build_host or LOCAL,
        registry=registry,
        distribution=t.choice("distribution", "relay", DISTRIBUTIONS),
    )
