"""Vendor profiles: data in images/<vendor>/profile.toml, read into pure dataclasses.

Adding a vendor means adding a folder with a profile.toml (and, only if the shared one does not
fit, its own Dockerfile template); no code changes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ImageError
from orchestrator.resources import images_dir
from orchestrator.tables import REQUIRED, Dialect, Table, Words, control_character

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILE_FILE = "profile.toml"
# fullmatch, not ^...$: "$" also matches before a trailing newline.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_ULIMITS = ("stack=67108864",)
DEFAULT_RDMA_ULIMITS = ("memlock=-1",)
INFINIBAND_DEVICES = "/dev/infiniband"


def is_ib_device(path: str) -> bool:
    return path == INFINIBAND_DEVICES or path.startswith(INFINIBAND_DEVICES + "/")


# A device path goes into `--device HOST`: docker splits that at ':' (HOST:CONTAINER:PERMS).
_DEVICE = re.compile(r"/[^:,\s]*")

MAX_LABEL = 64  # runs.hardware_label is a string of at most 64 characters

_TOP_KEYS = {"name", "description", "label", "image", "runtime"}
_IMAGE_KEYS = {
    "base",
    "python",
    "template",
    "wheel_dir",
    "vendor_wheels",
    "requirements",
    "venv_options",
}
_RUNTIME_KEYS = {
    "devices",
    "optional_devices",
    "group_add",
    "gpus",
    "options",
    "shm_size",
    "ulimits",
    "rdma_ulimits",
    "env",
    "visible_devices_env",
    "monitor",
}

# A profile's own words: a missing string is one that is not a non-empty string, and the known
# keys, the tables and the lists are worded as they always were.
PROFILE = Dialect(
    error=ImageError,
    not_table=Words("{source}: [{key}] is missing or not a table", "add a [{key}] table"),
    unknown=Words("{source}: {key} is not a known key", "known keys: {known}"),
    missing=Words("{source}: {key} must be a non-empty string, got None", 'write {key} = "..."'),
    string=Words("{source}: {key} must be a non-empty string, got {value}", 'write {key} = "..."'),
    strings=Words("{source}: {key} must be a list of strings, got {value}", 'e.g. {key} = ["a"]'),
    lone_string=False,
)


@dataclass(frozen=True)
class RuntimeOptions:
    """How a container of this vendor is started on a node."""

    devices: tuple[str, ...] = ()  # needed on every node: --device PATH, e.g. /dev/mxcd
    # Used on a node that has them (docker refuses a --device that does not exist), e.g. IB.
    optional_devices: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()  # --group-add NAME, e.g. video
    gpus: str = ""  # --gpus VALUE (NVIDIA Container Toolkit), e.g. all
    options: tuple[str, ...] = ()  # further `docker run` options, one argv item each
    shm_size: str = "8g"
    ulimits: tuple[str, ...] = DEFAULT_ULIMITS  # torch's dataloader likes a large stack
    # Only where an InfiniBand device is used: RDMA pins memory, and some daemons refuse
    # memlock=-1 (rootless, or no CAP_SYS_RESOURCE), so a node without IB goes without it.
    rdma_ulimits: tuple[str, ...] = DEFAULT_RDMA_ULIMITS
    env: Mapping[str, str] = field(default_factory=dict)  # vendor switches, e.g. METAX_USE_TF32=1
    visible_devices_env: str = ""  # e.g. CUDA_VISIBLE_DEVICES
    monitor: tuple[str, ...] = ()  # argv of the vendor's monitor tool, e.g. ("mx-smi",)


@dataclass(frozen=True)
class VendorProfile:
    """One vendor's software stack: the base image, its wheels, and its container options."""

    name: str
    description: str
    label: str  # what tables and reports call the hardware, e.g. "MetaX C500 64G"
    base_image: str
    python: str  # interpreter in the base image that makes the venv
    template_path: Path
    wheel_dir: str  # default place of the wheels on the build machine
    vendor_wheels: tuple[str, ...]  # glob patterns that must each match a wheel
    requirements: tuple[str, ...]  # what pip installs from the wheels (no index)
    venv_options: tuple[str, ...]
    runtime: RuntimeOptions
    source: str  # the profile file, for messages

    @property
    def uses_infiniband(self) -> bool:
        """Its containers may get /dev/infiniband (needed or optional): its image needs the
        verbs libraries for NCCL."""
        return any(is_ib_device(d) for d in (*self.runtime.devices, *self.runtime.optional_devices))


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or images_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{PROFILE_FILE}"))


