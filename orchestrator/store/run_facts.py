"""What each run was made of, as flat {field: value} strings, for explaining a change point:
the image and its wheels, each node's driver, kernel, torch, the hyper-parameters, the node set,
how the ranks talked (fabric) and the health-gate figures a manifest carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select

from orchestrator.store.bulk import chunks
from orchestrator.store.models import ImageWheel, Run, RunNode

# RunNode columns -> the field name a change point shows (values over the nodes, joined).
_NODE_FIELDS = {
    "driver": RunNode.driver,
    "kernel": RunNode.kernel,
    "torch": RunNode.torch,
    "torchvision": RunNode.torchvision,
    "os": RunNode.os,
    "docker": RunNode.docker,
}


def run_facts(conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """{run_id: {field: value}} for the given runs (unknown ids are left out)."""
    facts: dict[str, dict[str, str]] = {}
    images: dict[str, str] = {}
    for part in chunks(list(dict.fromkeys(run_ids))):
        query = select(
            Run.run_id,
            Run.image_id,
            Run.hparams,
            Run.fabric_transport,
            Run.fabric_summary,
            Run.orchestrator_version,
            Run.manifest,
        ).where(Run.run_id.in_(part))
        for row in conn.execute(query).mappings():
            facts[row["run_id"]] = _run_fields(row)
            if row["image_id"]:
                images[row["run_id"]] = row["image_id"]
        _add_nodes(conn, part, facts)
    wheels = _wheels(conn, sorted(set(images.values())))
    for run_id, image_id in images.items():
        if wheels.get(image_id):
            facts[run_id]["wheels"] = wheels[image_id]
    return facts


def _run_fields(row: Mapping[Any, Any]) -> dict[str, str]:
    found = {
        "image": (row["image_id"] or "")[:19],  # sha256: and 12 hex digits, as docker shows
        "fabric": " ".join(v for v in (row["fabric_transport"], row["fabric_summary"]) if v),
        "orchestrator": row["orchestrator_version"] or "",
    }
    for key, value in sorted((row["hparams"] or {}).items()):
        found[f"hparams.{key}"] = str(value)
    health = (row["manifest"] or {}).get("health")
    if isinstance(health, Mapping):  # a health gate's figures, where the manifest has them
        for key, value in sorted(health.items()):
            if isinstance(value, str | int | float | bool):
                found[f"health.{key}"] = str(value)
    return {k: v for k, v in found.items() if v != ""}


def _add_nodes(conn: Connection, run_ids: Sequence[str], facts: dict[str, dict[str, str]]) -> None:
    query = (
        select(RunNode.run_id, RunNode.node_name, *_NODE_FIELDS.values())
        .where(RunNode.run_id.in_(list(run_ids)))
        .order_by(RunNode.run_id, RunNode.node_rank)
    )
    values: dict[str, dict[str, set[str]]] = {}
    for row in conn.execute(query).mappings():
        per_run = values.setdefault(row["run_id"], {})
        per_run.setdefault("nodes", set()).add(row["node_name"])
        for name, column in _NODE_FIELDS.items():
            if row[column.key]:
                per_run.setdefault(name, set()).add(str(row[column.key]))
    for run_id, fields in values.items():
        if run_id in facts:
            facts[run_id].update({k: ", ".join(sorted(v)) for k, v in fields.items()})


def _wheels(conn: Connection, image_ids: Sequence[str]) -> dict[str, str]:
    """Per image, its wheels as 'file (sha256 prefix)', sorted: a rebuilt wheel of the same name
    differs too."""
    found: dict[str, list[str]] = {}
    for part in chunks(list(image_ids)):
        query = select(ImageWheel.image_id, ImageWheel.filename, ImageWheel.sha256).where(
            ImageWheel.image_id.in_(part)
        )
        for row in conn.execute(query).mappings():
            found.setdefault(row["image_id"], []).append(
                f"{row['filename']} ({row['sha256'][:12]})"
            )
    return {image: ", ".join(sorted(names)) for image, names in found.items()}
