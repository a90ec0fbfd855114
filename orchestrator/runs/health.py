"""The health probe's figures judged (pure; docs/health.md): each figure against its expected
value (configured, the fabric's, the node's own recent median, or the median of its peers in
the same check), the nodes to blame, and the gate's one-line refusal."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.health_settings import HealthSettings
from orchestrator.specs import NodeSpec
from orchestrator.states import HealthCheck, HealthVerdict

# nccl-tests #119: about 24 GB/s of ring all-reduce busBW per 200 Gb/s NIC.
BUSBW_GBS_PER_NIC = 24.0
UNITS: Mapping[HealthCheck, str] = {
    "compute": "GFLOP/s",
    "allreduce": "GB/s",
    "intra": "GB/s",
    "pair": "GB/s",
}
# A history key: (check, node, peer, device, ranks); the store keeps figures under the same.
HistoryKey = tuple[str, str | None, str | None, int | None, int | None]


class HealthGateRefused(OrchestratorError):
    """A node or link is below its threshold: the run is refused (or, in the queue, the
    nodes named are quarantined and the run goes to others)."""

    exit_code = 1

    def __init__(self, message: str, remedy: str, blamed: Sequence[str]) -> None:
        super().__init__(message, remedy)
        self.blamed = tuple(blamed)


@dataclass(frozen=True)
class Figure:
    """One measured figure and its verdict."""

    check: HealthCheck
    value: float
    node: str | None = None  # compute, intra: the node; pair: the first node
    peer: str | None = None  # pair: the second node
    device: int | None = None  # compute: the device index (SMI numbering)
    ranks: int | None = None  # allreduce, intra: the ranks taking part
    expected: float | None = None
    expected_from: str = "none"  # configured | fabric | own median | peers' median | none
    fraction: float = 1.0
    verdict: HealthVerdict = "unjudged"
    exempt: bool = False

    @property
    def unit(self) -> str:
        return UNITS[self.check]

    @property
    def key(self) -> HistoryKey:
        return (self.check, self.node, self.peer, self.device, self.ranks)

    def where(self) -> str:
        if self.check == "compute":
            return f"{self.node} device {self.device} compute"
        if self.check == "pair":
            return f"pair {self.node}-{self.peer} busBW"
        if self.check == "intra":
            return f"{self.node} intra-node busBW over {self.ranks} ranks"
        return f"all-reduce busBW over {self.ranks} ranks"

    def describe(self) -> str:
        """`node3 device 0 compute 4.1 GFLOP/s, expected 12 (peers' median), ok from 70%`."""
        text = f"{self.where()} {_num(self.value)} {self.unit}"
        if self.expected is None:
            return f"{text} (no expected figure)"
        return (
            f"{text}, expected {_num(self.expected)} ({self.expected_from}), "
            f"threshold {self.fraction:.0%} = {_num(self.expected * self.fraction)}"
        )


@dataclass(frozen=True)
class HealthReport:
    figures: tuple[Figure, ...]
    took_s: float
    nodes: tuple[str, ...]
    doc: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failing(self) -> tuple[Figure, ...]:
        return tuple(f for f in self.figures if f.verdict == "fail" and not f.exempt)

    @property
    def ok(self) -> bool:
        return not self.failing

    def blamed(self) -> tuple[str, ...]:
        """The nodes the failing figures point at: a slow device's or node's own; of slow
        pairs, a node in two of them (a ring names the node between two slow links), else
        both nodes of a slow pair (two nodes alone cannot tell which end is slow)."""
        named: list[str] = []
        slow_pairs = [f for f in self.failing if f.check == "pair"]
        counts: dict[str, int] = {}
        for f in slow_pairs:
            for name in (f.node, f.peer):
                if name:
                    counts[name] = counts.get(name, 0) + 1
        for f in self.failing:
            if f.check in ("compute", "intra") and f.node:
                named.append(f.node)
        shared = [name for name, n in counts.items() if n >= 2]
        named += shared
        for f in slow_pairs:
            if f.node not in shared and f.peer not in shared:
                named += [n for n in (f.node, f.peer) if n]
        exempt = {f.node for f in self.figures if f.exempt}
        return tuple(dict.fromkeys(n for n in named if n not in exempt))

    def summary(self) -> str:
        """One line for `runs show` and the report's environment block."""
        parts = []
        for check in ("compute", "allreduce", "pair", "intra"):
            mine = [f for f in self.figures if f.check == check]
            if mine:
                low = min(mine, key=lambda f: f.value)
                parts.append(f"{check} min {_num(low.value)} {low.unit} ({low.where()})")
        verdict = "ok" if self.ok else f"FAIL {', '.join(self.blamed()) or 'fabric'}"
        return f"{verdict}; " + "; ".join(parts) + f"; {self.took_s:.1f} s"


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fabric_busbw(nodes: Sequence[NodeSpec]) -> float | None:
    """24 GB/s per NIC of the node with the fewest (`ib_hcas`); None without NICs named."""
    if not nodes or any(not n.ib_hcas for n in nodes):
        return None
    return BUSBW_GBS_PER_NIC * min(len(n.ib_hcas) for n in nodes)


