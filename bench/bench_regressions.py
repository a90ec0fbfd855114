"""The regression flags of `orchestrator report` over one configuration's whole history.

    .venv/bin/python bench/bench_regressions.py                     # 10,000 and 100,000 runs
    .venv/bin/python bench/bench_regressions.py --runs 10000 --repeat 5

Prints numbers; asserts nothing. A store of --runs runs spread over --configs configurations
(bench_web.py's store: 4 vendors x 2 topologies x 2 precisions = 16), as `report --vendor metax
--topology 2x8 --precision fp32` sees it: the rows are every run of one configuration and so is
the history (store/history.py: configuration_history). Timed in-process, median of --repeat:
"one scan per run", find_regressions for each row (what regressions_by_run did before: each row
scanned the whole history), and regressions_by_run now (each configuration sorted once, each
row's window found by bisection). Both give the same flags (checked here, and by
tests/unit/test_report_stats_web.py).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.regressions import Regression, find_regressions, regressions_by_run  # noqa: E402

Flags = dict[str, list[Regression]]


def one_configuration(runs: int, configs: int, seed: int = 1) -> list[dict[str, Any]]:
    """The runs of one configuration in a store of `runs`: every `configs`-th run, over two
    years per 10,000 runs of the store, 3 % noise and a slow run now and then."""
    rnd = random.Random(seed)
    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    span_s = 730 * 86400 * max(1, runs // 10_000)
    history = []
    for i in range(0, runs, configs):
        p_core = 480.0 * rnd.uniform(0.97, 1.03) * (0.75 if rnd.random() < 0.02 else 1.0)
        history.append(
            {
                "run_id": f"bench-{i:07d}",
                "vendor": "metax",
                "config": "MXC500 2x8",
                "precision": "fp32",
                "fix_hp": "/",
                "status": "succeeded",
                "finished_at": now - timedelta(seconds=rnd.randint(0, span_s)),
                "p_core": p_core,
                "p_train": p_core * 0.8,
            }
        )
    history.sort(key=lambda h: (h["finished_at"], h["run_id"]))  # as the store reads it
    return history


def one_scan_per_run(
    rows: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]]
) -> Flags:
    """regressions_by_run before: find_regressions per row, each a scan of the history."""
    found = {str(row["run_id"]): find_regressions(row, history) for row in rows}
    return {run_id: flags for run_id, flags in found.items() if flags}


def timed(
    call: Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], Flags],
    history: list[dict[str, Any]],
    repeat: int,
) -> tuple[float, Flags]:
    """Median seconds of `repeat` calls, and what the last one returned."""
    spent = []
    result: Flags = {}
    for _ in range(repeat):
        began = time.perf_counter()
        result = call(history, history)
        spent.append(time.perf_counter() - began)
    return statistics.median(spent), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--old-repeat", type=int, default=1, help="repeats of the old way (slow at 100,000)"
    )
    args = parser.parse_args()
    print(
        f"{'store runs':>10} {'config runs':>11} {'flags':>5} {'one scan per run':>17} {'now':>9}"
    )
    for runs in args.runs:
        history = one_configuration(runs, args.configs)
        old_s, old = timed(one_scan_per_run, history, args.old_repeat)
        new_s, new = timed(regressions_by_run, history, args.repeat)
        same = "" if new == old else "  DIFFERENT FLAGS"
        print(
            f"{runs:>10,} {len(history):>11,} {len(new):>5} {old_s * 1000:>14,.1f} ms "
            f"{new_s * 1000:>6,.1f} ms{same}",
            flush=True,
        )


if __name__ == "__main__":
    main()
