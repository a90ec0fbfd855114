"""Monitors during a run: the sampler command started on every node next to the workload, and
reading what it wrote (RUN_DIR/nodes/<node>/monitor.jsonl) into monitor_samples rows.

The sampler is orchestrator/nodeside/monitor_probe.py (standard library, Python 3.8), sent as
`python -c SOURCE ARGS_JSON`. Which accelerator tool it calls and how its output is read is
table-driven (SAMPLING_QUERIES for CSV tools such as nvidia-smi, TEXT_QUERIES for mx-smi's text,
by tool name); a vendor tool without an entry has its raw output recorded once in the file and
nothing else. A run's device memory peaks during training come from here (device_memory_peaks).
docs/monitors.md describes metrics and the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.errors import IngestError
from orchestrator.workload_source import MONITOR_PROBE_PATH

MONITOR_FILE = "monitor.jsonl"
MONITOR_LOG = "monitor.log"
DEFAULT_INTERVAL_S = 5.0
INTERVAL_ENV = "ORCHESTRATOR_MONITOR_INTERVAL_S"  # e.g. 1 in tests
PROBE_SOURCE = MONITOR_PROBE_PATH.read_text(encoding="utf-8")

MIB = 1024 * 1024
# Tool name -> (argv that samples every device, [metric, scale] per CSV column).
SAMPLING_QUERIES: dict[str, tuple[tuple[str, ...], tuple[tuple[str | None, float], ...]]] = {
    "nvidia-smi": (
        (
            "nvidia-smi",
            "--query-gpu=index,memory.used,memory.total,power.draw,temperature.gpu,utilization.gpu",
            "--format=csv,noheader,nounits",
        ),
        (
            ("index", 1.0),
            ("device_mem_used_bytes", float(MIB)),
            ("device_mem_total_bytes", float(MIB)),
            ("device_power_w", 1.0),
            ("device_temp_c", 1.0),
            ("device_util_percent", 1.0),
        ),
    ),
}
# Tool name -> (argv, parser) for tools that print text rather than CSV.
TEXT_QUERIES: dict[str, tuple[tuple[str, ...], str]] = {
    "mx-smi": (("mx-smi", "--show-memory"), "mx-smi-memory"),
}
# Tool name -> (argv, format) of a power-only query, sampled at POWER_INTERVAL_S (MLPerf Power
# asks for at least one sample per second; two per second keep every second covered).
POWER_QUERIES: dict[str, tuple[tuple[str, ...], str]] = {
    "nvidia-smi": (
        ("nvidia-smi", "--query-gpu=index,power.draw", "--format=csv,noheader,nounits"),
        "csv-power",
    ),
    "mx-smi": (("mx-smi", "--show-board-power"), "mx-smi-power"),
}
BMC_QUERY = ("ipmitool", "dcmi", "power", "reading")  # the node's watts, where configured
DEFAULT_POWER_INTERVAL_S = 0.5
POWER_INTERVAL_ENV = "ORCHESTRATOR_POWER_INTERVAL_S"
TOOL_MISSING = "monitor_tool_missing"
RAW_OUTPUT = "monitor_raw"  # kept in the file only; monitor_samples holds numbers


def interval_s() -> float:
    return _seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S)


def power_interval_s() -> float:
    return _seconds(POWER_INTERVAL_ENV, DEFAULT_POWER_INTERVAL_S)


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = default
    return value if math.isfinite(value) and value > 0 else default


def sampler_args(
    monitor: Sequence[str],
    out: str,
    every_s: float,
    devices: Sequence[int] | None = None,
    bmc_power: bool = False,
) -> dict[str, Any]:
    """The sampler's argument JSON for the profile's monitor argv (empty: no tool); `devices`:
    the run's devices on the node (SMI numbering), the only ones it records; `bmc_power`: also
    the node's power from its BMC (the cluster file's [energy] bmc_power)."""
    args = _tool_args(monitor, out, every_s)
    if devices is not None:
        args["devices"] = list(devices)
    power = POWER_QUERIES.get(Path(monitor[0]).name) if monitor else None
    if power is not None:
        argv, fmt = power
        tool = [monitor[0], *argv[1:]]
        args["power"] = {"tool": tool, "format": fmt, "interval_s": power_interval_s()}
    if bmc_power:
        args["bmc"] = {
            "tool": list(BMC_QUERY),
            "format": "ipmi-dcmi",
            "interval_s": power_interval_s(),
        }
    return args


def _tool_args(monitor: Sequence[str], out: str, every_s: float) -> dict[str, Any]:
    if not monitor:
        return {"out": out, "interval_s": every_s, "tool": None, "columns": None}
    name = Path(monitor[0]).name
    if name in TEXT_QUERIES:
        argv, fmt = TEXT_QUERIES[name]
        tool = [monitor[0], *argv[1:]]
        return {"out": out, "interval_s": every_s, "tool": tool, "columns": None, "format": fmt}
    known = SAMPLING_QUERIES.get(name)
    if known is None:
        return {"out": out, "interval_s": every_s, "tool": list(monitor), "columns": None}
    argv, columns = known
    return {
        "out": out,
        "interval_s": every_s,
        "tool": [monitor[0], *argv[1:]],
        "columns": [list(c) for c in columns],
        "format": "csv",
    }


def sampler_argv(
    python: str,
    monitor: Sequence[str],
    out: str,
    every_s: float,
    devices: Sequence[int] | None = None,
    bmc_power: bool = False,
) -> list[str]:
    args = sampler_args(monitor, out, every_s, devices, bmc_power)
    return [python, "-c", PROBE_SOURCE, json.dumps(args)]


def parse_tool_output(tool: str, text: str) -> list[tuple[str, float, int | None]]:
    """The tool's output as (metric, value, device) in bytes, W, °C, % (what the sampler does on
    the node; here for tests and for reading recorded output). `tool`: a key of
    SAMPLING_QUERIES or TEXT_QUERIES, or a power query's: "nvidia-smi-power", "mx-smi-power",
    "ipmitool"."""
    from orchestrator.nodeside import monitor_probe

    if tool == "mx-smi-power":
        return [tuple(s) for s in monitor_probe.parse_mx_smi_power(text)]
    if tool == "ipmitool":
        return [tuple(s) for s in monitor_probe.parse_ipmi_power(text)]
    if tool == "nvidia-smi-power":
        return [tuple(s) for s in monitor_probe.parse_rows(text, monitor_probe.POWER_COLUMNS)]
    if tool in TEXT_QUERIES:
        return [tuple(s) for s in monitor_probe.parse_mx_smi_memory(text)]
    _, columns = SAMPLING_QUERIES[tool]
    return [tuple(s) for s in monitor_probe.parse_rows(text, [list(c) for c in columns])]


@dataclass(frozen=True)
class Sample:
    ts: datetime
    metric: str
    value: float
    device: int | None


def parse_samples(text: str, source: str) -> list[Sample]:
    """Lines of monitor.jsonl. A line cut short by the kill at the end is skipped; any other
    malformed line is an IngestError naming the file and line."""
    samples = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the last line, interrupted mid-write
            raise IngestError(
                f"{source}: line {number} is not JSON", "fix or remove the line"
            ) from None
        if not isinstance(doc, dict) or doc.get("metric") == RAW_OUTPUT:
            continue
        try:
            ts = datetime.fromtimestamp(float(doc["ts"]), timezone.utc)
            value = float(doc["value"])
            device = doc.get("device")
            if device is not None:
                device = int(device)
            metric = str(doc["metric"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise IngestError(
                f"{source}: line {number} needs ts, metric, number value and device",
                "docs/monitors.md describes the file",
            ) from None
        if math.isfinite(value) and 0 < len(metric) <= 64:
            samples.append(Sample(ts, metric, value, device))
    return samples


@dataclass(frozen=True)
class RawOutput:
    """A vendor tool's output that gave no reading, kept once in monitor.jsonl."""

    tool: str | None
    reason: str  # "failed", "no parser", "unparsed"; "" in files from older samplers
    text: str


