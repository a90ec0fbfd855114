"""The seed table's environment block: for each field, the distinct values over the nodes of a
set of runs (machine, network, OS, kernel, driver, Docker, framework), and the line of their
passing health gates. Read as parts that add up (EnvironmentParts), so a configuration's summary
keeps its parts (config_summaries.environment, migration 0010) and the block of whole
configurations is their sum, with no read of their runs; `lines` renders either."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, select

from orchestrator.store.models import (
    HealthCheckRun,
    HealthFigure,
    ImageWheel,
    Run,
    RunNode,
)

# The block's lines: label -> how to read it from run_nodes / images.
ENVIRONMENT_FIELDS = (
    ("machine, accelerator", "accelerator_model"),
    ("network", "ib"),
    ("ranks talked (NCCL)", "fabric_summary"),
    ("OS", "os"),
    ("kernel", "kernel"),
    ("accelerator driver", "driver"),
    ("Docker", "docker"),
    ("framework", "framework"),
)
ENV_COLUMNS = (
    RunNode.accelerator_model,
    RunNode.accelerator_count,
    RunNode.ib,
    RunNode.os,
    RunNode.kernel,
    RunNode.driver,
    RunNode.docker,
    RunNode.torch,
    Run.image_id,
    Run.hardware_label,
    Run.fabric_summary,
)
GATE_CHECKS = ("allreduce", "pair", "intra", "compute")
_GATE_COLUMNS: tuple[Any, ...] = (
    HealthCheckRun.gated_run_id,
    HealthFigure.check_name,
    HealthFigure.value,
    HealthFigure.unit,
)


@dataclass
class EnvironmentParts:
    """What the block of some runs is made of; parts of disjoint sets of runs add up."""

    fields: dict[str, set[str]] = field(
        default_factory=lambda: {key: set() for _, key in ENVIRONMENT_FIELDS}
    )
    labels: set[str] = field(default_factory=set)  # the runs' hardware labels
    wheels: set[str] = field(default_factory=set)  # the torch wheels of their images
    gated: int = 0  # runs with a passing gate
    lows: dict[str, tuple[float, str]] = field(default_factory=dict)  # check -> (min, unit)

    def add(self, other: EnvironmentParts) -> None:
        for key, values in other.fields.items():
            self.fields.setdefault(key, set()).update(values)
        self.labels |= other.labels
        self.wheels |= other.wheels
        self.gated += other.gated
        for check, (value, unit) in other.lows.items():
            if check not in self.lows or value < self.lows[check][0]:
                self.lows[check] = (value, unit)

    def document(self) -> dict[str, Any]:
        return {
            "fields": {k: sorted(v) for k, v in self.fields.items()},
            "labels": sorted(self.labels),
            "wheels": sorted(self.wheels),
            "gated": self.gated,
            "lows": {k: [v, u] for k, (v, u) in sorted(self.lows.items())},
        }

    @classmethod
    def of_document(cls, doc: Mapping[str, Any]) -> EnvironmentParts:
        parts = cls()
        for key, values in doc["fields"].items():
            parts.fields[key] = set(values)
        parts.labels, parts.wheels = set(doc["labels"]), set(doc["wheels"])
        parts.gated = int(doc["gated"])
        parts.lows = {k: (float(v), str(u)) for k, (v, u) in doc["lows"].items()}
        return parts


def lines(parts: EnvironmentParts, runs: int) -> list[tuple[str, list[str]]]:
    """The block: each field's sorted values, and the gate line where some run was gated.
    Where no node named its accelerator model, the machine line shows the runs' hardware
    labels; torch wheel file names, where known, say more than a version string."""
    values = {key: set(found) for key, found in parts.fields.items()}
    if not values["accelerator_model"]:
        values["accelerator_model"] = set(parts.labels)
    if parts.wheels:
        values["framework"] = set(parts.wheels)
    found = [(label, sorted(values[key])) for label, key in ENVIRONMENT_FIELDS]
    if parts.gated:
        gate = [f"{parts.gated} of {runs} run(s) gated"]
        for check in GATE_CHECKS:
            if check in parts.lows:
                value, unit = parts.lows[check]
                gate.append(f"{check} min {value:.4g} {unit}")
        found.append(("fabric health (gate)", [", ".join(gate)]))
    return found


def node_query() -> Select[Any]:
    """The distinct environments of runs' nodes; the caller adds which runs."""
    return select(*ENV_COLUMNS).join(Run, Run.run_id == RunNode.run_id).distinct()


