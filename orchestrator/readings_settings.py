"""The cluster file's [stragglers] and [energy] tables (pure; validation with file/key/fix).

Separate from [health] (the fabric and node gate): these tables only say how a finished run's
own readings are judged and sampled.

    [stragglers]
    slower_fraction = 0.2   # a rank this much slower than the median rank is flagged

    [energy]
    bmc_power = false       # also sample each node's power with `ipmitool dcmi power reading`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.tables import Dialect, Table, Words

STRAGGLER_KEYS = {"slower_fraction"}
ENERGY_KEYS = {"bmc_power"}
DEFAULT_SLOWER_FRACTION = 0.2
DEFAULT_HISTORY_RUNS = 10  # earlier runs of a node's device that its own history spans
MAX_SLOWER_FRACTION = 10.0  # 11x the median: past that a flag says nothing new
READINGS = replace(
    Dialect(),
    unknown=Words("{source}: {key} is not a known key", "known keys: {known}"),
    number=Words("{source}: {key} must be a positive number, got {value}", "e.g. {example}"),
)


@dataclass(frozen=True)
class ReadingSettings:
    slower_fraction: float = DEFAULT_SLOWER_FRACTION
    bmc_power: bool = False


def parse_readings(data: Mapping[str, object], source: str) -> ReadingSettings:
    """[stragglers] and [energy] of cluster file `source` (each optional)."""
    stragglers = Table(data.get("stragglers", {}), source, READINGS, "stragglers", STRAGGLER_KEYS)
    energy = Table(data.get("energy", {}), source, READINGS, "energy", ENERGY_KEYS)
    fraction = stragglers.number("slower_fraction", DEFAULT_SLOWER_FRACTION)
    if fraction > MAX_SLOWER_FRACTION:
        stragglers.fail(
            "slower_fraction",
            f"{fraction:g} is out of range (a fraction of the median rank's time)",
            f"use a number above 0 and at most {MAX_SLOWER_FRACTION:g}, e.g. 0.2 for 20 % slower",
        )
    return ReadingSettings(
        slower_fraction=fraction,
        bmc_power=energy.boolean("bmc_power", False),
    )


def straggler_fraction(configured: float) -> float | None:
    """What the manifest records: None for the default (manifests stay as they were)."""
    return None if configured == DEFAULT_SLOWER_FRACTION else configured
