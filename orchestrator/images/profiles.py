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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILE_FILE = "profile.toml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_ULIMITS = ("memlock=-1", "stack=67108864")

_TOP_KEYS = {"name", "description", "image", "runtime"}
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
    "group_add",
    "gpus",
    "options",
    "shm_size",
    "ulimits",
    "env",
    "visible_devices_env",
    "monitor",
}


@dataclass(frozen=True)
class RuntimeOptions:
    """How a container of this vendor is started on a node."""

    devices: tuple[str, ...] = ()  # --device PATH, e.g. /dev/dri
    group_add: tuple[str, ...] = ()  # --group-add NAME, e.g. video
    gpus: str = ""  # --gpus VALUE (NVIDIA Container Toolkit), e.g. all
    options: tuple[str, ...] = ()  # further `docker run` options, one argv item each
    shm_size: str = "8g"
    # RDMA (InfiniBand) needs unlimited locked memory; torch's dataloader likes a large stack.
    ulimits: tuple[str, ...] = DEFAULT_ULIMITS
    env: Mapping[str, str] = field(default_factory=dict)  # vendor switches, e.g. METAX_USE_TF32=1
    visible_devices_env: str = ""  # e.g. CUDA_VISIBLE_DEVICES
    monitor: tuple[str, ...] = ()  # argv of the vendor's monitor tool, e.g. ("mx-smi",)


@dataclass(frozen=True)
class VendorProfile:
    """One vendor's software stack: the base image, its wheels, and its container options."""

    name: str
    description: str
    base_image: str
    python: str  # interpreter in the base image that makes the venv
    template_path: Path
    wheel_dir: str  # default place of the wheels on the build machine
    vendor_wheels: tuple[str, ...]  # glob patterns that must each match a wheel
    requirements: tuple[str, ...]  # what pip installs from the wheels (no index)
    venv_options: tuple[str, ...]
    runtime: RuntimeOptions
    source: str  # the profile file, for messages


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or images_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{PROFILE_FILE}"))


def load_profile(name: str, root: Path | None = None) -> VendorProfile:
    """Read images/<name>/profile.toml; every problem is an ImageError naming the file and key."""
    root = root or images_dir()
    path = root / name / PROFILE_FILE
    if not _NAME.match(name or "") or not path.is_file():
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
    _check_keys(source, "", data, _TOP_KEYS)
    image = _table(source, "image", data.get("image"))
    runtime = _table(source, "runtime", data.get("runtime", {}))
    _check_keys(source, "image", image, _IMAGE_KEYS)
    _check_keys(source, "runtime", runtime, _RUNTIME_KEYS)
    name = _string(source, "name", data.get("name"))
    if name != path.parent.name:
        raise ImageError(
            f"{source}: name {name!r} differs from its folder {path.parent.name!r}",
            f'write name = "{path.parent.name}"',
        )
    template_name = _string(source, "image.template", image.get("template", "Dockerfile.template"))
    # A vendor's own template wins over the shared one of the same name.
    template = path.parent / template_name
    if not template.is_file():
        template = root / template_name
    if not template.is_file():
        raise ImageError(
            f"{source}: image.template {template_name!r} is neither in {path.parent} nor in {root}",
            "name an existing Dockerfile template",
        )
    env = runtime.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise ImageError(
            f"{source}: runtime.env must map variable names to strings, got {env!r}",
            'e.g. env = { METAX_USE_TF32 = "1" }',
        )
    requirements = _strings(source, "image.requirements", image.get("requirements"))
    if not requirements:
        raise ImageError(
            f"{source}: image.requirements is empty", 'e.g. requirements = ["torch", "torchvision"]'
        )
    return VendorProfile(
        name=name,
        description=str(data.get("description", "")),
        base_image=_string(source, "image.base", image.get("base")),
        python=_string(source, "image.python", image.get("python", "python3")),
        template_path=template,
        wheel_dir=_string(source, "image.wheel_dir", image.get("wheel_dir")),
        vendor_wheels=_strings(source, "image.vendor_wheels", image.get("vendor_wheels", [])),
        requirements=requirements,
        venv_options=_strings(source, "image.venv_options", image.get("venv_options", [])),
        runtime=RuntimeOptions(
            devices=_strings(source, "runtime.devices", runtime.get("devices", [])),
            group_add=_strings(source, "runtime.group_add", runtime.get("group_add", [])),
            gpus=str(runtime.get("gpus", "")),
            options=_strings(source, "runtime.options", runtime.get("options", [])),
            shm_size=_string(source, "runtime.shm_size", runtime.get("shm_size", "8g")),
            ulimits=_strings(
                source, "runtime.ulimits", runtime.get("ulimits", list(DEFAULT_ULIMITS))
            ),
            env=dict(env),
            visible_devices_env=str(runtime.get("visible_devices_env", "")),
            monitor=_strings(source, "runtime.monitor", runtime.get("monitor", [])),
        ),
        source=source,
    )


def _table(source: str, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ImageError(f"{source}: [{key}] is missing or not a table", f"add a [{key}] table")
    return value


def _check_keys(source: str, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ImageError(
            f"{source}: {key} is not a known key", f"known keys: {', '.join(sorted(allowed))}"
        )


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ImageError(
            f"{source}: {key} must be a non-empty string, got {value!r}", f'write {key} = "..."'
        )
    return value.strip()


def _strings(source: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ImageError(
            f"{source}: {key} must be a list of strings, got {value!r}", f'e.g. {key} = ["a"]'
        )
    return tuple(value)
