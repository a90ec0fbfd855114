"""Numbers as people read them: throughputs to 3 significant digits, times to 0.1 s, bytes in
GiB/MiB. Only what a person reads goes through here; CSV and JSON keep full precision
(docs/output.md)."""

from __future__ import annotations

import math
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
NOT_MEASURED_CPU = "n/a (cpu)"  # the device keeps no memory statistics (the CPU)


def sig3(value: Any) -> str:
    """3 significant digits, never in exponent notation: 1234.5 -> '1230', 302.34 -> '302',
    48.376 -> '48.4', 0.88954 -> '0.890'. '' for None."""
    if value is None:
        return ""
    number = float(value)
    if number == 0 or not math.isfinite(number):
        return f"{number:g}"
    magnitude = math.floor(math.log10(abs(number)))
    decimals = max(0, 2 - magnitude)
    rounded = round(number, 2 - magnitude)
    # rounding may carry into a new digit (999.7 -> 1000): then one decimal fewer
    if rounded and math.floor(math.log10(abs(rounded))) > magnitude:
        decimals = max(0, decimals - 1)
    return f"{rounded:.{decimals}f}"


def seconds(value: Any) -> str:
    """A time in seconds to 0.1 s: '12.3'. '' for None."""
    return "" if value is None else f"{float(value):.1f}"


def duration(value: Any) -> str:
    """A wall time for a sentence: '12.3 s', '4m05.2s', '2h03m10s'."""
    if value is None:
        return "?"
    total = max(0.0, float(value))
    if total < 60:
        return f"{total:.1f} s"
    if total < 3600:
        minutes, rest = divmod(total, 60)
        return f"{int(minutes)}m{rest:04.1f}s"
    hours, rest = divmod(int(round(total)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def eta(value: Any) -> str:
    """A remaining time, to the second: '45s', '3m07s', '1h02m'."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "?"
    total = int(round(max(0.0, float(value))))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def size(value: Any) -> str:
    """Bytes as GiB (1 GiB and more) or MiB: '23.6 GiB', '512.0 MiB'. '' for None."""
    if value is None:
        return ""
    number = float(value)
    if abs(number) >= GIB:
        return f"{number / GIB:.1f} GiB"
    return f"{number / MIB:.1f} MiB"


def mem_cell(label: Any, measured: bool, source: Any = None) -> str:
    """The seed's mem column ('37.1/64.0 (device)', GiB used/total, and whose figure: the SMI
    tool's or the allocator's); `n/a (cpu)` for a run whose device keeps no memory statistics
    (it has metrics but no memory label)."""
    if label:
        return f"{label} ({source})" if source else str(label)
    return NOT_MEASURED_CPU if measured else ""


def mem_used_gib(label: str) -> float:
    """GiB used, from a mem label ('37.1/64.0'); -1 where it does not say."""
    try:
        return float(label.split("/", 1)[0])
    except ValueError:
        return -1.0


def map3(value: Any) -> str:
    """COCO mAP (0 to 1) to 3 decimals: '0.001', '0.372'. '' for None."""
    return "" if value is None else f"{float(value):.3f}"


def metric(name: str, value: Any) -> str:
    """A run's metric as every page and command shows it (the report's rule): times (`e2e_time`
    and every `*_s`) to 0.1 s, mAP to 3 decimals, throughputs and the rest to 3 significant
    digits. '' for None."""
    if name == "map":
        return map3(value)
    if name == "e2e_time" or name.endswith("_s"):
        return seconds(value)
    return sig3(value)


def measured_here(p_core: Any, source: Any) -> bool:
    """A run of ours with metrics: an empty mem then means its device keeps no memory
    statistics (the CPU). An imported run's logs may simply not say (empty cell)."""
    return p_core is not None and source in (None, "orchestrator")
