"""Monitors: the nvidia-smi and mx-smi parsers on recorded output, the node-side sampler run for
real on this machine, monitor.jsonl read into monitor_samples, and the run's mem from the device
peak during training (mem_source)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator import monitor
from orchestrator.errors import IngestError
from orchestrator.store.models import MonitorSample, Run
from orchestrator.workload_source import MONITOR_PROBE_PATH
from tests.support.store_fixtures import RUN_1X1

GIB = 1024**3
MIB = 1024**2
KIB = 1024
TOOL_OUTPUT = Path(__file__).resolve().parents[1] / "fixtures" / "monitors"  # README.md there
# From an 8 x A100 node with the sampling query of SAMPLING_QUERIES["nvidia-smi"].
NVIDIA_SMI_OUTPUT = (TOOL_OUTPUT / "nvidia-smi-query-gpu.csv").read_text()
MX_SMI_OUTPUT = (TOOL_OUTPUT / "mx-smi-show-memory.txt").read_text()


def test_nvidia_smi_output_is_parsed_into_metrics_with_units() -> None:
    samples = monitor.parse_tool_output("nvidia-smi", NVIDIA_SMI_OUTPUT)
    assert ("device_mem_used_bytes", 34519.0 * MIB, 0) in samples
    assert ("device_mem_total_bytes", 40960.0 * MIB, 1) in samples
    assert ("device_power_w", 298.10, 1) in samples
    assert ("device_temp_c", 61.0, 0) in samples
    assert ("device_util_percent", 97.0, 1) in samples
    assert not [s for s in samples if s[0] == "device_power_w" and s[2] == 2]  # [N/A] skipped
    assert len(samples) == 5 + 5 + 4


def test_mx_smi_memory_output_is_parsed_per_device_in_bytes() -> None:
    samples = monitor.parse_tool_output("mx-smi", MX_SMI_OUTPUT)
    assert samples == [
        ("device_mem_total_bytes", 67108864.0 * KIB, 0),
        ("device_mem_used_bytes", 46661632.0 * KIB, 0),
        ("device_mem_total_bytes", 67108864.0 * KIB, 1),
        ("device_mem_used_bytes", 45613056.0 * KIB, 1),
        # device 2 prints only vis_vram lines: they stand in for vram
        ("device_mem_total_bytes", 67108864.0 * KIB, 2),
        ("device_mem_used_bytes", 858624.0 * KIB, 2),
    ]
    assert 67108864 * KIB == 64 * GIB
    assert monitor.parse_tool_output("mx-smi", "mx-smi: no device found\n") == []


def test_sampler_args_are_table_driven_by_tool_name() -> None:
    nvidia = monitor.sampler_args(["/usr/bin/nvidia-smi", "--query-gpu=index,name"], "/o", 5.0)
    assert nvidia["tool"][0] == "/usr/bin/nvidia-smi"
    assert nvidia["tool"][1].startswith("--query-gpu=index,memory.used,memory.total,power.draw")
    assert nvidia["columns"][0] == ["index", 1.0]
    metax = monitor.sampler_args(["/opt/mxdriver/bin/mx-smi"], "/o", 5.0)
    assert metax["tool"] == ["/opt/mxdriver/bin/mx-smi", "--show-memory"]
    assert metax["format"] == "mx-smi-memory"
    unknown = monitor.sampler_args(["xpu-smi"], "/o", 5.0)
    assert unknown["tool"] == ["xpu-smi"] and unknown["columns"] is None  # raw output, once
    none = monitor.sampler_args([], "/o", 1.0)
    assert none["tool"] is None and none["interval_s"] == 1.0


def _run_sampler(tmp_path: Path, args: dict[str, Any], seconds: float, path: str) -> list[dict]:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    out = folder / monitor.MONITOR_FILE
    argv = monitor.sampler_argv(sys.executable, [], str(out), 0.2)
    argv[-1] = json.dumps({**args, "out": str(out), "interval_s": 0.2})
    proc = subprocess.Popen(argv, env={**os.environ, "PATH": path})
    try:
        time.sleep(seconds)
        assert proc.poll() is None  # runs until stopped
    finally:
        proc.terminate()
        proc.wait(10)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_sampler_without_the_tool_records_host_metrics_and_a_missing_marker(
    tmp_path: Path,
) -> None:
    docs = _run_sampler(
        tmp_path, {"tool": ["nvidia-smi"], "columns": None}, 1.2, str(tmp_path / "empty")
    )
    assert docs[0]["metric"] == monitor.TOOL_MISSING and docs[0]["tool"] == "nvidia-smi"
    cpu = [d["value"] for d in docs if d["metric"] == "host_cpu_util_percent"]
    mem = [d["value"] for d in docs if d["metric"] == "host_mem_used_bytes"]
    assert len(mem) >= 3 and all(v > 0 for v in mem)
    assert cpu and all(0 <= v <= 100 for v in cpu)
    assert [d for d in docs if d["metric"] == monitor.TOOL_MISSING] == docs[:1]


def test_sampler_reads_the_tool_every_interval_and_stops_when_its_folder_goes(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"  # replays the recorded output: the sampler's loop is real
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{NVIDIA_SMI_OUTPUT}EOF\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    args = monitor.sampler_args(["nvidia-smi"], "", 0.2)
    docs = _run_sampler(tmp_path, args, 1.0, f"{bin_dir}:/usr/bin:/bin")
    used = [d for d in docs if d["metric"] == "device_mem_used_bytes" and d["device"] == 0]
    assert len(used) >= 3 and used[0]["value"] == 34519 * MIB
    # One round of samples: every column of the tool's line, in its unit (bytes, W, C, %).
    first: dict[tuple[int, str], float] = {}
    for d in docs:
        if d["device"] in (0, 2):
            first.setdefault((d["device"], d["metric"]), d["value"])
    assert first == {
        (0, "device_mem_used_bytes"): 34519 * MIB,
        (0, "device_mem_total_bytes"): 40960 * MIB,
        (0, "device_power_w"): 312.45,
        (0, "device_temp_c"): 61.0,
        (0, "device_util_percent"): 98.0,
        (2, "device_mem_used_bytes"): 1 * MIB,
        (2, "device_mem_total_bytes"): 40960 * MIB,
        (2, "device_temp_c"): 33.0,
        (2, "device_util_percent"): 0.0,
    }  # device 2's power is [N/A]: no sample rather than a made-up 0
    assert monitor.TOOL_MISSING not in {d["metric"] for d in docs}

    folder = tmp_path / "gone"
    folder.mkdir()
    argv = monitor.sampler_argv(sys.executable, [], str(folder / monitor.MONITOR_FILE), 0.1)
    proc = subprocess.Popen(argv)
    time.sleep(0.5)
    (folder / monitor.MONITOR_FILE).unlink()
    folder.rmdir()
    assert proc.wait(10) == 0  # the run folder was collected and removed: the sampler ends


def test_sampler_reads_mx_smi_into_device_memory_samples(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mx-smi"  # replays the recorded output for --show-memory only
    tool.write_text(
        f"#!/bin/sh\n[ \"$1\" = --show-memory ] || exit 3\ncat <<'EOF'\n{MX_SMI_OUTPUT}EOF\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    args = monitor.sampler_args(["mx-smi"], "", 0.2)
    docs = _run_sampler(tmp_path, args, 0.8, f"{bin_dir}:/usr/bin:/bin")
    used = {d["device"]: d["value"] for d in docs if d["metric"] == "device_mem_used_bytes"}
    assert used == {0: 46661632 * KIB, 1: 45613056 * KIB, 2: 858624 * KIB}
    assert not [d for d in docs if d["metric"] in (monitor.TOOL_MISSING, monitor.RAW_OUTPUT)]


def test_parse_samples_skips_a_cut_last_line_and_names_a_bad_one() -> None:
    text = (
        '{"ts": 1768385700.5, "metric": "host_mem_used_bytes", "value": 5e9, "device": null}\n'
        '{"ts": 1768385700.5, "metric": "monitor_raw", "value": 1, "device": null, "text": "x"}\n'
        '{"ts": 1768385701.5, "metric": "device_power_w", "value": 300.5, "device": 3}\n'
        '{"ts": 17683857'
    )
    samples = monitor.parse_samples(text, "m.jsonl")
    assert [(s.metric, s.value, s.device) for s in samples] == [
        ("host_mem_used_bytes", 5e9, None),
        ("device_power_w", 300.5, 3),
    ]
    assert samples[0].ts.timestamp() == 1768385700.5
    with pytest.raises(IngestError, match="m.jsonl: line 1 is not JSON"):
        monitor.parse_samples("nope\n{}\n", "m.jsonl")
    with pytest.raises(IngestError, match="line 1 needs ts, metric"):
        monitor.parse_samples('{"metric": "x"}\n', "m.jsonl")


def _samples_file(folder: Path, node: str, lines: list[dict]) -> None:
    path = folder / "nodes" / node / monitor.MONITOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))


# RUN_1X1's rank 0 trains from start_unix + init_s to that + train_s (its rank file).
TRAIN_START = 1768212900.0 + 52.351
TRAIN_END = TRAIN_START + 3547.609


def _mem_of(store: Any, run_id: str) -> tuple[Any, ...]:
    with store.reading() as conn:
        row = conn.execute(
            select(Run.mem_label, Run.mem_source, Run.mem_devices).where(Run.run_id == run_id)
        ).one()
    return tuple(row)


def test_ingest_stores_samples_and_takes_mem_from_the_device_peak_during_training(
    sqlite_store: Any, sqlite_url: str, run_copy: Any, run_cli: Any
) -> None:
    folder = run_copy(RUN_1X1)
    node = json.loads((folder / "manifest.json").read_text())["nodes"][0]["name"]
    ts = TRAIN_START + 10
    _samples_file(
        folder,
        node,
        [
            {"ts": ts, "metric": "host_cpu_util_percent", "value": 55.0, "device": None},
            {"ts": ts, "metric": "device_mem_used_bytes", "value": 20 * GIB, "device": 0},
            {"ts": ts, "metric": "device_mem_total_bytes", "value": 40 * GIB, "device": 0},
            {"ts": ts + 5, "metric": "device_mem_used_bytes", "value": 35.5 * GIB, "device": 0},
            {"ts": ts + 5, "metric": "device_mem_total_bytes", "value": 40 * GIB, "device": 0},
            # before training (the model loads) and after it: not the training peak
            {
                "ts": TRAIN_START - 1,
                "metric": "device_mem_used_bytes",
                "value": 39 * GIB,
                "device": 0,
            },
            {
                "ts": TRAIN_END + 1,
                "metric": "device_mem_used_bytes",
                "value": 39 * GIB,
                "device": 0,
            },
            # a card the 1x1 run did not use (another job's): not this run's memory
            {"ts": ts, "metric": "device_mem_used_bytes", "value": 39.5 * GIB, "device": 1},
        ],
    )
    sqlite_store.ingest([folder])
    with sqlite_store.reading() as conn:
        count = conn.scalar(select(func.count()).select_from(MonitorSample))
        cpu = conn.execute(
            select(MonitorSample.node_name, MonitorSample.device_index, MonitorSample.value).where(
                MonitorSample.metric == "host_cpu_util_percent"
            )
        ).all()
    assert count == 8
    # the SMI tool's peak wins over the rank's allocator peak (33.7 GiB reserved), as FlagPerf's mem
    assert _mem_of(sqlite_store, RUN_1X1) == (
        "35.5/40.0",
        "device",
        [{"node": node, "device": 0, "used_bytes": int(35.5 * GIB), "total_bytes": 40 * GIB}],
    )
    assert cpu == [(node, None, 55.0)]
    shown = run_cli("--db", sqlite_url, "runs", "show", RUN_1X1)
    assert shown.exit_code == 0, shown.err
    assert "mem_source" in shown.out and "device" in shown.out
    assert f"{node}/0 35.5/40.0" in shown.out  # mem_devices, GiB

    # The folder published again with one more sample: the series is replaced, not doubled.
    _samples_file(
        folder,
        node,
        [{"ts": ts + 10, "metric": "host_cpu_util_percent", "value": 60.0, "device": None}],
    )
    sqlite_store.ingest([folder])
    with sqlite_store.reading() as conn:
        assert conn.scalar(select(func.count()).select_from(MonitorSample)) == 1
    assert _mem_of(sqlite_store, RUN_1X1) == ("33.7/40.0", "allocator", None)


def test_without_a_device_sample_in_training_mem_is_the_allocator_peak(
    sqlite_store: Any, run_copy: Any
) -> None:
    folder = run_copy(RUN_1X1)
    node = json.loads((folder / "manifest.json").read_text())["nodes"][0]["name"]
    _samples_file(
        folder,
        node,
        [{"ts": TRAIN_END + 5, "metric": "device_mem_used_bytes", "value": 1.0 * GIB, "device": 0}],
    )
    sqlite_store.ingest([folder])
    assert _mem_of(sqlite_store, RUN_1X1) == ("33.7/40.0", "allocator", None)


def test_a_run_without_any_memory_figure_has_no_mem_source(
    sqlite_store: Any, run_copy: Any
) -> None:
    folder = run_copy(RUN_1X1)
    rank_file = folder / "ranks" / "rank-00000.json"
    doc = json.loads(rank_file.read_text())
    doc["memory"] = {"peak_allocated_bytes": None, "peak_reserved_bytes": None, "total_bytes": None}
    rank_file.write_text(json.dumps(doc))
    sqlite_store.ingest([folder])
    assert _mem_of(sqlite_store, RUN_1X1) == (None, None, None)


def test_samples_of_a_node_not_in_the_run_are_refused(sqlite_store: Any, run_copy: Any) -> None:
    folder = run_copy(RUN_1X1)
    _samples_file(folder, "stranger", [])
    with pytest.raises(IngestError, match="node 'stranger' is not in manifest.json"):
        sqlite_store.ingest([folder])


def test_a_sampler_that_follows_its_parent_is_ended_by_the_kernel_when_the_parent_ends(
    tmp_path: Path,
) -> None:
    # Under Slurm the sampler is started beside torchrun by the task's shell, which then execs
    # torchrun; when that process ends the sampler must end with it at once (PR_SET_PDEATHSIG),
    # not at its next look: a run's end that came first found it still running.
    out = tmp_path / monitor.MONITOR_FILE
    args = monitor.sampler_args([], str(out), 5.0)
    args["follow_parent"] = True
    probe = MONITOR_PROBE_PATH
    # the shell waits for the first sample (the sampler is set up), then ends; the driver, a
    # subreaper, inherits the orphan and reads how it ended
    shell = (
        f'"$0" {probe} {shlex.quote(json.dumps(args))} & while [ ! -s {out} ]; do sleep 0.05; done'
    )
    driver = (
        "import ctypes, os, subprocess, sys\n"
        "ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER\n"
        f"subprocess.run(['bash', '-c', {shell!r}, sys.executable], check=True)\n"
        "pid, status = os.wait()\n"
        "print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else 'exit')\n"
    )
    ended = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, check=True, timeout=30
    )
    assert ended.stdout.strip() == str(int(signal.SIGTERM)), ended
    assert "host_mem_used_bytes" in out.read_text()  # it did sample meanwhile
