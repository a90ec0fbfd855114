"""Run folder -> plain row dicts for bulk inserts (no ORM objects on the hot path)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from orchestrator.energy import coverage_warnings, run_energy
from orchestrator.fabric import fabric_of
from orchestrator.monitor import smi_warnings
from orchestrator.redact import redact_text
from orchestrator.runfolder.folder import ENV_FIELDS, NodeRef, RankFile, RunFolder, RunManifest
from orchestrator.states import ACTIVE_STATUSES
from orchestrator.store.engine import RawJson
from orchestrator.store.metrics import RunMetrics, config_label, fix_hp, training_window

ENV_COLUMNS = tuple(ENV_FIELDS)  # run_nodes has one column per known env.json key


def run_row(manifest: RunManifest, now: datetime) -> dict[str, Any]:
    """The fields of a runs row that the manifest alone decides (create_run uses these too)."""
    return {
        "run_id": manifest.run_id,
        "campaign_id": manifest.campaign_id,
        "case": manifest.case,
        "vendor": manifest.vendor,
        "hardware_label": manifest.hardware_label,
        "cluster": manifest.cluster,
        "backend": manifest.backend,
        "runtime": manifest.runtime,
        "topology": manifest.topology,
        "nnodes": manifest.nnodes,
        "nproc_per_node": manifest.nproc_per_node,
        "world_size": manifest.world_size,
        "precision": manifest.precision,
        "hparams": dict(manifest.hparams),
        "fix_hp": fix_hp(manifest.hparams),
        "config_name": manifest.config_name,
        "config_label": config_label(manifest.vendor, manifest.hardware_label, manifest.topology),
        "status": manifest.status,
        "reason": manifest.reason,
        "failure": manifest.failure,
        "submitted_by": manifest.submitted_by,
        "submitted_at": manifest.submitted_at,
        "started_at": manifest.started_at,
        "finished_at": manifest.finished_at,
        "command": redact_text(manifest.command) or None,
        "orchestrator_version": manifest.orchestrator_version or None,
        "slurm_job_id": manifest.slurm_job_id,
        "image_tag": manifest.image.tag if manifest.image else None,
        "image_id": manifest.image.id if manifest.image else None,
        "source": manifest.source,
        "created_at": now,
    }


def published_run_row(
    folder: RunFolder, metrics: RunMetrics | None, now: datetime
) -> dict[str, Any]:
    row = run_row(folder.manifest, now)
    first = min(folder.ranks, key=lambda r: r.rank).doc if folder.ranks else None
    if first is not None:  # what the run really used, a vendor config set included
        row["fix_hp"] = fix_hp(folder.manifest.hparams, first["config"]["hparams"])
    imported = folder.manifest.imported
    if imported is not None:  # what the tool's configuration set, when it is known
        row["fix_hp"] = fix_hp({}, imported.hparams) if imported.hparams else "not logged"
    row.update(
        global_images=metrics.global_images if metrics else None,
        e2e_time_s=metrics.e2e_time_s if metrics else None,
        p_whole=metrics.p_whole if metrics else None,
        p_train=metrics.p_train if metrics else None,
        p_core=metrics.p_core if metrics else None,
        map=metrics.map if metrics else None,
        mem_used_bytes=metrics.mem_used_bytes if metrics else None,
        mem_total_bytes=metrics.mem_total_bytes if metrics else None,
        mem_label=metrics.mem_label if metrics else None,
        mem_source=metrics.mem_source if metrics else None,
        mem_devices=list(metrics.mem_devices) if metrics and metrics.mem_devices else None,
        epochs_completed=metrics.epochs_completed if metrics else None,
        converged=metrics.converged if metrics else None,
        **fabric_columns(folder, first, metrics.mem_source if metrics else None),
        device_name=first["device"]["name"] if first else None,
        torch_version=first["software"]["torch"] if first else None,
        manifest=RawJson(folder.manifest_text),
        source_digest=folder.digest,
        published_at=now,
    )
    row.update(energy_columns(folder, metrics))
    warnings = (row["warnings"] or []) + coverage_warnings(row.pop("_energy"))
    row["warnings"] = warnings or None
    return row


def energy_columns(folder: RunFolder, metrics: RunMetrics | None) -> dict[str, Any]:
    """The training window's energy from the monitors' power samples (orchestrator/energy.py);
    `_energy` is for the caller's warning, not a column."""
    energy = None
    if metrics is not None and folder.ranks and folder.manifest.imported is None:
        start, end = training_window(folder.ranks)
        used = {n.name: n.devices for n in folder.manifest.nodes}
        energy = run_energy(folder.monitors, start, end, used)
    return {
        "energy_j": energy.joules if energy else None,
        "energy_per_image_j": energy.per_image(metrics.global_images)
        if energy and metrics
        else None,
        "power_coverage": energy.coverage if energy else None,
        "energy": energy.as_dict() if energy else None,
        "_energy": energy,
    }


def fabric_columns(
    folder: RunFolder, first: dict[str, Any] | None, mem_source: str | None
) -> dict[str, Any]:
    """How the ranks talked (nodes/<node>/nccl.log) and the run's warnings."""
    manifest = folder.manifest
    fabric = fabric_of(
        folder.nccl_logs,
        [n.name for n in manifest.nodes],
        manifest.nnodes,
        first["config"].get("backend") if first else None,
        {n.name: n.ib_hcas for n in manifest.nodes},
    )
    warnings = list(fabric.warnings if fabric else ())
    warnings += smi_warnings(folder.monitor_raw, mem_source)
    return {
        "fabric_transport": fabric.transport if fabric else None,
        "fabric_summary": fabric.summary()[:255] if fabric else None,
        "fabric": fabric.as_dict() if fabric else None,
        "warnings": warnings or None,
    }


