"""Energy per image from recorded power outputs: the sampler's parsers on nvidia-smi's and
mx-smi's power and on ipmitool's DCMI reading (tests/fixtures/monitors/README.md says where
each format comes from), the trapezoid over the training window, MLPerf Power's coverage and
its warning, and what publishing stores."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator import monitor
from orchestrator.energy import coverage, coverage_warnings, run_energy, trapezoid
from orchestrator.monitor import Sample
from orchestrator.runfolder.folder import read_run_folder
from orchestrator.store import open_store
from orchestrator.store.metrics import training_window

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "monitors"
RUN_1X8 = "20260113-101500-1x8-metax"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_power_outputs_parse_to_watts_per_device_and_per_node() -> None:
    nvidia = monitor.parse_tool_output("nvidia-smi-power", _read("nvidia-smi-power.csv"))
    assert nvidia == [("device_power_w", 312.45, 0), ("device_power_w", 298.10, 1)]  # [N/A] out
    metax = monitor.parse_tool_output("mx-smi-power", _read("mx-smi-board-power.txt"))
    assert metax == [("device_power_w", 386.81, 0), ("device_power_w", 371.43, 1)]
    bmc = monitor.parse_tool_output("ipmitool", _read("ipmitool-dcmi-power-reading.txt"))
    assert bmc == [("node_power_w", 2158.0, None)]
    # the memory parser does not take the power lines for memory, nor the reverse
    assert monitor.parse_tool_output("mx-smi", _read("mx-smi-board-power.txt")) == []
    assert monitor.parse_tool_output("mx-smi-power", _read("mx-smi-show-memory.txt")) == []
    no_reading = "    Instantaneous power reading:              Not available\n"
    assert monitor.parse_tool_output("ipmitool", no_reading) == []


def test_the_sampler_gets_a_power_query_at_two_hertz_and_the_bmc_only_where_configured() -> None:
    nvidia = monitor.sampler_args(["/usr/bin/nvidia-smi"], "/o", 5.0)
    assert nvidia["power"] == {
        "tool": [
            "/usr/bin/nvidia-smi",
            "--query-gpu=index,power.draw",
            "--format=csv,noheader,nounits",
        ],
        "format": "csv-power",
        "interval_s": 0.5,
    }
    assert "bmc" not in nvidia
    metax = monitor.sampler_args(["mx-smi"], "/o", 5.0, bmc_power=True)
    assert metax["power"]["tool"] == ["mx-smi", "--show-board-power"]
    assert metax["bmc"]["tool"] == ["ipmitool", "dcmi", "power", "reading"]
    assert "power" not in monitor.sampler_args([], "/o", 5.0)  # the cpu profile: no tool


def test_trapezoid_integrates_inside_the_window_and_interpolates_its_edges() -> None:
    points = [(0.0, 100.0), (10.0, 300.0)]
    assert trapezoid(points, 0.0, 10.0) == pytest.approx(2000.0)  # mean 200 W x 10 s
    # the window 5..10: 200 W at 5 s (interpolated) to 300 W
    assert trapezoid(points, 5.0, 10.0) == pytest.approx(1250.0)
    # past the last sample the series is held at it: 300 W x 5 s more
    assert trapezoid(points, 0.0, 15.0) == pytest.approx(3500.0)
    assert trapezoid([], 0.0, 10.0) == 0.0


def test_coverage_counts_the_windows_seconds_that_hold_a_sample() -> None:
    assert coverage([0.1 + 0.5 * i for i in range(20)], 0.0, 10.0) == 1.0
    assert coverage([0.5, 3.5, 6.5, 9.5], 0.0, 10.0) == pytest.approx(0.4)  # every third second
    assert coverage([], 0.0, 10.0) == 0.0


def _series(
    node: str, metric: str, device: int | None, start: float, every: float, watts: float, n: int
) -> list[Sample]:
    return [
        Sample(datetime.fromtimestamp(start + i * every, timezone.utc), metric, watts, device)
        for i in range(n)
    ]


def test_run_energy_sums_the_runs_devices_and_prefers_the_bmc() -> None:
    start = 1_000.0
    samples = {
        "a": _series("a", "device_power_w", 0, start, 0.5, 300.0, 21)
        + _series("a", "device_power_w", 1, start, 0.5, 100.0, 21)
        + _series("a", "device_power_w", 7, start, 0.5, 999.0, 21),  # not the run's device
    }
    energy = run_energy(samples, start, start + 10.0, {"a": [0, 1]})
    assert energy is not None
    assert energy.device_j == pytest.approx(4000.0) and energy.node_j is None
    assert energy.joules == pytest.approx(4000.0) and energy.coverage == 1.0
    assert energy.per_image(800) == pytest.approx(5.0)
    assert coverage_warnings(energy) == []
    samples["a"] += _series("a", "node_power_w", None, start, 0.5, 1_000.0, 21)
    with_bmc = run_energy(samples, start, start + 10.0, {"a": [0, 1]})
    assert with_bmc is not None and with_bmc.joules == pytest.approx(10_000.0)
    assert with_bmc.device_j == pytest.approx(4000.0)


def test_a_sparse_series_gives_a_coverage_warning_naming_it() -> None:
    start = 2_000.0
    samples = {
        "a": _series("a", "device_power_w", 0, start, 0.5, 200.0, 41),
        "b": _series("b", "device_power_w", 0, start + 0.5, 5.0, 200.0, 4),  # every 5 s
    }
    energy = run_energy(samples, start, start + 20.0, {"a": [0], "b": [0]})
    assert energy is not None and energy.coverage == pytest.approx(0.2)
    (warning,) = coverage_warnings(energy)
    assert warning.startswith("energy from sparse power samples: 1 series below one sample per")
    assert "b device 0 20%" in warning and "a device" not in warning


def test_publishing_stores_energy_per_image_and_warns_on_sparse_power(
    sqlite_url: str, fixture_runs: Path, tmp_path: Path
) -> None:
    folder = tmp_path / RUN_1X8
    shutil.copytree(fixture_runs / RUN_1X8, folder)
    start, end = training_window(read_run_folder(folder).ranks)
    # mx-smi's recorded board power for devices 0 and 1, every 0.5 s (device 1 every 3 s)
    watts = dict(
        (d, w)
        for _, w, d in monitor.parse_tool_output("mx-smi-power", _read("mx-smi-board-power.txt"))
    )
    lines = []
    t = start - 1.0
    while t <= end + 1.0:
        lines.append(
            {"ts": round(t, 3), "metric": "device_power_w", "value": watts[0], "device": 0}
        )
        if int((t - start) * 2) % 6 == 0:
            lines.append(
                {"ts": round(t, 3), "metric": "device_power_w", "value": watts[1], "device": 1}
            )
        t += 0.5
    node_dir = folder / "nodes" / "me-node1"
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "monitor.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with open_store(sqlite_url, create=True) as store:
        store.ingest([folder])
        with store.reading() as conn:
            row = conn.execute(
                text(
                    "SELECT energy_j, energy_per_image_j, power_coverage, energy, warnings, global_images FROM runs"
                )
            ).one()
    energy_j, per_image, cov, detail, warnings, images = row
    window = end - start
    assert energy_j == pytest.approx((watts[0] + watts[1]) * window, rel=1e-3)
    assert per_image == pytest.approx(energy_j / images)
    assert cov == pytest.approx(1 / 3, abs=0.02)
    detail = json.loads(detail) if isinstance(detail, str) else detail
    assert [(s["device"], s["metric"]) for s in detail["series"]] == [
        (0, "device_power_w"),
        (1, "device_power_w"),
    ]
    warnings = json.loads(warnings) if isinstance(warnings, str) else warnings
    assert any("me-node1 device 1 3" in w for w in warnings), warnings
    assert not any("device 0 " in w for w in warnings)


def test_the_real_sampler_reads_power_twice_a_second_and_the_bmc(tmp_path: Path) -> None:
    """The node-side sampler with an nvidia-smi and an ipmitool that replay the recorded
    outputs: its memory query keeps its 5 s clock, power comes every 0.5 s, so every second of
    a 3-second window holds a sample of each series."""
    import os
    import stat
    import subprocess
    import sys
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    replies = {
        "nvidia-smi": 'case "$1" in --query-gpu=index,power.draw) cat "{power}";; *) cat "{full}";; esac',
        "ipmitool": 'cat "{bmc}"',
    }
    for name, body in replies.items():
        tool = bin_dir / name
        script = body.format(
            power=FIXTURES / "nvidia-smi-power.csv",
            full=FIXTURES / "nvidia-smi-query-gpu.csv",
            bmc=FIXTURES / "ipmitool-dcmi-power-reading.txt",
        )
        tool.write_text(f"#!/bin/sh\n{script}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "run" / monitor.MONITOR_FILE
    out.parent.mkdir()
    argv = monitor.sampler_argv(sys.executable, ["nvidia-smi"], str(out), 5.0, [0, 1], True)
    started = time.time()
    proc = subprocess.Popen(argv, env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    try:
        time.sleep(3.6)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    samples = monitor.parse_samples(out.read_text(), str(out))
    power0 = [d for d in docs if d["metric"] == "device_power_w" and d["device"] == 0]
    bmc = [d for d in docs if d["metric"] == "node_power_w"]
    memory = [d for d in docs if d["metric"] == "device_mem_used_bytes"]
    assert {d["value"] for d in power0} == {312.45} and {d["value"] for d in bmc} == {2158.0}
    assert len(memory) == 2  # devices 0 and 1, once: the 5 s clock
    assert len(power0) >= 6 and len(bmc) >= 6  # >= 2 Hz over 3.6 s (the full query adds one)
    energy = run_energy({"n": samples}, started + 0.5, started + 3.5, {"n": [0, 1]})
    assert energy is not None and energy.coverage == 1.0
    assert energy.node_j == pytest.approx(2158.0 * 3.0)
    assert energy.device_j == pytest.approx((312.45 + 298.10) * 3.0)
