"""bench/gpu_check.sh on the CPU path: its --dry-run prints the GPU check's commands and every
precision's plan and leaves nothing behind; its report's verdicts on recorded GPU-like and
CPU-like results (the GPU run itself: docs/gpu.md)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
GIB = 1 << 30


def _report_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gpu_check_report", REPO / "bench" / "gpu_check_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_dry_run_prints_the_three_submits_and_their_plans_and_leaves_nothing() -> None:
    done = _dry_run("--iters", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    found = re.search(r"^== gpu check in (\S+) ", out, re.MULTILINE)
    assert found is not None
    assert not Path(found.group(1)).exists()  # the dry run's scratch folder is removed
    submits = [
        line for line in out.splitlines() if line.startswith("+ ") and " submit 1x1 " in line
    ]
    assert [re.findall(r"--precision (\w+)", s) for s in submits] == [["fp32"], ["amp"], ["fp16"]]
    for line in submits:
        for part in (
            "--set max_iters=7",
            "--set min_size=800",
            "--set max_size=1333",
            "--set eval=false",
        ):
            assert part in line
    plans = [line for line in out.splitlines() if line.startswith("   |   command:")]
    assert len(plans) == 3
    for plan, precision in zip(plans, ("fp32", "amp", "fp16")):
        assert "CUDA_VISIBLE_DEVICES=0" in plan and "--nproc-per-node=1" in plan
        assert f"--precision {precision}" in plan and "--set max_iters=7" in plan
    assert "vendor nvidia" in out and "runtime host" in out  # the nvidia profile, host runtime
    assert (
        "--size 800" in out and "bench/gpu_check_probe.py" in out and "gpu_check_report.py" in out
    )


def test_bad_options_are_one_line_errors() -> None:
    done = _dry_run("--iters", "many")
    assert done.returncode == 2 and done.stderr == "error: --iters many is not a whole number\n"
    done = _dry_run("--frobnicate")
    assert done.returncode == 2 and "unknown option --frobnicate" in done.stderr


def _record(precision: str, **change: Any) -> dict[str, Any]:
    run = {
        "run_id": f"r-{precision}",
        "status": "succeeded",
        "reason": None,
        "p_core": 21.5,
        "mem_used_bytes": int(9.3 * GIB),
        "mem_total_bytes": 80 * GIB,
        "mem_source": "device",
    }
    doc = {
        "memory": {"peak_reserved_bytes": int(8.5 * GIB)},
        "epochs": [{"skipped_steps": 3}, {"skipped_steps": 0}],
        "timings": {"core_s": 6.2, "train_no_eval_s": 8.0},
        "samples": {"rank_iterations": 40},
    }
    record = {"run": run, "rank0": doc, "samples": {"device_mem_used_bytes": 55}}
    for key, value in change.items():  # run__status=..., doc__epochs=..., samples={...}
        section, _, field = key.partition("__")
        if not field:
            record[section] = value
            continue
        target = record[section] if section != "doc" else doc
        target[field] = value
    return record


def test_the_report_passes_a_gpu_run_and_fails_a_cpu_one() -> None:
    report = _report_module()
    checks = report.run_checks("amp", _record("amp"))
    assert [c.verdict for c in checks] == ["PASS"] * len(checks)
    text = "\n".join(c.line() for c in checks)
    assert "p_core 21.5 img/s" in text and "55 device memory samples parsed from nvidia-smi" in text
    assert "GradScaler skipped 3 step(s)" in text and "0.80 GiB above the allocator's" in text

    cpu = _record(
        "fp32",
        run__mem_source="allocator",
        doc__memory={"peak_reserved_bytes": None},
        samples={"monitor_tool_missing": 1},
    )
    failures = [c.what for c in report.run_checks("fp32", cpu) if c.verdict == "FAIL"]
    assert [f.split(": ", 1)[1] for f in failures] == [
        "no allocator peak in the rank file (not on a GPU?)",
        "no nvidia-smi sample in monitor_samples",
        "mem_source is allocator, not device",
    ]
    no_skips = _record("amp", doc__epochs=[{"skipped_steps": 0}])
    assert any(
        c.verdict == "WARN" and "skipped 0" in c.what for c in report.run_checks("amp", no_skips)
    )
    failed = _record("fp16", run__status="failed", run__reason="loss is nan")
    assert [c.line() for c in report.run_checks("fp16", failed)] == [
        "FAIL  fp16 (r-fp16): run failed: loss is nan"
    ]


def test_the_probe_check_needs_the_synchronised_clock_to_hold_the_gpu_time() -> None:
    report = _report_module()
    runs = {"fp32": _record("fp32")}
    synced = {
        "precision": "fp32",
        "iterations": 10,
        "synced_wall_s": 1.6,
        "gpu_s": 1.55,
        "unsynced_wall_s": 0.4,
    }
    assert [c.verdict for c in report.probe_checks([synced], runs)] == ["PASS", "PASS"]
    hidden = {**synced, "synced_wall_s": 0.4}  # a clock read before the device finished
    assert report.probe_checks([hidden], runs)[0].verdict == "FAIL"