def raw_output(text: str) -> RawOutput | None:
    """The file's first `monitor_raw` line, if any (read after parse_samples accepted it)."""
    for line in text.splitlines():
        if RAW_OUTPUT not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("metric") == RAW_OUTPUT:
            tool = doc.get("tool")
            return RawOutput(
                str(tool) if tool else None, str(doc.get("reason") or ""), str(doc.get("text"))
            )
    return None


def smi_warnings(raw: dict[str, RawOutput], mem_source: str | None) -> list[str]:
    """Why a run's mem is the allocator's although the profile names an SMI tool: its output
    was not understood (or it failed) on these nodes, which kept it in monitor.jsonl."""
    if mem_source != "allocator":
        return []
    why = {"unparsed": "was not understood", "failed": "failed"}
    return [
        f"mem is the allocator's peak, not the device's: {r.tool or 'the SMI tool'}'s output "
        f"on node {node} {why[r.reason]} (kept raw in nodes/{node}/{MONITOR_FILE}, "
        "metric monitor_raw; docs/monitors.md)"
        for node, r in sorted(raw.items())
        if r.reason in why
    ]


def sample_rows(run_id: str, samples: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    """monitor_samples rows for every node's samples."""
    return [
        {
            "run_id": run_id,
            "node_name": node,
            "ts": s.ts,
            "device_index": s.device,
            "metric": s.metric,
            "value": s.value,
        }
        for node, node_samples in sorted(samples.items())
        for s in node_samples
    ]


@dataclass(frozen=True)
class DevicePeak:
    """One device's highest memory use as its tool reported it, and its total."""

    node: str
    device: int
    used_bytes: int
    total_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "device": self.device,
            "used_bytes": self.used_bytes,
            "total_bytes": self.total_bytes,
        }


def device_memory_peaks(
    samples: dict[str, list[Sample]],
    start_unix: float,
    end_unix: float,
    devices: int,
    node_devices: Mapping[str, Sequence[int]] | None = None,
) -> list[DevicePeak]:
    """Each device's peak `device_mem_used_bytes` between start and end (the training phase),
    for the devices the run used on each node: `node_devices[node]` (the manifest's, SMI
    numbering: the launcher made them the visible devices) or else 0..devices-1; not a
    neighbour's job on the other cards. Sorted by node and device."""
    used: dict[tuple[str, int], float] = {}
    totals: dict[tuple[str, int], float] = {}
    for node, node_samples in samples.items():
        own = set((node_devices or {}).get(node) or range(devices))
        for s in node_samples:
            if s.device is None or s.device not in own:
                continue
            key = (node, s.device)
            if s.metric == "device_mem_total_bytes":
                totals[key] = max(totals.get(key, 0.0), s.value)
            elif s.metric == "device_mem_used_bytes" and start_unix <= s.ts.timestamp() <= end_unix:
                used[key] = max(used.get(key, 0.0), s.value)
    return [
        DevicePeak(
            node,
            device,
            int(value),
            int(totals[(node, device)]) if (node, device) in totals else None,
        )
        for (node, device), value in sorted(used.items())
    ]
