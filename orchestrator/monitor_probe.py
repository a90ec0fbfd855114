"""The node-side monitor sampler: standard library only, Python 3.8, sent as `python3 -c SOURCE`.

Appends one JSON line per sample to OUT, every INTERVAL seconds, until it is killed (the run's
stop kills every process carrying ORCHESTRATOR_RUN_ID), the folder holding OUT disappears, or
(with "follow_parent": true) the process that started it exits:

    {"ts": 1768385700.1, "metric": "host_cpu_util_percent", "value": 37.5, "device": null}

Host metrics come from /proc; accelerator metrics from the vendor tool named in the argument
JSON: {"out": PATH, "interval_s": 5, "tool": ["nvidia-smi", "--query-gpu=...", ...] or null,
"columns": ["index", "device_mem_used_mib", ...] or null}. A missing tool is recorded once as
metric "monitor_tool_missing"; a tool whose output has no known columns is recorded once as
{"metric": "monitor_raw", "text": ...}. Nothing here ever stops the run.
"""

import json
import os
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


def tool_rows(argv, columns, timeout):
    """[(metric, value, device)] from one call of the tool, or raw text when columns is None."""
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        text=True,
    )
    if columns is None or done.returncode != 0:
        return None, done.stdout[-4000:]
    return parse_rows(done.stdout, columns), None


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


def main(args):
    out = args["out"]
    interval = float(args.get("interval_s") or 5.0)
    tool = args.get("tool") or None
    columns = args.get("columns")
    folder = os.path.dirname(out) or "."
    have_tool = tool is not None and shutil.which(tool[0]) is not None
    # With "follow_parent", stop when the parent exits: under Slurm the sampler runs beside
    # torchrun in one task, and a step killed whole must not leave it behind.
    parent = os.getppid() if args.get("follow_parent") else None
    raw_written = False
    previous = cpu_times()

    with open(out, "a") as f:

        def write(metric, value, device=None, **extra):
            doc = {"ts": round(time.time(), 3), "metric": metric, "value": value, "device": device}
            doc.update(extra)
            f.write(json.dumps(doc) + "\n")

        if not have_tool:
            write("monitor_tool_missing", 1, tool=tool[0] if tool else None)
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
                    samples, raw = tool_rows(tool, columns, max(2.0, interval * 2))
                except (OSError, subprocess.SubprocessError) as exc:
                    samples, raw = None, f"{type(exc).__name__}: {exc}"
                for metric, value, device in samples or ():
                    write(metric, value, device)
                if samples is None and not raw_written:
                    write("monitor_raw", 1, text=raw)
                    raw_written = True
            f.flush()
            while time.time() < started + interval:
                if parent is not None and os.getppid() != parent:
                    return 0  # the task that started us is gone (Slurm's step ended)
                time.sleep(min(0.5, max(0.05, started + interval - time.time())))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
