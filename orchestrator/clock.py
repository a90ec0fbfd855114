"""The one "now" of the control plane: an aware UTC datetime. Every timestamp the orchestrator
writes (run rows, leases, manifests, image records) comes from here, so none is naive or local."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(timezone.utc)
