"""`orchestrator runs show RUN` in every format: tables for people (units in the headers,
numbers rounded, epochs counted from 1) and one JSON document with the stored values."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator import units
from orchestrator.cli.output import Output, Section
from orchestrator.reports.report import fmt
from orchestrator.store.environments import describe_ib
from orchestrator.store.queries import RunDetail
from orchestrator.store.stragglers import stored_line


def _map(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def _general(value: Any) -> str:
    return "" if value is None else f"{float(value):.4g}"


# Stored column -> (name for people, formatter). Columns not named here are shown as stored.
RUN_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "e2e_time_s": ("e2e_time (s)", units.seconds),
    "p_whole": ("p_whole (img/s)", units.sig3),
    "p_train": ("p_train (img/s)", units.sig3),
    "p_core": ("p_core (img/s)", units.sig3),
    "map": ("mAP", _map),
    "mem_used_bytes": ("mem_used", units.size),
    "mem_total_bytes": ("mem_total", units.size),
    "mem_label": ("mem (GiB)", fmt),
    "energy_j": ("energy (J)", units.sig3),
    "energy_per_image_j": ("energy per image (J)", units.sig3),
    "power_coverage": ("power coverage", lambda v: "" if v is None else f"{float(v):.0%}"),
}
RANK_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "e2e_s": ("e2e (s)", units.seconds),
    "init_s": ("init (s)", units.seconds),
    "train_s": ("train (s)", units.seconds),
    "train_no_eval_s": ("train_no_eval (s)", units.seconds),
    "core_s": ("core (s)", units.seconds),
    "eval_s": ("eval (s)", units.seconds),
    "p_core": ("p_core (img/s)", units.sig3),
    "pace_s": ("pace (s/it)", lambda v: "" if v is None else f"{float(v):.3g}"),
    "straggler_ratio": ("vs median", lambda v: "" if v is None else f"{float(v):.2f}x"),
    "straggler": ("straggler", lambda v: "" if v is None else ("yes" if v else "no")),
}
RANK_COLUMNS = (
    "rank",
    "node_rank",
    "host",
    "status",
    "e2e_s",
    "train_s",
    "train_no_eval_s",
    "core_s",
    "rank_images",
    "p_core",
    "pace_s",
    "straggler_ratio",
    "straggler",
    "error_type",
)
EPOCH_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "epoch": ("epoch", lambda e: "" if e is None else str(int(e) + 1)),  # people count from 1
    "loss": ("loss", _general),
    "lr": ("lr", _general),
    "train_s": ("train (s)", units.seconds),
    "core_s": ("core (s)", units.seconds),
    "eval_s": ("eval (s)", units.seconds),
    "p_train": ("p_train (img/s)", units.sig3),
    "p_core": ("p_core (img/s)", units.sig3),
    "map": ("mAP", _map),
}
EPOCH_COLUMNS = (
    "epoch",
    "ranks",
    "images",
    "loss",
    "lr",
    "train_s",
    "core_s",
    "eval_s",
    "p_core",
    "map",
)
NODE_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "mem_total_bytes": ("mem_total", units.size),
}


def _shown(fields: Mapping[str, tuple[str, Callable[[Any], str]]], key: str, value: Any) -> str:
    if key in fields:
        return fields[key][1](value)
    if isinstance(value, list):
        return describe_ib(value) or ""
    if isinstance(value, float):
        return _general(value)
    return fmt(value)


def _header(fields: Mapping[str, tuple[str, Callable[[Any], str]]], key: str) -> str:
    return fields[key][0] if key in fields else key


# Shown in rows of their own (mem with its source, each device's peak) or not at all.
_SHOWN_APART = (
    "hparams",
    "failure",
    "request",
    "mem_label",
    "mem_devices",
    "fabric_transport",
    "fabric_summary",
    "fabric",
    "warnings",
    "stragglers",
    "energy",
)


def run_fields(detail: RunDetail) -> list[list[str]]:
    run = detail.run
    rows = [
        [_header(RUN_FIELDS, k), _shown(RUN_FIELDS, k, v)]
        for k, v in run.items()
        if v is not None and k not in _SHOWN_APART
    ]
    measured = run["p_core"] is not None
    rows.append(["mem (GiB)", units.mem_cell(run["mem_label"], measured, run.get("mem_source"))])
    if run.get("mem_devices"):  # each device's peak from the accelerator tool
        peaks = [
            f"{d['node']}/{d['device']} {_mem_label(d['used_bytes'], d['total_bytes'])}"
            for d in run["mem_devices"]
        ]
        rows.append(["mem_devices (GiB)", "; ".join(peaks)])
    hparams = run["hparams"] or {}
    rows.append(["hparams", ", ".join(f"{k}={v}" for k, v in hparams.items()) or "/"])
    for key in ("data_dir", "backbone_weights"):
        if detail.inputs.get(key):
            rows.append([key, str(detail.inputs[key])])
    if run["failure"]:
        rows += [[f"failure.{k}", fmt(v)] for k, v in run["failure"].items() if k != "log_tail"]
    rows += fabric_rows(run)
    rows += health_rows(detail.health)
    slow = stored_line(run.get("stragglers"))
    if slow:
        rows.append(["stragglers", slow])
    return rows


def health_rows(checks: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The health gate before the run (docs/health.md): each check's verdict and lowest
    figures, one row each (a refusal on some nodes, then the pass on others)."""
    return [
        [
            "health gate",
            f"{check['summary']} (nodes {', '.join(check['nodes'])}; check {check['id']})",
        ]
        for check in checks
    ]