def figures_of(doc: Mapping[str, Any]) -> list[Figure]:
    """The probe's health.json as unjudged figures."""
    found = [
        Figure("compute", float(c["gflops"]), node=str(c["node"]), device=int(c["device"]))
        for c in doc.get("compute") or []
    ]
    everyone = doc.get("allreduce")
    if everyone:
        found.append(Figure("allreduce", float(everyone["busbw_gbs"]), ranks=everyone["ranks"]))
    for intra in doc.get("intra") or []:
        found.append(
            Figure("intra", float(intra["busbw_gbs"]), node=intra["node"], ranks=intra["ranks"])
        )
    for pair in doc.get("pairs") or []:
        a, b = sorted((str(pair["a"]), str(pair["b"])))
        found.append(Figure("pair", float(pair["busbw_gbs"]), node=a, peer=b))
    return found


def judge(
    doc: Mapping[str, Any],
    settings: HealthSettings,
    nodes: Sequence[NodeSpec],
    history: Mapping[HistoryKey, Sequence[float]],
) -> HealthReport:
    """Every figure with its expected value and verdict. `history`: each figure's recent
    passing values (the store's), newest first; `settings.history` of them make its median
    when there are at least 3."""
    raw = figures_of(doc)
    by_name = {n.name: n for n in nodes}
    judged = []
    for fig in raw:
        expected, source = _expected(fig, raw, settings, by_name, history)
        fraction = {
            "compute": settings.compute_fraction,
            "pair": settings.pair_fraction,
        }.get(fig.check, settings.busbw_fraction)
        verdict: HealthVerdict = "unjudged"
        if expected is not None:
            verdict = "ok" if fig.value >= fraction * expected else "fail"
        exempt = fig.node in settings.exempt or fig.peer in settings.exempt
        judged.append(
            Figure(
                fig.check,
                fig.value,
                fig.node,
                fig.peer,
                fig.device,
                fig.ranks,
                expected,
                source,
                fraction,
                verdict,
                exempt,
            )
        )
    return HealthReport(
        tuple(judged), float(doc.get("took_s") or 0.0), tuple(doc.get("nodes") or ()), doc
    )


def _expected(
    fig: Figure,
    peers: Sequence[Figure],
    settings: HealthSettings,
    by_name: Mapping[str, NodeSpec],
    history: Mapping[HistoryKey, Sequence[float]],
) -> tuple[float | None, str]:
    if fig.check == "compute" and settings.expected_compute_gflops:
        return settings.expected_compute_gflops, "configured"
    if fig.check in ("allreduce", "pair"):
        if settings.expected_busbw_gbs:
            return settings.expected_busbw_gbs, "configured"
        names = [fig.node, fig.peer] if fig.check == "pair" else list(by_name)
        fabric = fabric_busbw([by_name[n] for n in names if n is not None and n in by_name])
        if fabric is not None:
            return fabric, "fabric"
    own = list(history.get(fig.key, ()))[: settings.history]
    if len(own) >= 3:
        return statistics.median(own), "own median"
    same = [p.value for p in peers if p.check == fig.check]
    if fig.check != "allreduce" and len(same) >= 2:
        return _median(same), "peers' median"
    return None, "none"


def refusal(report: HealthReport, topology: str) -> HealthGateRefused:
    """The gate's one line: who, measured and expected values, and the remedy."""
    blamed = report.blamed()
    failing = sorted(report.failing, key=lambda f: f.value / (f.expected or 1.0))
    shown = "; ".join(f.describe() for f in failing[:3])
    more = f"; and {len(failing) - 3} more" if len(failing) > 3 else ""
    who = f"{', '.join(blamed)} below threshold" if blamed else "the fabric is below threshold"
    remedy = (
        f"see `orchestrator health {topology}` and `orchestrator nodes show NODE`; fix or "
        'leave out the node (--nodes), or set [health] before_run = "never" to skip the gate'
    )
    return HealthGateRefused(f"health gate: {who}: {shown}{more}", remedy, blamed)
