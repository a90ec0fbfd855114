"""Image spec: what goes into an image, the Dockerfile rendered for it, and its content tag.

The tag is a hash of everything that decides the image's content (Dockerfile text, every wheel's
name and sha256, every workload file's path and sha256, the base image's reference and id), so an
image is rebuilt exactly when its content changes and a tag never names a stale image.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ImageError
from orchestrator.images.profiles import VendorProfile
from orchestrator.images.system_setup import system_setup_script
from orchestrator.tables import control_character

SPEC_VERSION = "orchestrator-image-spec 1"
REPOSITORY_PREFIX = "orchestrator"
TAG_HEX = 16
# A placeholder, with the one space after it that goes too when its value is empty.
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}( ?)")
# Same selection as orchestrator.workload_source (the host runtime's copy of the workload).
_WORKLOAD_SUFFIXES = {".py", ".json", ".toml", ".txt"}
_SKIP_DIRS = {"__pycache__"}


@dataclass(frozen=True)
class HashedFile:
    """A file with its sha256; `name` is the wheel's file name or the workload-relative path."""

    name: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageSpec:
    profile: VendorProfile
    base_image: str
    base_id: str | None  # None: the base is not on the build host yet (dry run)
    dockerfile: str
    wheels: tuple[HashedFile, ...]
    workload: tuple[HashedFile, ...]

    @property
    def repository(self) -> str:
        return f"{REPOSITORY_PREFIX}/{self.profile.name}"

    @property
    def digest(self) -> str:
        return content_digest(
            self.dockerfile, self.wheels, self.workload, self.base_image, self.base_id
        )

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.digest[:TAG_HEX]}"

    @property
    def resolved(self) -> bool:
        return self.base_id is not None

    @property
    def context_bytes(self) -> int:
        return (
            sum(f.size for f in self.wheels)
            + sum(f.size for f in self.workload)
            + len(self.dockerfile)
        )

    def vendor_wheel_files(self) -> tuple[HashedFile, ...]:
        """The wheels named by the profile (torch, torchvision), for the run's environment block."""
        return tuple(
            w
            for w in self.wheels
            if any(fnmatch.fnmatch(w.name, p) for p in self.profile.vendor_wheels)
        )


def render_dockerfile(profile: VendorProfile, base_image: str | None = None) -> str:
    """The profile's template with its placeholders filled; unknown placeholders are errors."""
    try:
        template = profile.template_path.read_text()
    except OSError as exc:
        raise ImageError(
            f"cannot read template {profile.template_path}: {exc}", "check images/"
        ) from exc
    values = {
        "profile": profile.name,
        "base_image": base_image or profile.base_image,
        "python": shlex.quote(profile.python),
        "venv_options": shlex.join(profile.venv_options),
        "requirements": shlex.join(profile.requirements),
    }

    for key, value in values.items():  # the profile loader refuses these; --base comes here
        found = control_character(value)
        if found is not None:
            raise ImageError(
                f"the Dockerfile's {key} {value!r} holds the control character {found}: it "
                "would start another instruction",
                "write it on one line (the profile, --base)",
            )
    # Our own shell step, continued over lines with backslashes; its one input (python) was
    # checked above.
    values["system_setup"] = system_setup_script(profile.python, profile.uses_infiniband)

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ImageError(
                f"{profile.template_path}: unknown placeholder {{{{{key}}}}}",
                f"use only: {', '.join(sorted(values))}",
            )
        value = values[key]
        return value + match.group(2) if value else ""

    return _PLACEHOLDER.sub(fill, template)