def load_profile(name: str, root: Path | None = None) -> VendorProfile:
    """Read images/<name>/profile.toml; every problem is an ImageError naming the file and key."""
    root = root or images_dir()
    path = root / name / PROFILE_FILE
    if not _NAME.fullmatch(name or "") or not path.is_file():
        known = ", ".join(available_profiles(root)) or "none"
        raise ImageError(
            f"no vendor profile {name!r} in {root}",
            f"use one of: {known}; or add {root}/{name or '<vendor>'}/{PROFILE_FILE}",
        )
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"{path}: cannot be read: {exc}", "fix the TOML syntax") from exc
    return parse_profile(data, path, root)


def parse_profile(data: Mapping[str, Any], path: Path, root: Path) -> VendorProfile:
    source = str(path)
    top = Table(data, source, PROFILE, keys=_TOP_KEYS)
    image = top.table("image", required=True)
    runtime = top.table("runtime")
    image.known(_IMAGE_KEYS)  # both tables are tables before either's keys are checked
    runtime.known(_RUNTIME_KEYS)
    name = top.string("name", REQUIRED)
    if name != path.parent.name:
        top.fail(
            "name",
            f"{name!r} differs from its folder {path.parent.name!r}",
            f'write name = "{path.parent.name}"',
        )
    label = top.string("label", name)
    if len(label) > MAX_LABEL:
        top.fail(
            "label",
            f"{label!r} is longer than {MAX_LABEL} characters",
            'shorten it, e.g. label = "MetaX C500 64G"',
        )
    template_name = image.string("template", "Dockerfile.template")
    # A vendor's own template wins over the shared one of the same name.
    template = path.parent / template_name
    if not template.is_file():
        template = root / template_name
    if not template.is_file():
        image.fail(
            "template",
            f"{template_name!r} is neither in {path.parent} nor in {root}",
            "name an existing Dockerfile template",
        )
    env = runtime.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str)
        and _ENV_NAME.fullmatch(k)
        and isinstance(v, str)
        and control_character(v) is None
        for k, v in env.items()
    ):
        runtime.fail(
            "env",
            f"must map variable names to one-line strings, got {env!r}",
            'e.g. env = { METAX_USE_TF32 = "1" }',
        )
    visible = str(runtime.get("visible_devices_env", ""))
    if visible and not _ENV_NAME.fullmatch(visible):
        runtime.fail(
            "visible_devices_env",
            f"{visible!r} is not a variable name",
            'e.g. visible_devices_env = "CUDA_VISIBLE_DEVICES"',
        )
    requirements = image.strings("requirements")
    if not requirements:
        image.fail("requirements", "is empty", 'e.g. requirements = ["torch", "torchvision"]')
    return VendorProfile(
        name=name,
        description=str(top.get("description", "")),
        label=label,
        base_image=image.string("base", REQUIRED),
        python=image.string("python", "python3"),
        template_path=template,
        wheel_dir=image.string("wheel_dir", REQUIRED),
        vendor_wheels=image.strings("vendor_wheels"),
        requirements=requirements,
        venv_options=image.strings("venv_options"),
        runtime=RuntimeOptions(
            devices=_devices(runtime, "devices"),
            optional_devices=_devices(runtime, "optional_devices"),
            group_add=runtime.strings("group_add"),
            gpus=str(runtime.get("gpus", "")),
            options=runtime.strings("options"),
            shm_size=runtime.string("shm_size", "8g"),
            ulimits=runtime.strings("ulimits", DEFAULT_ULIMITS),
            rdma_ulimits=runtime.strings("rdma_ulimits", DEFAULT_RDMA_ULIMITS),
            env=dict(env),
            visible_devices_env=visible,
            monitor=runtime.strings("monitor"),
        ),
        source=source,
    )


def _devices(runtime: Table, key: str) -> tuple[str, ...]:
    paths = runtime.strings(key)
    for path in paths:
        if not _DEVICE.fullmatch(path):
            runtime.fail(
                key,
                f"{path!r} is not an absolute device path without ':', ',' or spaces",
                f'e.g. {key} = ["/dev/infiniband"]',
            )
    return paths
