"""bench/gpu_check.sh without a GPU: its dry run and usage errors; the verdicts of
bench/gpu_check_report.py on recorded GPU-like and CPU-like results, each check made to fail; the
report reading a real store; bench/gpu_check_deps.py installing from a wheelhouse with no index.
The GPU run itself: docs/gpu.md. The CPU run end to end in a venv holding only torch: also there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.support.store_fixtures import RUN_1X1

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
GIB = 1 << 30
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _module("gpu_check_report")
deps = _module("gpu_check_deps")


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_dry_run_without_cuda_plans_the_cpu_settings_and_leaves_nothing(tmp_path: Path) -> None:
    done = _script("--dry-run", "--python", sys.executable, "--wheelhouse", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    head = lines[0].split()
    assert head[:4] == ["==", "gpu", "check", "in"] and "CUDA no," in lines[0]
    assert not Path(head[4].rstrip(":")).exists()  # the scratch folder is removed
    steps = [line for line in lines if line.startswith("+ ")]
    assert "gpu_check_deps.py --wheelhouse " + str(tmp_path) in steps[0]
    assert "workload.faster_rcnn.synth" in steps[1] and "--images 2" in steps[1]
    submits = [s for s in steps if " submit 1x1 " in s]
    assert [s.split("--precision ")[1].split()[0] for s in submits] == ["fp32"]
    for part in ("--set epochs=3", "--set eval=false", "--set min_size=64", "--timeout 300s"):
        assert all(part in s for s in submits), part
    assert "gpu_check_probe.py" in steps[-2] and "--cuda 0" in steps[-1]
    assert "--require-cuda" not in steps[-1]


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = {
        ("--frobnicate",): "error: unknown option --frobnicate (see --help)\n",
        ("--python",): "error: --python needs a value (see --help)\n",
        ("--python", "/no/python"): "error: no Python /no/python on PATH "
        "(pass --python /path/to/python3)\n",
        ("--python", sys.executable, "--wheelhouse", str(tmp_path / "none")): (
            f"error: no wheelhouse at {tmp_path / 'none'} "
            "(scripts/make-gpu-wheelhouse.sh; docs/gpu.md)\n"
        ),
    }
    for args, error in cases.items():
        done = _script(*args)
        assert (done.returncode, done.stderr, done.stdout) == (2, error, ""), args


def _record(precision: str, epoch_ms: List[float], **change: Any) -> Dict[str, Any]:
    """A GPU-like run: 4 epochs of 32 iterations at epoch_ms per iteration, device samples every
    0.5 s through its training window."""
    epochs = [
        {
            "iterations": 32,
            "images": 64,
            "core_s": ms * 32 / 1000,
            "loss": 1.5,
            "skipped_steps": 2 if precision == "amp" else 0,
        }
        for ms in epoch_ms
    ]
    doc = {
        "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"},
        "memory": {"peak_reserved_bytes": int(8.5 * GIB)},
        "epochs": epochs,
        "timings": {"start_unix": 1000.0, "init_s": 20.0, "train_s": 12.0},
        "samples": {"rank_iterations": 32 * len(epochs)},
        "throughput": {"p_core": 64 * len(epochs) / sum(e["core_s"] for e in epochs)},
    }
    run = {
        "run_id": f"r-{precision}",
        "status": "succeeded",
        "reason": None,
        "mem_used_bytes": int(9.3 * GIB),
        "mem_total_bytes": 80 * GIB,
        "mem_source": "device",
    }
    ts = [1020.0 + 0.5 * k for k in range(25)]  # 1020 .. 1032: the training window
    record = {"run": run, "rank0": doc, "metrics": ["device_mem_used_bytes"], "device0_mem_ts": ts}
    for key, value in change.items():  # run__status=..., doc__memory=..., device0_mem_ts=...
        section, _, field = key.partition("__")
        if field:
            (doc if section == "doc" else record[section])[field] = value
        else:
            record[section] = value
    return record


GPU_RUNS = {
    "fp32": _record("fp32", [400.0, 100.0, 101.0, 99.0]),
    "amp": _record("amp", [300.0, 60.0, 61.0, 60.0]),
    "fp16": _record("fp16", [300.0, 55.0, 55.0, 56.0]),
}
PROBE = {
    "cuda": {
        "name": "NVIDIA H100 80GB HBM3",
        "count": 1,
        "version": "12.8",
        "total_mem_bytes": 80 * GIB,
    },
    "torch": "2.11.0",
    "kernel": {"synced_wall_s": 0.112, "gpu_s": 0.110, "unsynced_wall_s": 0.004},
    "core": [
        {"precision": p, "iterations": 12, "gpu_s": 12 * ms / 1000, "unsynced_wall_s": 12 * 0.03}
        for p, ms in (("fp32", 98.0), ("amp", 58.0), ("fp16", 54.0))
    ],
}


def _verdicts(checks: List[Any]) -> Dict[str, str]:
    return {c.name: c.verdict for c in checks}


def test_a_good_gpu_run_passes_every_check_with_its_values() -> None:
    checks = report.all_checks(GPU_RUNS, PROBE, True, True, 300.0)
    assert {c.verdict for c in checks} == {"PASS"}, [
        c.line() for c in checks if c.verdict != "PASS"
    ]
    assert len(checks) == 1 + 3 * 6 + 3
    lines = {c.name: c.line() for c in checks}
    assert lines["warm-up excluded fp32"].startswith(
        "PASS: warm-up excluded fp32: p_core 20.00 img/s over 3 epochs after the first (>= 2): "
        "96 iterations, 9.6 s; over all iterations 11.43 img/s"
    )
    assert "25 nvidia-smi memory samples of device 0 inside the 12.0 s" in lines["monitor amp"]
    assert "gap 0.80 GiB" in lines["memory fp16"]
    assert "8 step(s) skipped for overflow" in lines["run amp"]


def test_each_check_fails_on_its_own_planted_fault() -> None:
    def one(name: str, runs: Dict[str, Any] = GPU_RUNS, probe: Dict[str, Any] = PROBE) -> str:
        """The values of check `name`, which must be the only one to fail."""
        checks = report.all_checks(runs, probe, True, True, 300.0)
        failed = [c.name for c in checks if c.verdict == "FAIL"]
        assert failed == [name], [c.line() for c in checks if c.verdict == "FAIL"]
        return next(c.values for c in checks if c.name == name)

    def with_amp(**change: Any) -> Dict[str, Any]:
        return {**GPU_RUNS, "amp": _record("amp", [300.0, 60.0, 61.0, 60.0], **change)}

    assert "runs elsewhere: amp on cpu" in one("cuda", with_amp(doc__device={"type": "cpu"}))
    nan = [{**e, "loss": None} for e in GPU_RUNS["amp"]["rank0"]["epochs"]]
    assert "'-'" in one("run amp", with_amp(doc__epochs=nan))
    # one epoch after the warm-up: too few to measure p_core or a steady pace on
    failed = report.precision_checks("amp", _record("amp", [300.0, 60.0]), True, PROBE["core"][1])
    assert [c.verdict for c in failed] == ["PASS", "FAIL", "FAIL", "PASS", "PASS", "PASS"]
    assert "over 1 epochs after the first (>= 2)" in failed[1].values
    still_warming = {**GPU_RUNS, "amp": _record("amp", [300.0, 90.0, 61.0, 60.0])}
    assert "slowest / fastest 1.50" in one("steady after warm-up amp", still_warming)
    assert "mem_source allocator" in one("memory amp", with_amp(run__mem_source="allocator"))
    assert "gap -0.50 GiB" in one(
        "memory amp", with_amp(doc__memory={"peak_reserved_bytes": int(9.8 * GIB)})
    )
    outside = [1019.0] * 10 + [1021.0, 1022.0, 1023.0, 1024.0] + [1033.0] * 10
    assert "4 nvidia-smi memory samples" in one("monitor amp", with_amp(device0_mem_ts=outside))
    missing = ["monitor_tool_missing", "device_mem_used_bytes"]
    assert "monitor_tool_missing recorded" in one("monitor amp", with_amp(metrics=missing))
    # a core_s clock read before the device finished: 60 ms against the probe's 80 ms
    slow = {
        **PROBE,
        "core": [
            {**c, "gpu_s": 12 * 0.080} if c["precision"] == "amp" else c for c in PROBE["core"]
        ],
    }
    assert "60.3 ms/iteration >= 0.8 x the probe's CUDA events 80.0 ms" in one(
        "synchronised core_s amp", probe=slow
    )
    no_wait = {**PROBE, "kernel": {**PROBE["kernel"], "synced_wall_s": 0.05}}
    assert "wall with it 50.0 ms" in one("DeviceOps.synchronize", probe=no_wait)
    blind = {**PROBE, "kernel": {**PROBE["kernel"], "unsynced_wall_s": 0.1}}
    assert "without it 100.0 ms" in one("DeviceOps.synchronize", probe=blind)
    slow_amp = {**GPU_RUNS, "amp": _record("amp", [300.0, 130.0, 131.0, 130.0])}
    assert "fp32 20.0, amp 15.3, fp16 36.1 img/s" in one("throughput order", slow_amp)
    over = report.all_checks(GPU_RUNS, PROBE, True, True, 481.0)
    assert [c.line() for c in over if c.verdict == "FAIL"] == [
        "FAIL: time budget: 481 s from start to report (<= 480 s)"
    ]


def test_without_cuda_gpu_checks_are_skipped_never_passed() -> None:
    cpu_runs = {
        p: _record(
            p,
            [9000.0, 4000.0, 6000.0],  # a busy CPU's epochs: not steady, and not checked for it
            doc__device={"type": "cpu", "name": "Xeon"},
            run__mem_source="allocator",
            metrics=["monitor_tool_missing"],
            device0_mem_ts=[],
        )
        for p in ("fp32",)
    }
    checks = report.all_checks(cpu_runs, {"cuda": None}, False, False, 200.0)
    verdicts = _verdicts(checks)
    assert [n for n, v in verdicts.items() if v == "PASS"] == ["run fp32", "warm-up excluded fp32"]
    skipped = [c for c in checks if c.verdict == "SKIP"]
    assert len(skipped) == len(checks) - 2 and all("skipped: no CUDA" in c.values for c in skipped)
    assert {"run amp", "run fp16", "memory fp32", "monitor fp32", "steady after warm-up fp32"} <= {
        c.name for c in skipped
    }
    assert report.cuda_check(False, None, cpu_runs, True).line() == "FAIL: cuda: skipped: no CUDA"
    failed = {"fp32": _record("fp32", [1.0], run__status="failed", run__reason="boom")}
    lines = [c.line() for c in report.all_checks(failed, None, False, False, 1.0)]
    assert "FAIL: run fp32: r-fp32 failed: boom" in lines
    assert "SKIP: warm-up excluded fp32: run fp32 failed" in lines


def test_the_report_reads_a_real_store_and_counts_samples_inside_training(
    sqlite_store: Any, sqlite_url: str, run_copy: Any, tmp_path: Path
) -> None:
    folder = run_copy(RUN_1X1)  # an amp run; rank 0 trains 52.351 s after 1768212900.0
    node = json.loads((folder / "manifest.json").read_text())["nodes"][0]["name"]
    start = 1768212900.0 + 52.351
    stamps = [start - 5, start + 1, start + 2, start + 3, start + 4, start + 5, start + 9999]
    lines = [
        {"ts": ts, "metric": "device_mem_used_bytes", "value": 30.0 * GIB, "device": 0}
        for ts in stamps
    ]
    (folder / "nodes" / node / "monitor.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines)
    )
    sqlite_store.ingest([folder])
    store_file = sqlite_url.removeprefix("sqlite:///")
    runs = report.load_runs(store_file)
    assert list(runs) == ["amp"] and runs["amp"]["rank0"]["run_id"] == RUN_1X1
    assert runs["amp"]["device0_mem_ts"] == stamps  # stored as UTC, read back as the same times
    assert report.monitor_check("amp", runs["amp"]).verdict == "PASS"  # 5 inside the window
    pre = tmp_path / "pre.txt"
    pre.write_text("PASS: deps: all there\nFAIL: data: synth failed\n")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_check_report.py"),
            "--store",
            store_file,
            "--cuda",
            "0",
            "--pre",
            str(pre),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout.splitlines()
    assert done.returncode == 1 and out[:2] == ["PASS: deps: all there", "FAIL: data: synth failed"]
    assert "FAIL: run fp32: no run in the store" in out
    assert out[-1] == "SUMMARY: 24 checks: 1 passed, 2 failed, 21 skipped"


def _wheel(folder: Path, name: str, module: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}.py", "VALUE = 42\n")
        zf.writestr(
            f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
        )
        zf.writestr(
            f"{name}-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


def test_deps_installs_only_the_missing_wheels_without_an_index(tmp_path: Path) -> None:
    house = tmp_path / "wheelhouse"
    _wheel(house / TAG, "gpucheck_demo", "gpucheck_demo")
    _wheel(house / TAG, "SQLAlchemy", "sqlalchemy_shadow")  # installed here already: not again
    target = tmp_path / "site"
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/none"}  # an index would fail
    argv = [sys.executable, str(REPO / "bench" / "gpu_check_deps.py"), "--wheelhouse", str(house)]
    done = subprocess.run(
        [*argv, "--target", str(target)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(
        f"PASS: deps: pip installed 1 wheel(s) with --no-index --no-deps from {house / TAG} "
        f"into {target} (gpucheck-demo); 1 already present;"
    )
    assert (target / "gpucheck_demo.py").read_text() == "VALUE = 42\n"
    assert not (target / "sqlalchemy_shadow.py").exists()
    again = subprocess.run(
        [*argv, "--target", str(target)], capture_output=True, text=True, timeout=300
    )
    assert "nothing to install" in again.stdout and "2 already present" in again.stdout
    empty = subprocess.run(
        [*argv, "--target", str(target / "x"), "--wheelhouse", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert empty.returncode == 1 and empty.stdout.startswith(
        f"FAIL: deps: no wheels in {tmp_path / TAG}"
    )
    assert "scripts/make-gpu-wheelhouse.sh --python-version" in empty.stdout


def test_deps_unpacks_wheels_where_python_has_no_pip(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w", "gpucheck_demo", "gpucheck_demo")
    with zipfile.ZipFile(wheel, "a") as zf:  # platlib files under NAME.data/ land in the root
        zf.writestr("gpucheck_demo-1.0.data/platlib/gpucheck_native.py", "NATIVE = 1\n")
        zf.writestr("gpucheck_demo-1.0.data/scripts/tool", "#!/bin/sh\n")
    deps.unpack([wheel], tmp_path / "site")
    assert (tmp_path / "site" / "gpucheck_demo.py").exists()
    assert (tmp_path / "site" / "gpucheck_native.py").read_text() == "NATIVE = 1\n"
    assert not (tmp_path / "site" / "tool").exists()
    assert deps.dist_name(wheel) == "gpucheck-demo"


@pytest.mark.torch
def test_the_probe_times_the_workloads_core_step_on_the_runs_shapes(monkeypatch: Any) -> None:
    """On the CPU, with a clock in place of CUDA events: the model, precision and image shapes
    that the GPU run's probe uses (the events themselves need the GPU)."""
    import argparse

    import torch

    probe = _module("gpu_check_probe")
    from workload.faster_rcnn.device import DeviceOps

    calls: List[int] = []

    def timed(fn: Any, ops: Any) -> Any:
        calls.append(1)
        fn()
        return 0.3, 0.2, 0.1

    monkeypatch.setattr(probe, "timed", timed)
    shapes = [tuple(im.shape) for ims, _ in probe.batches(torch.device("cpu"), 64) for im in ims]
    assert shapes == [(3, 64, 64)] * 6 + [(3, 64, 96)] * 2  # every fourth batch 3:2, as synth
    args = argparse.Namespace(size=64, max_size=96, iters=1, warmup=1)
    ops = DeviceOps(torch.device("cpu"))
    # fp32: amp on the CPU is bfloat16 autocast, minutes slower on a busy core
    assert probe.core_probe("fp32", ops, args) == {
        "precision": "fp32",
        "iterations": 1,
        "synced_wall_s": 0.3,
        "gpu_s": 0.2,
        "unsynced_wall_s": 0.1,
    }
    assert len(calls) == 2  # the warm-up iteration is run and not counted
