"""The request codec: a SubmitRequest and its cluster as stored with a queued (or followed,
or detached Slurm) run, and back. Whoever runs the request later, a worker or an adopter on
any machine, rebuilds the cluster and the SubmitRequest from this document alone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.redact import redact_text, without_password
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.specs import ClusterSpec, Topology, with_inputs

# A stored request: JSON values (the cluster file's TOML content among them).
RequestDoc = dict[str, Any]
ExtraField = str | int | float | None  # runs_dir, set_name, repeat: what a caller adds

_CLUSTERS: dict[str, ClusterSpec] = {}  # cluster_key -> parsed cluster, per process


def encode_request(
    cluster: ClusterSpec,
    req: SubmitRequest,
    data: Mapping[str, Any] | None = None,
    **extra: ExtraField,
) -> RequestDoc:
    """What a worker on any machine needs to execute the run: the cluster file's parsed content
    (`data`, read from the file if not given; None: the embedded default) without its secrets,
    and the submit options. Anyone who may SELECT from the store reads this: the store URLs
    lose their passwords (a worker connects with its own --db and brings the password from the
    environment or ~/.pgpass)."""
    content = cluster_file_data(cluster) if data is None else data
    canonical = json.dumps(without_secrets(content), sort_keys=True, default=str)
    return {
        "cluster_source": cluster.source,
        "cluster_data": json.loads(canonical),
        "cluster_key": hashlib.sha256(canonical.encode()).hexdigest()[:16],
        "backend": cluster.backend,  # `--backend` may override the file
        "topology": str(req.topology),
        "node_names": list(req.node_names) if req.node_names else None,
        "precision": req.precision,
        "sets": [list(kv) for kv in req.sets],
        "timeout_s": req.timeout_s,
        "no_progress_timeout_s": req.no_progress_timeout_s,
        "command": redact_text(req.command),
        "campaign_id": req.campaign_id,
        "data_dir": req.data_dir,
        "backbone_weights": req.backbone_weights,
        **extra,
    }


def decode_request(doc: Mapping[str, Any], nodes: Sequence[str] | None) -> SubmitRequest:
    """The submit options stored with a run (`nodes`: the ones it runs on, if chosen)."""
    return SubmitRequest(
        topology=Topology.parse(doc["topology"]),
        node_names=tuple(nodes) if nodes else None,
        precision=doc["precision"],
        sets=tuple((str(k), str(v)) for k, v in doc["sets"]),
        timeout_s=doc.get("timeout_s"),
        no_progress_timeout_s=doc.get("no_progress_timeout_s"),
        command=doc.get("command") or "",
        campaign_id=doc.get("campaign_id"),
        data_dir=doc.get("data_dir"),
        backbone_weights=doc.get("backbone_weights"),
    )


def cluster_from(doc: Mapping[str, Any]) -> ClusterSpec:
    """The stored request's cluster, parsed once per process for each cluster_key."""
    key = str(doc.get("cluster_key"))
    cluster = _CLUSTERS.get(key)
    if cluster is None:
        from orchestrator.config import embedded_default, parse_cluster

        data = doc.get("cluster_data")
        cluster = embedded_default() if data is None else parse_cluster(data, doc["cluster_source"])
        _CLUSTERS[key] = cluster
    backend = doc.get("backend")
    if backend and backend != cluster.backend:
        cluster = replace(cluster, backend=backend)
    return with_inputs(cluster, doc.get("data_dir"), doc.get("backbone_weights"))


def known_cluster_keys() -> set[str]:
    """The cluster keys this process has parsed (the queue reads full requests for the rest)."""
    return set(_CLUSTERS)


def cluster_file_data(cluster: ClusterSpec) -> dict[str, Any] | None:
    """The cluster file's parsed content, stored with each queued run (None: embedded default)."""
    if str(cluster.source).startswith("<"):
        return None
    from orchestrator.config import tomllib

    return tomllib.loads(Path(cluster.source).read_text(encoding="utf-8"))


def without_secrets(cluster_data: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The cluster file's content with no password in its [store] URLs."""
    store = cluster_data.get("store") if cluster_data else None
    if not cluster_data or not isinstance(store, Mapping):
        return cluster_data
    cleaned = {k: without_password(v) if isinstance(v, str) else v for k, v in store.items()}
    return {**cluster_data, "store": cleaned}
