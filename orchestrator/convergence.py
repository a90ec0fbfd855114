"""Did a run converge like its references? A run whose throughput changed is only a better
(or worse) number if it reached the same accuracy in the same number of epochs: MLPerf's
rcp_checker compares a submission's epochs to converge with reference convergence points.

Pure: a run's per-epoch mAP curve against reference curves (earlier runs of its configuration,
or a reference file). docs/metrics.md gives the rules.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

TARGET_FRACTION = 0.95  # default target: 95 % of the references' mean final mAP
MAP_TOLERANCE = 0.005  # the final-mAP band: the references' min..max widened by this much
THROUGHPUT_CHANGE = 0.02  # a p_core this far (2 %) from the references' mean has "changed"
REFERENCE_RUNS = 5  # default references: the configuration's last 5 runs before this one


@dataclass(frozen=True)
class Curve:
    """One run's mAP after each epoch (epochs counted from 1) and its p_core."""

    run_id: str
    maps: tuple[float, ...]  # mAP after epoch 1, 2, ...
    p_core: float | None

    @property
    def final(self) -> float | None:
        return self.maps[-1] if self.maps else None

    def epochs_to(self, target: float) -> int | None:
        """The first epoch whose mAP reached `target`; None if none did."""
        return next((i + 1 for i, m in enumerate(self.maps) if m >= target), None)


def curve_from_epochs(
    run_id: str, epochs: Sequence[Mapping[Any, Any]], p_core: Any
) -> Curve | None:
    """From the store's run_epochs rows (0-based `epoch`); None without an evaluated epoch."""
    maps = [
        float(e["map"])
        for e in sorted(epochs, key=lambda e: e["epoch"])
        if e.get("map") is not None
    ]
    if not maps:
        return None
    return Curve(run_id, tuple(maps), None if p_core is None else float(p_core))


@dataclass(frozen=True)
class Convergence:
    run_id: str
    references: tuple[str, ...]
    target: float
    epochs: int | None  # the run's epochs to the target (None: never reached)
    epochs_band: tuple[int | None, int | None]  # the references' min and max (None: not reached)
    final: float
    final_band: tuple[float, float]  # the references' min and max final mAP
    throughput_change: float | None  # relative p_core change from the references' mean

    @property
    def epochs_outside(self) -> bool:
        low, high = self.epochs_band
        if self.epochs is None or low is None or high is None:
            return (self.epochs is None) != (low is None and high is None)
        return not low <= self.epochs <= high

    @property
    def final_outside(self) -> bool:
        low, high = self.final_band
        return not low - MAP_TOLERANCE <= self.final <= high + MAP_TOLERANCE

    @property
    def converged_differently(self) -> bool:
        return self.epochs_outside or self.final_outside

    @property
    def throughput_changed(self) -> bool:
        return (
            self.throughput_change is not None and abs(self.throughput_change) >= THROUGHPUT_CHANGE
        )

    @property
    def flagged(self) -> bool:
        """Faster (or slower), but converged differently."""
        return self.throughput_changed and self.converged_differently

    def describe(self) -> str:
        reached = (
            f"reached mAP {self.target:.3f} in {_epochs(self.epochs)}"
            if self.epochs is not None
            else f"did not reach mAP {self.target:.3f}"
        )
        parts = [
            f"{reached} (references: {_band(self.epochs_band)})",
            f"final mAP {self.final:.3f} (references {self.final_band[0]:.3f}–"
            f"{self.final_band[1]:.3f})",
        ]
        if self.throughput_change is None:
            verdict = "converged differently" if self.converged_differently else "converged alike"
        else:
            pace = "faster" if self.throughput_change > 0 else "slower"
            change = f"p_core {self.throughput_change * 100:+.1f}%"
            if self.flagged:
                verdict = f"{pace} ({change}), but converged differently"
            else:
                verdict = f"{change}; converged {'differently' if self.converged_differently else 'alike'}"
        return f"{self.run_id}: {verdict}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "references": list(self.references),
            "target": self.target,
            "epochs_to_target": self.epochs,
            "references_epochs": list(self.epochs_band),
            "final_map": self.final,
            "references_final_map": list(self.final_band),
            "throughput_change": self.throughput_change,
            "converged_differently": self.converged_differently,
            "flagged": self.flagged,
            "text": self.describe(),
        }


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _band(band: tuple[int | None, int | None]) -> str:
    low, high = band
    if low is None or high is None:
        return "never"
    return _epochs(low) if low == high else f"{low}–{high} epochs"


def check(
    run: Curve, references: Sequence[Curve], target: float | None = None
) -> Convergence | None:
    """The run against its references; None without references (or the run's own curve)."""
    refs = [r for r in references if r.run_id != run.run_id and r.final is not None]
    if not refs or run.final is None:
        return None
    finals = [float(r.final) for r in refs if r.final is not None]
    goal = target if target is not None else TARGET_FRACTION * statistics.fmean(finals)
    reached = [r.epochs_to(goal) for r in refs]
    got = [e for e in reached if e is not None]
    band = (min(got), max(got)) if got else (None, None)
    speeds = [r.p_core for r in refs if r.p_core]
    change = None
    if speeds and run.p_core is not None:
        change = run.p_core / statistics.fmean(speeds) - 1.0
    return Convergence(
        run.run_id,
        tuple(r.run_id for r in refs),
        goal,
        run.epochs_to(goal),
        band,
        float(run.final),
        (min(finals), max(finals)),
        change,
    )


def load_reference_file(path: str) -> tuple[list[Curve], float | None]:
    """A reference file (JSON): {"target": 0.35 (optional), "runs": [{"run_id": "ref-1",
    "p_core": 512.0, "map": [0.12, 0.25, 0.33, 0.36]}, ...]}; `map` after each epoch."""
    where = f"reference file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where} is not readable JSON ({exc})", "fix the file") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{where} has no runs", 'write {"runs": [{"run_id": ..., "map": [...]}]}')
    curves = []
    for i, run in enumerate(runs):
        maps = run.get("map") if isinstance(run, dict) else None
        if not isinstance(maps, list) or not maps or not all(_number(m) for m in maps):
            raise ConfigError(
                f"{where}: runs[{i}].map must be a list of numbers", "the mAP after each epoch"
            )
        p_core = run.get("p_core")
        if p_core is not None and not _number(p_core):
            raise ConfigError(f"{where}: runs[{i}].p_core is not a number", "e.g. 512.0")
        curves.append(
            Curve(str(run.get("run_id", f"reference-{i + 1}")), tuple(map(float, maps)), p_core)
        )
    target = data.get("target")
    if target is not None and not _number(target):
        raise ConfigError(f"{where}: target is not a number", "e.g. 0.35, or leave it out")
    return curves, None if target is None else float(target)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