def history_rows(manifest: RunManifest, now: datetime) -> list[dict[str, Any]]:
    """A run seen for the first time at publish: its history as far as the manifest tells it."""
    rows = [
        {"run_id": manifest.run_id, "status": "queued", "reason": None, "at": manifest.submitted_at}
    ]
    if manifest.started_at is not None:
        rows.append(
            {
                "run_id": manifest.run_id,
                "status": "running",
                "reason": None,
                "at": manifest.started_at,
            }
        )
    if manifest.status not in ACTIVE_STATUSES:
        at = manifest.finished_at or manifest.started_at or manifest.submitted_at
        rows.append(
            {
                "run_id": manifest.run_id,
                "status": manifest.status,
                "reason": manifest.reason,
                "at": at,
            }
        )
    return rows


def env_columns(env: dict[str, Any] | None) -> dict[str, Any]:
    env = env or {}
    return {name: env.get(name) for name in ENV_COLUMNS}


def node_row(
    run_id: str,
    node: NodeRef,
    env: dict[str, Any] | None,
    captured_at: datetime | None,
    env_text: str | None = None,
) -> dict[str, Any]:
    """`env_text`: env.json as read, stored as is instead of serialising `env` again."""
    row = {
        "run_id": run_id,
        "node_rank": node.node_rank,
        "node_name": node.name,
        "address": node.address,
        "env": RawJson(env_text) if env_text is not None else env,
        "captured_at": captured_at if env is not None else None,
    }
    row.update(env_columns(env))
    return row


STRAGGLER_COLUMNS = (
    "node_name",
    "device_index",
    "pace_s",
    "straggler_ratio",
    "history_ratio",
    "straggler",
)
_NO_STRAGGLER_VALUES = (None,) * len(STRAGGLER_COLUMNS)
# rank_results columns in the order of rank_values(): the hottest rows of an ingest are built as
# tuples (a 28-key dict per rank costs three times as much) of values both drivers take as they
# are, the document being the file's JSON text.
RANK_COLUMNS = (
    "run_id",
    "rank",
    "node_rank",
    "local_rank",
    "host",
    "status",
    "device_name",
    "e2e_s",
    "import_s",
    "init_s",
    "train_s",
    "train_no_eval_s",
    "core_s",
    "eval_s",
    "rank_images",
    "global_images",
    "rank_iterations",
    "epochs_completed",
    "p_whole",
    "p_train",
    "p_core",
    "map",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "total_mem_bytes",
    "converged",
    "error_type",
    "error_message",
    "document",
    # 0007: written by store/readings.py once the run's rows are in (it needs the history)
    *STRAGGLER_COLUMNS,
)


def rank_values(run_id: str, rank: RankFile) -> tuple[Any, ...]:
    doc = rank.doc
    ident, timings, samples = doc["identity"], doc["timings"], doc["samples"]
    throughput, memory, error = doc["throughput"], doc["memory"], doc.get("error") or {}
    return (
        run_id,
        rank.rank,
        ident["node_rank"],
        ident["local_rank"],
        ident["host"],
        doc["status"],
        doc["device"]["name"],
        timings["e2e_s"],
        timings.get("import_s"),  # not in a version-1 file
        timings["init_s"],
        timings["train_s"],
        timings["train_no_eval_s"],
        timings["core_s"],
        timings["eval_s"],
        samples["rank_images"],
        samples["global_images"],
        samples["rank_iterations"],
        samples["epochs_completed"],
        throughput.get("p_whole"),
        throughput.get("p_train"),
        throughput.get("p_core"),
        (doc.get("eval") or {}).get("map"),
        memory.get("peak_allocated_bytes"),
        memory.get("peak_reserved_bytes"),
        memory.get("total_bytes"),
        doc["converged"],
        error.get("type"),
        error.get("message"),
        rank.text,
        *_NO_STRAGGLER_VALUES,
    )


def run_epoch_rows(run_id: str, ranks: Sequence[RankFile]) -> list[dict[str, Any]]:
    """Per-epoch rows over all ranks (definitions in models.RunEpoch and docs/schema.md)."""
    by_epoch: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for rank in ranks:
        for epoch in rank.doc["epochs"]:
            by_epoch.setdefault(epoch["epoch"], []).append((rank.rank, epoch))
    out = []
    for number in sorted(by_epoch):
        entries = sorted(by_epoch[number], key=lambda item: item[0])
        first = entries[0][1]
        images = sum(e["images"] for _, e in entries)
        train_s = max(e["train_s"] for _, e in entries)
        core_s = max(e["core_s"] for _, e in entries)
        out.append(
            {
                "run_id": run_id,
                "epoch": number,
                "ranks": len(entries),
                "iterations": first["iterations"],
                "images": images,
                "loss": first.get("loss"),
                "lr": first.get("lr"),
                "train_s": train_s,
                "core_s": core_s,
                "eval_s": first.get("eval_s"),
                "p_train": images / train_s if train_s > 0 else None,
                "p_core": images / core_s if core_s > 0 else None,
                "map": first.get("map"),
            }
        )
    return out
