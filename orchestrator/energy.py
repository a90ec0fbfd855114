"""Energy of a run's training window from the monitors' power samples (pure).

Each power series (one device's `device_power_w`, or a node's `node_power_w` from its BMC) is
integrated with the trapezoid rule over the training window, the first rank's training start to
the last rank's end (store/metrics.training_window). At the window's edges the series is
interpolated between the samples either side, or held at its nearest sample where it has none
beyond the edge. Coverage follows MLPerf Power's rule of at least one sample per second: the
share of the window's whole seconds that hold at least one sample of the series; a run is
covered only when every series is (docs/metrics.md, "Energy").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.monitor import Sample

DEVICE_POWER = "device_power_w"
NODE_POWER = "node_power_w"  # the BMC's reading (ipmitool dcmi power reading)
FULL_COVERAGE = 1.0


@dataclass(frozen=True)
class SeriesEnergy:
    node: str
    device: int | None  # None: the node's own reading
    metric: str
    joules: float
    samples: int  # inside the window
    coverage: float  # share of the window's whole seconds with a sample

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "device": self.device,
            "metric": self.metric,
            "joules": round(self.joules, 3),
            "samples": self.samples,
            "coverage": round(self.coverage, 4),
        }


@dataclass(frozen=True)
class RunEnergy:
    """Energy over the training window: devices' (sum of every device series) and nodes'
    (sum of the BMC series), each None when no series of its kind; coverage the worst series'."""

    window_s: float
    device_j: float | None
    node_j: float | None
    coverage: float
    series: tuple[SeriesEnergy, ...]

    @property
    def joules(self) -> float:
        """The headline figure: the nodes' energy where a BMC measured it, else the devices'."""
        return self.node_j if self.node_j is not None else (self.device_j or 0.0)

    def per_image(self, images: int | None) -> float | None:
        return self.joules / images if images else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_s": round(self.window_s, 3),
            "device_j": _r(self.device_j),
            "node_j": _r(self.node_j),
            "coverage": round(self.coverage, 4),
            "series": [s.as_dict() for s in self.series],
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def trapezoid(points: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Joules of (unix time, watts) points between start and end: the trapezoid rule, the edges
    interpolated between their neighbours or held at the nearest point. 0 without points."""
    pts = sorted(points)
    if not pts or end <= start:
        return 0.0
    inside = [(t, w) for t, w in pts if start < t < end]
    edged = [(start, _value_at(pts, start)), *inside, (end, _value_at(pts, end))]
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(edged, edged[1:]))


def _value_at(pts: Sequence[tuple[float, float]], t: float) -> float:
    before = [p for p in pts if p[0] <= t]
    after = [p for p in pts if p[0] >= t]
    if before and after:
        (t0, w0), (t1, w1) = before[-1], after[0]
        return w0 if t1 == t0 else w0 + (w1 - w0) * (t - t0) / (t1 - t0)
    return (before[-1] if before else after[0])[1]


def coverage(times: Sequence[float], start: float, end: float) -> float:
    """Share of the window's whole seconds [start + k, start + k + 1) holding a sample; the
    window's last, partial second counts when it is at least half a second long."""
    length = end - start
    if length <= 0:
        return 0.0
    seconds = int(length) + (1 if length - int(length) >= 0.5 else 0)
    if seconds == 0:
        return 1.0 if any(start <= t <= end for t in times) else 0.0
    hit = {math.floor(t - start) for t in times if start <= t < start + seconds}
    return len(hit & set(range(seconds))) / seconds


def run_energy(
    samples: Mapping[str, Sequence[Sample]],
    start: float,
    end: float,
    node_devices: Mapping[str, Sequence[int] | None],
) -> RunEnergy | None:
    """The run's energy from every node's samples; None when no power series was sampled.
    Device series count only for the run's devices of each node (node_devices[node]; None:
    every device the sampler wrote, which it already limits to the run's)."""
    series: list[SeriesEnergy] = []
    for node, node_samples in sorted(samples.items()):
        own = node_devices.get(node)
        grouped: dict[tuple[str, int | None], list[tuple[float, float]]] = {}
        for s in node_samples:
            if s.metric == NODE_POWER or (
                s.metric == DEVICE_POWER and (own is None or s.device in own)
            ):
                key = (s.metric, s.device if s.metric == DEVICE_POWER else None)
                grouped.setdefault(key, []).append((s.ts.timestamp(), s.value))
        for (metric, device), points in sorted(grouped.items(), key=_series_key):
            times = [t for t, _ in points]
            series.append(
                SeriesEnergy(
                    node,
                    device,
                    metric,
                    trapezoid(points, start, end),
                    sum(1 for t in times if start <= t <= end),
                    coverage(times, start, end),
                )
            )
    if not series:
        return None
    devices = [s.joules for s in series if s.metric == DEVICE_POWER]
    nodes = [s.joules for s in series if s.metric == NODE_POWER]
    return RunEnergy(
        window_s=end - start,
        device_j=sum(devices) if devices else None,
        node_j=sum(nodes) if nodes else None,
        coverage=min(s.coverage for s in series),
        series=tuple(series),
    )


def _series_key(item: tuple[tuple[str, int | None], Any]) -> tuple[str, int]:
    (metric, device), _ = item
    return metric, -1 if device is None else device


def coverage_warnings(energy: RunEnergy | None) -> list[str]:
    """The run's warning when a power series has a second without a sample (MLPerf Power)."""
    if energy is None or energy.coverage >= FULL_COVERAGE:
        return []
    sparse = [s for s in energy.series if s.coverage < FULL_COVERAGE]
    named = ", ".join(
        f"{s.node}"
        + (f" device {s.device}" if s.device is not None else " (BMC)")
        + f" {s.coverage:.0%}"
        for s in sparse[:4]
    ) + (" ..." if len(sparse) > 4 else "")
    return [
        f"energy from sparse power samples: {len(sparse)} series below one sample per second "
        f"(MLPerf Power's rule) over the training window: {named}; the joules are an "
        'estimate (docs/metrics.md, "Energy")'
    ]
