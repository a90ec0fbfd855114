"""What the store keeps about an image, and what a run's environment block shows of it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from orchestrator.images.build import BuiltImage
from orchestrator.images.spec import ImageSpec


def image_record(spec: ImageSpec, built: BuiltImage, created_at: datetime | None = None) -> dict[str, Any]:
    """The row for `store.record_image(...)`: tag, id, size, base, wheels with sha256, build."""
    return {
        "tag": built.tag,
        "image_id": built.image_id,
        "size_bytes": built.size_bytes,
        "base": f"{spec.base_image}@{spec.base_id}" if spec.base_id else spec.base_image,
        "profile": spec.profile.name,
        "digest": spec.digest,
        "wheels": [{"filename": w.name, "sha256": w.sha256} for w in spec.wheels],
        "build_seconds": built.build_seconds,
        "build_log_path": built.log_path,
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    }


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
