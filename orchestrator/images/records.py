"""What the store keeps about an image, and what a run's environment block shows of it.

A build also writes its record next to its log (`<profile>-<digest16>.json`), so that an image
reused later (already on the build host) is recorded with its real build time and log, not with
blanks, e.g. in a new results database.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.clock import utcnow
from orchestrator.images.build import BuiltImage, default_log_dir
from orchestrator.images.spec import ImageSpec


def image_record(
    spec: ImageSpec, built: BuiltImage, created_at: datetime | None = None
) -> dict[str, Any]:
    """The row for `store.record_image(...)`: tag, id, size, base, wheels with sha256, build."""
    return {
        "tag": built.tag,
        "image_id": built.image_id,
        "size_bytes": built.size_bytes,
        "base": f"{spec.base_image}@{spec.base_id}" if spec.base_id else spec.base_image,
        "profile": spec.profile.name,
        "digest": spec.digest,
        "wheels": [{"filename": w.name, "sha256": w.sha256} for w in spec.wheels],
        "build_seconds": None if built.reused else built.build_seconds,
        "build_log_path": built.log_path,
        "created_at": created_at or utcnow(),
    }


def sidecar_path(spec: ImageSpec, log_dir: Path | None = None) -> Path:
    return (log_dir or default_log_dir()) / f"{spec.profile.name}-{spec.digest[:16]}.json"


def save_sidecar(spec: ImageSpec, record: dict[str, Any], log_dir: Path | None = None) -> Path:
    path = sidecar_path(spec, log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**record, "created_at": record["created_at"].isoformat()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".record.")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def record_for(spec: ImageSpec, built: BuiltImage, log_dir: Path | None = None) -> dict[str, Any]:
    """The record of `built`: fresh for a new build, else the one saved when it was built, else
    what the daemon tells (its creation time; no build time or log)."""
    if not built.reused:
        record = image_record(spec, built)
        save_sidecar(spec, record, log_dir)
        return record
    try:
        saved = json.loads(sidecar_path(spec, log_dir).read_text())
        if saved.get("image_id") == built.image_id:
            saved["created_at"] = datetime.fromisoformat(saved["created_at"])
            return dict(saved)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return image_record(spec, built, parse_docker_time(built.created))


def parse_docker_time(text: str | None) -> datetime | None:
    """Docker's `Created` (RFC 3339 with nanoseconds) as an aware datetime."""
    if not text:
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        stamp = datetime.fromisoformat(head).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    micros = int((frac[:6] or "0").ljust(6, "0")) if frac[:6].isdigit() else 0
    return stamp.replace(microsecond=micros)


def environment_fields(spec: ImageSpec, image_id: str) -> dict[str, str]:
    """For a run's environment block: the image and the vendor wheel(s) it was built from."""
    vendor = spec.vendor_wheel_files() or spec.wheels[:1]
    return {
        "image": spec.tag,
        "image_id": image_id,
        "image_base": spec.base_image,
        "wheel": ", ".join(w.name for w in vendor),
        "wheel_sha256": ", ".join(w.sha256 for w in vendor),
    }
