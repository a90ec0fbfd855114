"""The verdicts of bench/gpu_check.sh, from what its steps left: the SQLite store of its
`orchestrator submit 1x1` runs (fp32, amp, fp16), the probe's JSON (bench/gpu_check_probe.py) and
the verdict lines of the steps before (`--pre`). Prints one `PASS|FAIL|SKIP: check: values` line
per check and a summary line; exit status 1 when a check failed. Without CUDA the GPU-only
checks say `SKIP: ...: skipped: no CUDA`; with --require-cuda that is a FAIL. docs/gpu.md.

    python bench/gpu_check_report.py --store results.db --probe probe.json --cuda 1 \
        [--pre verdicts.txt] [--elapsed 312] [--require-cuda]

Standard library only: it runs where the control plane's own dependencies do not import.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

GIB = 1 << 30
PRECISIONS = ("fp32", "amp", "fp16")
NO_CUDA = "skipped: no CUDA"
# Thresholds, each a way for a check to fail (docs/gpu.md explains them).
MIN_STEADY_EPOCHS = 2  # epochs after the first (the warm-up) that p_core is measured over
STEADY_SPREAD = 1.25  # slowest / fastest steady epoch, per iteration: the warm-up is over
MIN_SAMPLES = 5  # nvidia-smi memory samples inside the training window
MAX_MEM_GAP = 4 * GIB  # nvidia-smi's device peak minus the allocator's reserved peak
KERNEL_SYNCED = 0.95  # DeviceOps.synchronize wall >= this x the CUDA events' time
KERNEL_UNSYNCED = 0.5  # ... while the wall without it stays under this x: the probe can tell
RUN_SYNCED = 0.8  # a run's core_s per iteration >= this x the probe's CUDA-event time
MIN_SPEED_VS_FP32 = 0.8  # amp and fp16 p_core >= this x fp32's
BUDGET_S = 480.0  # the whole check on one H100


@dataclass
class Check:
    verdict: str  # PASS, FAIL or SKIP
    name: str
    values: str

    def line(self) -> str:
        return f"{self.verdict}: {self.name}: {self.values}"


def passed(ok: bool, name: str, values: str) -> Check:
    return Check("PASS" if ok else "FAIL", name, values)


def parse_ts(value: Any) -> float:
    """A monitor_samples.ts (SQLite text, UTC) as Unix time."""
    ts = datetime.fromisoformat(str(value))
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


def load_runs(store: str) -> Dict[str, Dict[str, Any]]:
    """The newest run of each precision: its row, rank 0's document, its monitor samples."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    found: Dict[str, Dict[str, Any]] = {}
    try:
        for precision in PRECISIONS:
            run = conn.execute(
                "SELECT * FROM runs WHERE precision = ? ORDER BY submitted_at DESC LIMIT 1",
                (precision,),
            ).fetchone()
            if run is None:
                continue
            run_id = run["run_id"]
            rank = conn.execute(
                "SELECT document FROM rank_results WHERE run_id = ? AND rank = 0", (run_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT metric, ts, device_index FROM monitor_samples WHERE run_id = ?", (run_id,)
            ).fetchall()
            found[precision] = {
                "run": dict(run),
                "rank0": json.loads(rank["document"]) if rank else None,
                "metrics": sorted({r["metric"] for r in rows}),
                "device0_mem_ts": [
                    parse_ts(r["ts"])
                    for r in rows
                    if r["metric"] == "device_mem_used_bytes" and r["device_index"] == 0
                ],
            }
    finally:
        conn.close()
    return found


def steady(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The warm-up (first) epoch against the epochs after it, per iteration of core_s."""
    epochs = doc["epochs"]
    per_iter = [1000 * e["core_s"] / e["iterations"] for e in epochs if e["iterations"]]
    rest = epochs[1:]
    core = sum(e["core_s"] for e in rest)
    images = sum(e["images"] for e in rest)
    return {
        "first_ms": per_iter[0] if per_iter else None,
        "steady_ms": per_iter[1:],
        "iterations": sum(e["iterations"] for e in rest),
        "core_s": core,
        "p_core": images / core if core > 0 else None,
        "p_core_all": doc["throughput"].get("p_core"),
    }


def fmt(value: Optional[float], spec: str = ".1f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def cuda_check(
    cuda: bool, probe: Optional[Dict[str, Any]], runs: Dict[str, Any], require: bool
) -> Check:
    if not cuda:
        return Check("FAIL" if require else "SKIP", "cuda", NO_CUDA)
    info = (probe or {}).get("cuda")
    if not info:
        return Check("FAIL", "cuda", "torch saw CUDA but the probe recorded no device")
    devices = {p: r["rank0"]["device"] for p, r in runs.items() if r["rank0"]}
    wrong = [
        f"{p} on {d.get('type')} {d.get('name')}"
        for p, d in devices.items()
        if d.get("type") != "cuda" or d.get("name") != info["name"]
    ]
    return passed(
        not wrong,
        "cuda",
        f"{info['name']}, {info['count']} device(s), {gib(info['total_mem_bytes'])}, "
        f"torch {probe.get('torch') if probe else '-'} CUDA {info['version']}; "
        + (f"runs elsewhere: {', '.join(wrong)}" if wrong else f"runs on it: {', '.join(devices)}"),
    )


def run_check(precision: str, record: Optional[Dict[str, Any]]) -> Check:
    name = f"run {precision}"
    if record is None:
        return Check("FAIL", name, "no run in the store")
    run, doc = record["run"], record["rank0"]
    if run["status"] != "succeeded" or doc is None:
        return Check("FAIL", name, f"{run['run_id']} {run['status']}: {run['reason'] or '-'}")
    losses = [e["loss"] for e in doc["epochs"]]
    finite = bool(losses) and all(x is not None and math.isfinite(x) for x in losses)
    skipped = sum(e["skipped_steps"] for e in doc["epochs"])
    return passed(
        finite and doc["samples"]["rank_iterations"] > 0,
        name,
        f"{run['run_id']} succeeded on {doc['device']['type']}, "
        f"{doc['samples']['rank_iterations']} iterations, epoch losses "
        f"{[fmt(x, '.3f') for x in losses]}, {skipped} step(s) skipped for overflow",
    )


def warmup_check(precision: str, record: Dict[str, Any]) -> Check:
    """p_core without the first epoch, measured over at least MIN_STEADY_EPOCHS epochs."""
    s = steady(record["rank0"])
    return passed(
        len(s["steady_ms"]) >= MIN_STEADY_EPOCHS and s["p_core"] is not None,
        f"warm-up excluded {precision}",
        f"p_core {fmt(s['p_core'], '.2f')} img/s over {len(s['steady_ms'])} epochs after the "
        f"first (>= {MIN_STEADY_EPOCHS}): {s['iterations']} iterations, {s['core_s']:.1f} s; "
        f"over all iterations {fmt(s['p_core_all'], '.2f')} img/s",
    )


def steady_check(precision: str, record: Dict[str, Any]) -> Check:
    """The warm-up is over after the first epoch: the epochs after it take the same time per
    iteration (on a GPU; a shared CPU's epochs vary with its other load)."""
    s = steady(record["rank0"])
    times = s["steady_ms"]
    spread = max(times) / min(times) if len(times) > 1 and min(times) > 0 else math.inf
    return passed(
        spread <= STEADY_SPREAD,
        f"steady after warm-up {precision}",
        f"core per iteration: first epoch {fmt(s['first_ms'])} ms, then "
        f"{[round(x, 1) for x in times]} ms (slowest / fastest {spread:.2f} <= {STEADY_SPREAD})",
    )


def memory_check(precision: str, record: Dict[str, Any]) -> Check:
    run, doc = record["run"], record["rank0"]
    reserved = doc["memory"].get("peak_reserved_bytes")
    used = run["mem_used_bytes"]
    gap = used - reserved if used is not None and reserved else None
    ok = run["mem_source"] == "device" and gap is not None and 0 <= gap <= MAX_MEM_GAP
    return passed(
        ok,
        f"memory {precision}",
        f"mem_source {run['mem_source']}: nvidia-smi peak {gib(used)} of "
        f"{gib(run['mem_total_bytes'])}, allocator reserved peak {gib(reserved)}, "
        f"gap {gib(gap)} (0 to {gib(MAX_MEM_GAP)})",
    )


def monitor_check(precision: str, record: Dict[str, Any]) -> Check:
    t = record["rank0"]["timings"]
    start = t["start_unix"] + t["init_s"]
    end = start + t["train_s"]
    inside = [ts for ts in record["device0_mem_ts"] if start <= ts <= end]
    missing = "monitor_tool_missing" in record["metrics"]
    return passed(
        len(inside) >= MIN_SAMPLES and not missing,
        f"monitor {precision}",
        f"{len(inside)} nvidia-smi memory samples of device 0 inside the {t['train_s']:.1f} s "
        f"training window (>= {MIN_SAMPLES}), {len(record['device0_mem_ts'])} in all"
        + ("; monitor_tool_missing recorded" if missing else ""),
    )


def sync_run_check(precision: str, record: Dict[str, Any], core: Optional[Dict[str, Any]]) -> Check:
    name = f"synchronised core_s {precision}"
    if core is None:
        return Check("FAIL", name, "no probe result for this precision")
    s = steady(record["rank0"])
    run_ms = s["core_s"] * 1000 / s["iterations"] if s["iterations"] else 0.0
    gpu_ms = 1000 * core["gpu_s"] / core["iterations"]
    unsynced_ms = 1000 * core["unsynced_wall_s"] / core["iterations"]
    return passed(
        run_ms >= RUN_SYNCED * gpu_ms,
        name,
        f"the run's core_s {run_ms:.1f} ms/iteration >= {RUN_SYNCED} x the probe's CUDA events "
        f"{gpu_ms:.1f} ms (same model, precision and image shapes; an unsynchronised clock "
        f"read {unsynced_ms:.1f} ms)",
    )


def kernel_check(kernel: Optional[Dict[str, Any]]) -> Check:
    name = "DeviceOps.synchronize"
    if not kernel:
        return Check("FAIL", name, "no probe result")
    synced, gpu, unsynced = (
        1000 * kernel[k] for k in ("synced_wall_s", "gpu_s", "unsynced_wall_s")
    )
    return passed(
        synced >= KERNEL_SYNCED * gpu and unsynced < KERNEL_UNSYNCED * gpu,
        name,
        f"40 matmuls 4096^2: wall with it {synced:.1f} ms >= {KERNEL_SYNCED} x CUDA events "
        f"{gpu:.1f} ms; without it {unsynced:.1f} ms < {KERNEL_UNSYNCED} x (the probe can tell)",
    )


def throughput_check(runs: Dict[str, Any]) -> Check:
    rates = {
        p: steady(r["rank0"])["p_core"]
        for p, r in runs.items()
        if r["rank0"] and r["run"]["status"] == "succeeded"
    }
    base = rates.get("fp32")
    others = {p: rates.get(p) for p in ("amp", "fp16")}
    ok = bool(base) and all(
        v is not None and v >= MIN_SPEED_VS_FP32 * base for v in others.values()
    )
    return passed(
        ok,
        "throughput order",
        f"steady p_core fp32 {fmt(base)}, amp {fmt(others['amp'])}, fp16 {fmt(others['fp16'])} "
        f"img/s (amp and fp16 >= {MIN_SPEED_VS_FP32} x fp32)",
    )


def precision_checks(
    precision: str, record: Optional[Dict[str, Any]], cuda: bool, core: Optional[Dict[str, Any]]
) -> List[Check]:
    """The run of one precision, then what is measured on it (GPU-only ones skipped without
    CUDA, all skipped when the run failed: its own check says why)."""
    gpu_only = [
        (f"steady after warm-up {precision}", steady_check),
        (f"memory {precision}", memory_check),
        (f"monitor {precision}", monitor_check),
        (f"synchronised core_s {precision}", lambda p, r: sync_run_check(p, r, core)),
    ]
    names = [f"warm-up excluded {precision}"] + [name for name, _ in gpu_only]
    if precision != "fp32" and not cuda:
        why = NO_CUDA + (
            " (the workload runs fp16 on accelerators only)"
            if precision == "fp16"
            else " (amp on the CPU is bfloat16 autocast without GradScaler: not the GPU's path)"
        )
        return [Check("SKIP", f"run {precision}", why)] + [Check("SKIP", n, NO_CUDA) for n in names]
    first = run_check(precision, record)
    if first.verdict != "PASS" or record is None:
        return [first] + [Check("SKIP", n, f"run {precision} failed") for n in names]
    checks = [first, warmup_check(precision, record)]
    for name, check in gpu_only:
        checks.append(check(precision, record) if cuda else Check("SKIP", name, NO_CUDA))
    return checks


def all_checks(
    runs: Dict[str, Any],
    probe: Optional[Dict[str, Any]],
    cuda: bool,
    require_cuda: bool,
    elapsed_s: Optional[float],
) -> List[Check]:
    checks = [cuda_check(cuda, probe, runs, require_cuda)]
    cores = {c["precision"]: c for c in (probe or {}).get("core", [])}
    for precision in PRECISIONS:
        checks += precision_checks(precision, runs.get(precision), cuda, cores.get(precision))
    if not cuda:
        took = "-" if elapsed_s is None else f"{elapsed_s:.0f} s on the CPU"
        return checks + [
            Check("SKIP", "DeviceOps.synchronize", NO_CUDA),
            Check("SKIP", "throughput order", NO_CUDA),
            Check("SKIP", "time budget", f"{NO_CUDA} ({took})"),
        ]
    budget = passed(
        elapsed_s is not None and elapsed_s <= BUDGET_S,
        "time budget",
        f"{fmt(elapsed_s, '.0f')} s from start to report (<= {BUDGET_S:.0f} s)",
    )
    return checks + [kernel_check((probe or {}).get("kernel")), throughput_check(runs), budget]


def read_pre(path: Optional[str]) -> List[Check]:
    """Verdict lines the script's earlier steps wrote (deps, data)."""
    if not path:
        return []
    checks = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            verdict, _, rest = line.strip().partition(": ")
            name, _, values = rest.partition(": ")
            if verdict in ("PASS", "FAIL", "SKIP"):
                checks.append(Check(verdict, name, values))
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the SQLite file of the runs")
    parser.add_argument("--probe", help="bench/gpu_check_probe.py's JSON")
    parser.add_argument("--cuda", type=int, choices=(0, 1), required=True, help="torch saw CUDA")
    parser.add_argument("--require-cuda", action="store_true", help="no CUDA is a FAIL")
    parser.add_argument("--pre", help="verdict lines of the steps before")
    parser.add_argument("--elapsed", type=float, help="seconds the check took so far")
    args = parser.parse_args()
    checks = read_pre(args.pre)
    try:
        runs = load_runs(args.store)
    except sqlite3.Error as exc:
        checks.append(Check("FAIL", "store", f"{args.store}: {exc}"))
        runs = {}
    probe = None
    if args.probe:
        try:
            with open(args.probe, encoding="utf-8") as fh:
                probe = json.load(fh)
        except (OSError, ValueError) as exc:
            checks.append(Check("FAIL", "probe", f"{args.probe}: {exc}"))
    checks += all_checks(runs, probe, bool(args.cuda), args.require_cuda, args.elapsed)
    for check in checks:
        print(check.line())
    counts = {v: sum(c.verdict == v for c in checks) for v in ("PASS", "FAIL", "SKIP")}
    print(
        f"SUMMARY: {len(checks)} checks: {counts['PASS']} passed, {counts['FAIL']} failed, "
        f"{counts['SKIP']} skipped"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
