"""The cluster file's [health] table -> HealthSettings (pure; every mistake one line naming the
file, the key and the fix). What each key means: docs/cluster-file.md and docs/health.md."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from orchestrator.states import GATE_WHEN, PAIRS_HOW, GateWhen, PairsHow
from orchestrator.tables import Dialect, Table

HEALTH_KEYS = {
    "before_run",
    "compute_fraction",
    "busbw_fraction",
    "pair_fraction",
    "time_budget_s",
    "compute_s",
    "sizes_mib",
    "iters",
    "pairs",
    "history",
    "quarantine_expiry_s",
    "expected_busbw_gbs",
    "expected_compute_gflops",
    "exempt",
}


@dataclass(frozen=True)
class HealthSettings:
    before_run: GateWhen = "multi-node"
    compute_fraction: float = 0.7  # of the expected (or reference) GFLOP/s per device
    busbw_fraction: float = 0.7  # of the expected all-reduce busBW (all ranks, intra-node)
    pair_fraction: float = 0.7  # of the expected node-to-node busBW
    time_budget_s: float = 60.0  # the whole probe, torchrun's start included
    compute_s: float = 2.0  # timed compute per device, warm-up excluded
    sizes_mib: tuple[float, ...] = (1.0, 16.0, 64.0, 256.0)  # all-reduce sizes; pairs: largest
    iters: int = 5  # timed all-reduces per size
    pairs: PairsHow = "ring"
    history: int = 5  # a node's last N passing figures make its own median
    quarantine_expiry_s: float = 86400.0  # a quarantined node is lifted after this
    expected_busbw_gbs: float | None = None  # overrides 24 GB/s per 200 Gb/s NIC
    expected_compute_gflops: float | None = None  # per device, in the run's precision
    exempt: tuple[str, ...] = ()  # measured and shown, never refused or quarantined

    def gates(self, nnodes: int) -> bool:
        """Whether a run on `nnodes` nodes is gated."""
        if self.before_run == "never":
            return False
        return self.before_run == "always" or nnodes > 1


def _fraction(t: Table, key: str, default: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        t.fail(
            key,
            f"must be a fraction above 0 and at most 1, got {value!r}",
            f"e.g. {key} = {default} (refuse below {default:.0%} of the expected figure)",
        )
    return float(value)


def _sizes(t: Table) -> tuple[float, ...]:
    value = t.get("sizes_mib", list(HealthSettings.sizes_mib))
    sizes = [v for v in value if _size(v)] if isinstance(value, list) else []
    if not sizes or len(sizes) != len(value if isinstance(value, list) else []):
        t.fail(
            "sizes_mib",
            f"must be a list of sizes in MiB above 0 and at most 4096, got {value!r}",
            "e.g. sizes_mib = [1, 16, 64, 256] (on a CPU testbed [0.25, 1])",
        )
    return tuple(sorted(float(v) for v in sizes))


def _size(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= 4096


def parse_health_table(table: object, source: str, node_names: Collection[str]) -> HealthSettings:
    """Validate the [health] table of cluster file `source`; `exempt` names nodes of the file."""
    t = Table(table, source, Dialect(), "health", HEALTH_KEYS)  # the cluster file's words
    exempt = t.strings("exempt")
    for name in exempt:
        if name not in node_names:
            t.fail(
                "exempt",
                f"names node {name!r}, which is not in the file",
                f"known nodes: {', '.join(sorted(node_names)) or '(none)'}",
            )
    optional = {}
    for key in ("expected_busbw_gbs", "expected_compute_gflops"):
        optional[key] = t.number(key, 1.0) if key in t.data else None
    return HealthSettings(
        before_run=t.choice("before_run", "multi-node", GATE_WHEN),
        compute_fraction=_fraction(t, "compute_fraction", HealthSettings.compute_fraction),
        busbw_fraction=_fraction(t, "busbw_fraction", HealthSettings.busbw_fraction),
        pair_fraction=_fraction(t, "pair_fraction", HealthSettings.pair_fraction),
        time_budget_s=t.number("time_budget_s", HealthSettings.time_budget_s),
        compute_s=t.number("compute_s", HealthSettings.compute_s),
        sizes_mib=_sizes(t),
        iters=t.integer("iters", HealthSettings.iters, low=1, high=1000),
        pairs=t.choice("pairs", "ring", PAIRS_HOW),
        history=t.integer("history", HealthSettings.history, low=3, high=1000),
        quarantine_expiry_s=t.number("quarantine_expiry_s", HealthSettings.quarantine_expiry_s),
        expected_busbw_gbs=optional["expected_busbw_gbs"],
        expected_compute_gflops=optional["expected_compute_gflops"],
        exempt=exempt,
    )
