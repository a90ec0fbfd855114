"""Change-point detection: false positives on flat noisy histories and the planted steps found,
over many seeds (orchestrator/reports/changepoints.py, Apache Otava's E-divisive).

    .venv/bin/python bench/bench_changepoints.py               # 50 seeds per noise level
    .venv/bin/python bench/bench_changepoints.py --seeds 200 --runs 200

Prints numbers; asserts nothing. The histories are tests/support/history_store.py's: p_core
500 img/s × (1 + CV · N(0, 1)), with (planted) a −6 % step at run 80 (a driver change) and +3 % at
run 140 (a wheel change). A planted step counts as found when a change point lies within 5 runs
of it; every other change point is a false positive. Also prints Otava's default threshold
(p < 1e-3) beside ours (1e-4) and the time per 200-run and 10,000-run history.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.reports.changepoints import MAX_P, WINDOW, detect  # noqa: E402
from tests.support.history_store import PLANTED, levels  # noqa: E402

NEAR = 5


def rates(runs: int, seeds: int, cv: float, max_p: float) -> tuple[float, float, float, float]:
    """(flat histories with a false change point, false change points per flat history,
    -6 % step found, +3 % step found)."""
    flat_any = flat_count = driver = wheels = 0
    for seed in range(seeds):
        flat = [i for i, _ in detect(levels(runs, (), cv, seed), WINDOW, max_p)]
        flat_any += bool(flat)
        flat_count += len(flat)
        found = [i for i, _ in detect(levels(runs, PLANTED, cv, seed), WINDOW, max_p)]
        driver += any(abs(i - PLANTED[0].at) <= NEAR for i in found)
        wheels += any(abs(i - PLANTED[1].at) <= NEAR for i in found)
    return flat_any / seeds, flat_count / seeds, driver / seeds, wheels / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.runs} runs per history, {args.seeds} seeds per row, window {WINDOW}")
    print(
        f"{'p <':>7} {'CV':>4}  {'flat: any FP':>12} {'FP/history':>10}  {'-6% found':>9} {'+3% found':>9}"
    )
    for max_p in (MAX_P, 1e-3):
        for cv in (0.01, 0.02, 0.03):
            any_fp, per, driver, wheels = rates(args.runs, args.seeds, cv, max_p)
            print(
                f"{max_p:>7.0e} {cv * 100:>3.0f}%  {any_fp * 100:>11.1f}% {per:>10.3f}  "
                f"{driver * 100:>8.0f}% {wheels * 100:>8.0f}%"
            )
    for size in (200, 10_000):
        series = levels(size, PLANTED, 0.02, 1)
        began = time.perf_counter()
        detect(series)
        print(f"one metric over {size:,} runs: {(time.perf_counter() - began) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