def gate_query() -> Select[Any]:
    """The figures of runs' passing gates; the caller adds which runs (joining runs for a
    filter on them: gate_query().join(Run, on_gated))."""
    return (
        select(*_GATE_COLUMNS)
        .join(HealthFigure, HealthFigure.check_id == HealthCheckRun.id)
        .where(HealthCheckRun.ok)
    )


def parts_of(
    conn: Connection, node_queries: Iterable[Select[Any]], gate_queries: Iterable[Select[Any]]
) -> EnvironmentParts:
    """The parts read by these queries (node_query's and gate_query's, narrowed)."""
    parts = EnvironmentParts()
    images: set[str] = set()
    for query in node_queries:
        for row in conn.execute(query).mappings():
            _collect(parts.fields, row)
            if row["image_id"]:
                images.add(row["image_id"])
            if row["hardware_label"]:
                parts.labels.add(row["hardware_label"])
    ordered = sorted(images)
    for i in range(0, len(ordered), 500):
        wheel_query = select(ImageWheel.filename).where(
            ImageWheel.image_id.in_(ordered[i : i + 500]), ImageWheel.filename.like("torch-%")
        )
        parts.wheels.update(conn.scalars(wheel_query))
    gated: set[str] = set()
    for query in gate_queries:
        for run_id, check, value, unit in conn.execute(query):
            gated.add(str(run_id))
            if check not in parts.lows or value < parts.lows[check][0]:
                parts.lows[check] = (float(value), str(unit))
    parts.gated = len(gated)
    return parts


def parts_of_runs(conn: Connection, run_ids: Sequence[str]) -> EnvironmentParts:
    ids = list(run_ids)
    chunks = [ids[i : i + 500] for i in range(0, len(ids), 500)]
    return parts_of(
        conn,
        [node_query().where(RunNode.run_id.in_(c)) for c in chunks],
        [gate_query().where(HealthCheckRun.gated_run_id.in_(c)) for c in chunks],
    )


def _collect(values: dict[str, set[str]], row: Mapping[Any, Any]) -> None:
    if row["accelerator_model"]:
        count = f"{row['accelerator_count']} x " if row["accelerator_count"] else ""
        values["accelerator_model"].add(f"{count}{row['accelerator_model']}")
    network = describe_ib(row["ib"])
    if network:
        values["ib"].add(network)
    for key in ("os", "kernel", "driver", "docker", "fabric_summary"):
        if row[key]:
            values[key].add(str(row[key]))
    if row["torch"]:
        values["framework"].add(f"torch {row['torch']}")


def describe_ib(ports: Any) -> str | None:
    """'InfiniBand, 2 x 200 Gb/sec (4X HDR)' from env.json's `ib` list of active ports.

    Items are as the node probe reads them from /sys/class/infiniband: {hca, port, state,
    rate, link_layer}; a port whose state does not end in ACTIVE is left out.
    """
    if not ports or not isinstance(ports, list):
        return None
    counts: dict[tuple[str, str], int] = {}
    for port in ports:
        if not isinstance(port, dict):
            key = ("InfiniBand", str(port))
        elif not str(port.get("state") or "ACTIVE").upper().endswith("ACTIVE"):
            continue
        else:
            key = (
                str(port.get("link_layer") or "InfiniBand"),
                str(port.get("rate") or "rate unknown"),
            )
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    layers: dict[str, list[str]] = {}
    for (layer, rate), n in sorted(counts.items()):
        layers.setdefault(layer, []).append(f"{n} x {rate}")
    return "; ".join(f"{layer}, {', '.join(rates)}" for layer, rates in layers.items())


def on_gated() -> Any:
    """gate_query's join with the runs it gated."""
    return Run.run_id == HealthCheckRun.gated_run_id
