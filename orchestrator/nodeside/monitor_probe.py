"""The node-side monitor sampler: standard library only, Python 3.8, sent as `python3 -c SOURCE`.

Appends one JSON line per sample to OUT, every INTERVAL seconds, until it is killed (the run's
stop kills every process carrying ORCHESTRATOR_RUN_ID), the folder holding OUT disappears, or
(with "follow_parent": true) the process that started it exits:

    {"ts": 1768385700.1, "metric": "host_cpu_util_percent", "value": 37.5, "device": null}

Host metrics come from /proc; accelerator metrics from the vendor tool named in the argument
JSON: {"out": PATH, "interval_s": 5, "tool": ["nvidia-smi", "--query-gpu=...", ...] or null,
"columns": [["index", 1], ["device_mem_used_bytes", 1048576], ...] or null, "format": "csv" or
"mx-smi-memory", "devices": [2, 3] or absent}: with "devices", only those devices' rows are
written (the run's, numbered as the tool numbers them); "power": {"tool": [...], "format":
"csv-power" | "mx-smi-power", "interval_s": 0.5} and "bmc": {"tool": ["ipmitool", "dcmi",
"power", "reading"], "format": "ipmi-dcmi", "interval_s": 0.5}, either absent or null: power
readings on their own, faster clock (device_power_w per device, node_power_w for the node), a
failed reading being a gap in the series. A missing tool is recorded once as
metric "monitor_tool_missing"; a tool that gives no reading is recorded once as {"metric":
"monitor_raw", "text": ..., "reason": "failed" | "no parser" | "unparsed", "tool": ...}, the
text cut to RAW_MAX_CHARS. Nothing here ever stops the run.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time


def cpu_times():
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values), idle


def mem_used_bytes():
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))


RAW_MAX_CHARS = 16384  # raw output kept in monitor.jsonl: the head, where a layout shows


def tool_rows(argv, columns, timeout, fmt="csv"):
    """([(metric, value, device)], None, None) from one call of the tool, or (None, raw text,
    reason) when it gave no reading: "failed" (non-zero exit), "no parser" (a tool without a
    table entry) or "unparsed" (a known tool whose output the parser did not understand)."""
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        text=True,
    )
    raw = done.stdout[:RAW_MAX_CHARS]
    if done.returncode != 0:
        return None, done.stdout[-RAW_MAX_CHARS:], "failed"  # the error is at the end
    if fmt == "mx-smi-memory":
        samples = parse_mx_smi_memory(done.stdout)
    elif columns is None:
        return None, raw, "no parser"
    else:
        samples = parse_rows(done.stdout, columns)
    return (samples, None, None) if samples else (None, raw, "unparsed")


_UNITS = {
    "B": 1,
    "KB": 1024,
    "KIB": 1024,
    "MB": 1024**2,
    "MIB": 1024**2,
    "GB": 1024**3,
    "GIB": 1024**3,
}
_MX_KEYS = {
    "vram used": ("device_mem_used_bytes", 0),
    "vram total": ("device_mem_total_bytes", 0),
    "vis_vram used": ("device_mem_used_bytes", 1),
    "vis_vram total": ("device_mem_total_bytes", 1),
}


def parse_mx_smi_memory(text):
    """`mx-smi --show-memory` -> [(metric, bytes, device)]. Each device's section starts with a
    `GPU#N  <name> ...` line and holds `vram used : 35789312 KB`-style lines (KB are KiB); a
    section without vram lines gives its vis_vram (the CPU-visible part, all of it on the C500)."""
    found: dict = {}  # (device, metric) -> (preference, value)
    device = None
    for line in text.splitlines():
        header = re.match(r"\s*GPU#(\d+)\b", line)
        if header:
            device = int(header.group(1))
            continue
        key, sep, rest = line.partition(":")
        known = _MX_KEYS.get(" ".join(key.split()).lower()) if sep else None
        parts = rest.split()
        if device is None or known is None or len(parts) < 2:
            continue
        unit = _UNITS.get(parts[1].upper())
        try:
            value = float(parts[0]) * unit if unit else None
        except ValueError:
            value = None
        metric, preference = known
        previous = found.get((device, metric))
        if value is not None and (previous is None or preference < previous[0]):
            found[(device, metric)] = (preference, value)
    return [(metric, value, dev) for (dev, metric), (_, value) in sorted(found.items())]


def parse_rows(text, columns):
    """CSV lines of the tool -> [(metric, value * scale, device)]; columns is [[metric, scale]],
    with metric "index" for the device number and null for a column to ignore."""
    samples = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(columns):
            continue
        device = None
        for (name, _), cell in zip(columns, cells):
            if name == "index":
                try:
                    device = int(cell)
                except ValueError:
                    device = None
        for (name, scale), cell in zip(columns, cells):
            if name in ("index", None):
                continue
            try:
                samples.append((name, float(cell) * scale, device))
            except ValueError:
                pass  # "[N/A]", "[Not Supported]"
    return samples


POWER_COLUMNS = [["index", 1.0], ["device_power_w", 1.0]]


def parse_mx_smi_power(text):
    """`mx-smi --show-board-power` -> [("device_power_w", W, device)]: in each `GPU#N` section,
    the line whose key holds "total" and whose value is in W (the board's total power)."""
    found = {}
    device = None
    for line in text.splitlines():
        header = re.match(r"\s*GPU#(\d+)\b", line)
        if header:
            device = int(header.group(1))
            continue
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if device is None or not sep or "total" not in key.lower() or len(parts) < 2:
            continue
        if parts[1].upper() != "W" or device in found:
            continue
        try:
            found[device] = float(parts[0])
        except ValueError:
            pass
    return [("device_power_w", value, dev) for dev, value in sorted(found.items())]


def parse_ipmi_power(text):
    """`ipmitool dcmi power reading` -> [("node_power_w", W, None)] from its `Instantaneous
    power reading:  220 Watts` line; [] when the BMC gave none."""
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key.strip().lower() == "instantaneous power reading":
            parts = rest.split()
            try:
                return [("node_power_w", float(parts[0]), None)] if parts else []
            except ValueError:
                return []
    return []


def power_rows(argv, fmt, timeout):
    """One power reading of every device (or of the node), [] when the tool gave none: a
    missing reading is a gap in the series, which the run's coverage shows."""
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        text=True,
    )
    if done.returncode != 0:
        return []
    if fmt == "mx-smi-power":
        return parse_mx_smi_power(done.stdout)
    if fmt == "ipmi-dcmi":
        return parse_ipmi_power(done.stdout)
    return parse_rows(done.stdout, POWER_COLUMNS)