def fabric_rows(run: Mapping[Any, Any]) -> list[list[str]]:
    """How the ranks talked (one line, then each node's when there are several) and the run's
    warnings, one row each."""
    rows = [["ranks talked (NCCL)", run.get("fabric_summary") or "not recorded"]]
    fabric = run.get("fabric") or {}
    if run.get("nnodes", 1) > 1:
        for node in fabric.get("nodes", []):
            via = f" via {', '.join(node['inter'])}" if node.get("inter") else ""
            devices = f" {', '.join(node['devices'])}" if node.get("devices") else ""
            rows.append([f"fabric.{node['node']}", f"{node['transport']}{devices}{via}"])
    rows += [["warning", str(w)] for w in run.get("warnings") or []]
    return rows


def show_output(detail: RunDetail) -> Output:
    node_keys = [k for k in (detail.nodes[0].keys() if detail.nodes else []) if k != "node_name"]
    sections = [
        Section(f"run {detail.run['run_id']}", ["field", "value"], run_fields(detail)),
        Section(
            "status history",
            ["status", "at", "reason"],
            [[h["status"], fmt(h["at"]), fmt(h["reason"])] for h in detail.history],
        ),
        # One column per node: environments are long strings, nodes are few.
        Section(
            "nodes",
            ["field", *[n["node_name"] for n in detail.nodes]],
            [
                [_header(NODE_FIELDS, k), *[_shown(NODE_FIELDS, k, n[k]) for n in detail.nodes]]
                for k in node_keys
            ],
        ),
    ]
    if detail.image is not None:
        image_rows = [
            [detail.image["tag"], detail.image["image_id"], w["filename"], w["sha256"]]
            for w in detail.wheels
        ]
        sections.append(
            Section(
                "image",
                ["tag", "image id", "wheel", "sha256"],
                image_rows or [[detail.image["tag"], detail.image["image_id"], "", ""]],
            )
        )
    rank_rows = [
        [
            *[_shown(RANK_FIELDS, c, r[c]) for c in RANK_COLUMNS],
            units.mem_cell(
                _mem_label(r["peak_reserved_bytes"], r["total_mem_bytes"]), r["status"] == "ok"
            ),
        ]
        for r in detail.ranks
    ]
    sections.append(
        Section("ranks", [*[_header(RANK_FIELDS, c) for c in RANK_COLUMNS], "mem (GiB)"], rank_rows)
    )
    if detail.epochs:
        sections.append(
            Section(
                "epochs",
                [_header(EPOCH_FIELDS, c) for c in EPOCH_COLUMNS],
                [[_shown(EPOCH_FIELDS, c, e[c]) for c in EPOCH_COLUMNS] for e in detail.epochs],
            )
        )
    return Output(sections, show_document(detail))


def _mem_label(used: Any, total: Any) -> str | None:
    from orchestrator.store.metrics import mem_label

    return mem_label(used, total)


def show_document(detail: RunDetail) -> dict[str, Any]:
    """--format json: the stored rows as they are (epochs keep the store's 0-based index)."""
    run = {k: v for k, v in detail.run.items() if k != "request"}
    return {
        "run": {**run, **{k: v for k, v in detail.inputs.items() if v is not None}},
        "history": [dict(h) for h in detail.history],
        "nodes": [dict(n) for n in detail.nodes],
        "ranks": [dict(r) for r in detail.ranks],
        "epochs": [dict(e) for e in detail.epochs],
        "image": dict(detail.image) if detail.image is not None else None,
        "wheels": [dict(w) for w in detail.wheels],
        "health": list(detail.health),
    }