def content_digest(
    dockerfile: str,
    wheels: Iterable[HashedFile],
    workload: Iterable[HashedFile],
    base_image: str,
    base_id: str | None,
) -> str:
    lines = [SPEC_VERSION, f"dockerfile {hashlib.sha256(dockerfile.encode()).hexdigest()}"]
    lines.append(f"base {base_image} {base_id or 'unresolved'}")
    lines += [f"wheel {w.name} {w.sha256}" for w in sorted(wheels, key=lambda w: w.name)]
    lines += [f"workload {f.name} {f.sha256}" for f in sorted(workload, key=lambda f: f.name)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def find_wheels(sources: Iterable[str | os.PathLike[str]], profile: VendorProfile) -> list[Path]:
    """Wheel files from paths and directories; each profile pattern must match one of them."""
    found: dict[str, Path] = {}
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            candidates = sorted(path.glob("*.whl"))
        elif path.is_file() and path.suffix == ".whl":
            candidates = [path]
        elif not path.exists():
            raise ImageError(
                f"wheel source {path} does not exist",
                f"put the {profile.name} wheels there, or pass --wheels FILE_OR_DIR",
            )
        else:
            raise ImageError(
                f"wheel source {path} is neither a .whl file nor a directory", "check --wheels"
            )
        for wheel in candidates:
            if wheel.name in found and found[wheel.name].resolve() != wheel.resolve():
                raise ImageError(
                    f"wheel {wheel.name} is given twice ({found[wheel.name]} and {wheel})",
                    "keep one copy of each wheel",
                )
            found[wheel.name] = wheel
    if not found:
        where = ", ".join(str(s) for s in sources) or "(nothing)"
        raise ImageError(
            f"no wheels found in {where}",
            f"put the vendor's wheels in {profile.wheel_dir} or pass --wheels DIR",
        )
    for pattern in profile.vendor_wheels:
        if not any(fnmatch.fnmatch(name, pattern) for name in found):
            raise ImageError(
                f"no wheel matching {pattern!r} among {len(found)} wheel(s) for profile {profile.name}",
                f"add the vendor's wheel to {profile.wheel_dir} or pass --wheels",
            )
    return [found[name] for name in sorted(found)]


def workload_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(path relative to the PYTHONPATH root, e.g. workload/faster_rcnn/train.py, file) of the
    workload source that goes into the image: the same files the host runtime ships to nodes.
    `root` (a folder named like the package) replaces this checkout's workload/ in tests."""
    from orchestrator import workload_source

    if root is None:
        return workload_source.workload_files()
    if not root.is_dir():
        raise ImageError(f"workload source {root} is not a directory", "run from a full checkout")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root.parent)
        if path.is_file() and path.suffix in _WORKLOAD_SUFFIXES and not _SKIP_DIRS & set(rel.parts):
            files.append((rel.as_posix(), path))
    return files


class Sha256Cache:
    """sha256 of files keyed by (path, size, mtime), kept in a small JSON file between runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                self._entries = {}  # a broken cache only costs time

    def hashed(self, name: str, path: Path) -> HashedFile:
        stat = path.stat()
        key = str(path.resolve())
        with self._lock:
            entry = self._entries.get(key)
        if (
            entry
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            return HashedFile(name, str(path), stat.st_size, str(entry["sha256"]))
        digest = file_sha256(path)
        with self._lock:
            self._entries[key] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": digest,
            }
            self._dirty = True
        return HashedFile(name, str(path), stat.st_size, digest)

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sha256-cache.")
        with os.fdopen(fd, "w") as out:
            json.dump(self._entries, out, indent=0, sort_keys=True)
        os.replace(tmp, self.path)
        self._dirty = False


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "orchestrator" / "sha256-cache.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_image_spec(
    profile: VendorProfile,
    wheel_sources: Iterable[str | os.PathLike[str]] | None = None,
    base_id: str | None = None,
    *,
    base_image: str | None = None,
    workload_dir: Path | None = None,
    cache: Sha256Cache | None = None,
) -> ImageSpec:
    """Hash the inputs and render the Dockerfile. `base_id` comes from the build host's daemon."""
    cache = cache if cache is not None else Sha256Cache(default_cache_path())
    sources = list(wheel_sources) if wheel_sources else [profile.wheel_dir]
    wheels = tuple(cache.hashed(p.name, p) for p in find_wheels(sources, profile))
    workload = tuple(cache.hashed(rel, p) for rel, p in workload_files(workload_dir))
    cache.save()
    base = base_image or profile.base_image
    return ImageSpec(
        profile=profile,
        base_image=base,
        base_id=base_id,
        dockerfile=render_dockerfile(profile, base),
        wheels=wheels,
        workload=workload,
    )


def image_labels(spec: ImageSpec) -> Mapping[str, str]:
    """Labels set at build time (not in the Dockerfile, so they do not change the tag)."""
    return {
        "orchestrator.managed": "true",
        "orchestrator.profile": spec.profile.name,
        "orchestrator.tag": spec.tag,
        "orchestrator.digest": spec.digest,
        "orchestrator.base": spec.base_image,
    }
