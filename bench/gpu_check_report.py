"""The checks of bench/gpu_check.sh, on what its runs left: the SQLite store and run folders of
`orchestrator submit 1x1` for fp32, amp and fp16, and the probe's JSON (bench/gpu_check_probe.py).
Prints each run's p_core, allocator peak and nvidia-smi's device peak, then one PASS / FAIL / WARN
line per check; exit status 1 when a check failed. docs/gpu.md.

    python bench/gpu_check_report.py --store results.db [--probe probe.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

GIB = 1 << 30
PRECISIONS = ("fp32", "amp", "fp16")


@dataclass
class Check:
    verdict: str  # PASS, FAIL or WARN
    what: str

    def line(self) -> str:
        return f"{self.verdict:4}  {self.what}"


def load_runs(store: str) -> Dict[str, Dict[str, Any]]:
    """The newest run of each precision: its row, rank 0's file, its monitor sample counts."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    found: Dict[str, Dict[str, Any]] = {}
    for precision in PRECISIONS:
        run = conn.execute(
            "SELECT * FROM runs WHERE precision = ? ORDER BY submitted_at DESC LIMIT 1",
            (precision,),
        ).fetchone()
        if run is None:
            continue
        rank = conn.execute(
            "SELECT document FROM rank_results WHERE run_id = ? AND rank = 0", (run["run_id"],)
        ).fetchone()
        counts = dict(
            conn.execute(
                "SELECT metric, count(*) FROM monitor_samples WHERE run_id = ? GROUP BY metric",
                (run["run_id"],),
            ).fetchall()
        )
        found[precision] = {
            "run": dict(run),
            "rank0": json.loads(rank["document"]) if rank else None,
            "samples": counts,
        }
    conn.close()
    return found


def gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def run_checks(precision: str, record: Dict[str, Any]) -> List[Check]:
    run, doc, samples = record["run"], record["rank0"], record["samples"]
    name = f"{precision} ({run['run_id']})"
    if run["status"] != "succeeded" or doc is None:
        return [Check("FAIL", f"{name}: run {run['status']}: {run['reason'] or 'no rank file'}")]
    checks = [Check("PASS", f"{name}: succeeded, p_core {run['p_core']:.1f} img/s")]
    reserved = doc["memory"]["peak_reserved_bytes"]
    if reserved:
        checks.append(Check("PASS", f"{name}: allocator peak reserved {gib(reserved)}"))
    else:
        checks.append(Check("FAIL", f"{name}: no allocator peak in the rank file (not on a GPU?)"))
    device_samples = samples.get("device_mem_used_bytes", 0)
    if device_samples and not samples.get("monitor_tool_missing"):
        checks.append(
            Check("PASS", f"{name}: {device_samples} device memory samples parsed from nvidia-smi")
        )
    else:
        checks.append(Check("FAIL", f"{name}: no nvidia-smi sample in monitor_samples"))
    if run["mem_source"] == "device" and reserved:
        gap = run["mem_used_bytes"] - reserved
        verdict = "PASS" if 0 <= gap <= 4 * GIB else "WARN"
        checks.append(
            Check(
                verdict,
                f"{name}: nvidia-smi device peak {gib(run['mem_used_bytes'])} of "
                f"{gib(run['mem_total_bytes'])}, {gib(gap)} above the allocator's "
                "(docs/metrics.md expects about 0.5-1.5 GiB)",
            )
        )
    else:
        checks.append(Check("FAIL", f"{name}: mem_source is {run['mem_source']}, not device"))
    epochs = doc["epochs"]
    if not all(isinstance(e.get("skipped_steps"), int) for e in epochs):
        checks.append(Check("FAIL", f"{name}: epochs[].skipped_steps missing"))
    elif precision == "amp":
        skipped = sum(e["skipped_steps"] for e in epochs)
        verdict = "PASS" if skipped > 0 else "WARN"
        checks.append(
            Check(
                verdict,
                f"{name}: GradScaler skipped {skipped} step(s) "
                "(expected > 0: its first scale, 65536, overflows fp16 gradients)",
            )
        )
    core, wall = doc["timings"]["core_s"], doc["timings"]["train_no_eval_s"]
    iterations = doc["samples"]["rank_iterations"]
    checks.append(
        Check(
            "PASS" if 0 < core <= wall else "FAIL",
            f"{name}: core_s {core:.2f} s of train_no_eval_s {wall:.2f} s over {iterations} "
            f"iterations ({1000 * core / max(1, iterations):.1f} ms per iteration)",
        )
    )
    return checks


def probe_checks(probe: List[Dict[str, Any]], runs: Dict[str, Dict[str, Any]]) -> List[Check]:
    """The workload's synchronised clock holds the GPU's own time (CUDA events) of the region."""
    checks = []
    for p in probe:
        n = p["iterations"]
        synced, gpu, unsynced = (
            1000 * p[k] / n for k in ("synced_wall_s", "gpu_s", "unsynced_wall_s")
        )
        ok = synced >= 0.98 * gpu
        what = (
            f"probe {p['precision']}: synchronised core {synced:.1f} ms per iteration "
            f">= GPU events {gpu:.1f} ms (unsynchronised, FlagPerf's way: {unsynced:.1f} ms)"
        )
        checks.append(Check("PASS" if ok else "FAIL", what))
        record = runs.get(p["precision"])
        if record and record["rank0"]:
            t = record["rank0"]["timings"]
            per_iter = 1000 * t["core_s"] / max(1, record["rank0"]["samples"]["rank_iterations"])
            checks.append(
                Check(
                    "PASS" if per_iter >= 0.5 * gpu else "WARN",
                    f"run {p['precision']}: core_s per iteration {per_iter:.1f} ms against the "
                    f"probe's GPU time {gpu:.1f} ms (same model and precision, other images)",
                )
            )
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the SQLite file of the runs")
    parser.add_argument("--probe", help="bench/gpu_check_probe.py's JSON")
    args = parser.parse_args()
    runs = load_runs(args.store)
    print(f"{'precision':9} {'p_core img/s':>12} {'alloc peak':>11} {'smi peak':>11} {'total':>11}")
    for precision, record in runs.items():
        run, doc = record["run"], record["rank0"] or {"memory": {}}
        reserved = doc["memory"].get("peak_reserved_bytes")
        p_core = f"{run['p_core']:.1f}" if run["p_core"] else "-"
        print(
            f"{precision:9} {p_core:>12} {gib(reserved):>11} {gib(run['mem_used_bytes']):>11} "
            f"{gib(run['mem_total_bytes']):>11}"
        )
    checks = [
        c
        for precision in PRECISIONS
        if precision in runs
        for c in run_checks(precision, runs[precision])
    ]
    missing = [p for p in PRECISIONS if p not in runs]
    checks += [Check("FAIL", f"{p}: no run in the store") for p in missing]
    if args.probe:
        with open(args.probe, encoding="utf-8") as fh:
            checks += probe_checks(json.load(fh), runs)
    else:
        checks.append(Check("FAIL", "no probe result: core_s synchronisation not checked"))
    for check in checks:
        print(check.line())
    failed = sum(c.verdict == "FAIL" for c in checks)
    print(f"{len(checks)} checks, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