def only_devices(samples, devices):
    """The samples of the run's devices (and those of no device); all when devices is None."""
    if devices is None:
        return list(samples)
    keep = set(devices)
    return [s for s in samples if s[2] is None or s[2] in keep]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent):
    """Ask Linux for SIGTERM the moment `parent` ends: looking every 0.5 s let a run's end find
    the sampler still there. The look stays, for systems without prctl."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before we asked
        sys.exit(0)


def main(args):
    out = args["out"]
    interval = float(args.get("interval_s") or 5.0)
    tool = args.get("tool") or None
    columns = args.get("columns")
    fmt = args.get("format") or "csv"
    devices = args.get("devices")  # the run's devices (SMI numbering); None: every device
    folder = os.path.dirname(out) or "."
    have_tool = tool is not None and shutil.which(tool[0]) is not None
    # With "follow_parent", stop when the parent exits: under Slurm the sampler runs beside
    # torchrun in one task, and a step killed whole must not leave it behind.
    parent = os.getppid() if args.get("follow_parent") else None
    if parent is not None:
        die_with_parent(parent)
    raw_written = False
    previous = cpu_times()
    # Power at >= 1 Hz (MLPerf Power): its own, cheaper queries on their own clock.
    power = [q for q in (args.get("power"), args.get("bmc")) if q and shutil.which(q["tool"][0])]
    power_every = min([float(q.get("interval_s") or 0.5) for q in power] or [interval])
    next_power = time.time()

    with open(out, "a") as f:

        def write(metric, value, device=None, **extra):
            doc = {"ts": round(time.time(), 3), "metric": metric, "value": value, "device": device}
            doc.update(extra)
            f.write(json.dumps(doc) + "\n")

        if not have_tool:
            write("monitor_tool_missing", 1, tool=tool[0] if tool else None)
            f.flush()

        def sample_power():
            for query in power:
                try:
                    rows = power_rows(query["tool"], query.get("format"), max(1.0, interval))
                except (OSError, subprocess.SubprocessError):
                    rows = []
                for metric, value, device in only_devices(rows, devices):
                    write(metric, value, device)
            f.flush()

        while os.path.isdir(folder):
            started = time.time()
            total, idle = cpu_times()
            d_total, d_idle = total - previous[0], idle - previous[1]
            previous = (total, idle)
            if d_total > 0:
                write("host_cpu_util_percent", round(100.0 * (d_total - d_idle) / d_total, 2))
            write("host_mem_used_bytes", mem_used_bytes())
            if have_tool:
                try:
                    samples, raw, why = tool_rows(tool, columns, max(2.0, interval * 2), fmt)
                except (OSError, subprocess.SubprocessError) as exc:
                    samples, raw, why = None, f"{type(exc).__name__}: {exc}", "failed"
                for metric, value, device in only_devices(samples or (), devices):
                    write(metric, value, device)
                if samples is None and not raw_written:
                    write(
                        "monitor_raw",
                        1,
                        text=raw,
                        reason=why,
                        tool=os.path.basename(tool[0]) if tool else None,
                    )
                    raw_written = True
            f.flush()
            while time.time() < started + interval:
                if parent is not None and os.getppid() != parent:
                    return 0  # the task that started us is gone (Slurm's step ended)
                if power and time.time() >= next_power:
                    next_power += power_every
                    if next_power < time.time():  # fell behind: no burst to catch up
                        next_power = time.time() + power_every
                    sample_power()
                wake = started + interval if not power else min(started + interval, next_power)
                time.sleep(min(0.5, max(0.01, wake - time.time())))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
