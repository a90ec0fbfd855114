"""Metric arithmetic: throughputs from global counts and the slowest rank, per-epoch sums, ETA."""

from __future__ import annotations

import pytest

from workload.faster_rcnn.metrics import (
    EpochMeter,
    RunTotals,
    eta_seconds,
    planned_iterations,
    rate,
    throughputs,
)


def test_throughputs_use_global_images_and_the_slowest_rank():
    # two ranks of 100 images; the slower rank needed 20 s of training, 15 s without eval, 10 s core
    rank_times = [
        {"train_s": 18.0, "train_no_eval_s": 14.0, "core_s": 9.0},
        {"train_s": 20.0, "train_no_eval_s": 15.0, "core_s": 10.0},
    ]
    slowest = {k: max(r[k] for r in rank_times) for k in rank_times[0]}
    out = throughputs(200, slowest)
    assert out == {"p_whole": 10.0, "p_train": pytest.approx(200 / 15), "p_core": 20.0}
    assert out["p_core"] > out["p_train"] > out["p_whole"]


def test_rate_is_none_when_nothing_was_timed_or_trained():
    assert rate(10, 0.0) is None
    assert rate(0, 5.0) is None
    assert throughputs(0, {"train_s": 1.0, "train_no_eval_s": 1.0, "core_s": 1.0}) == {
        "p_whole": None,
        "p_train": None,
        "p_core": None,
    }


def test_epoch_meter_and_totals_sum_steps():
    totals = RunTotals()
    for epoch, steps in enumerate([[(2, 0.1, 1.0), (2, 0.2, 1.5)], [(2, 0.0, 2.0)]]):
        meter = EpochMeter(epoch)
        for images, data_s, core_s in steps:
            meter.step(images, data_s, core_s)
        meter.train_s = sum(d + c for _, d, c in steps) + 0.05
        meter.eval_s = 0.5
        totals.add(meter)
    assert (totals.images, totals.iterations) == (6, 3)
    assert totals.core_s == pytest.approx(4.5)
    assert totals.train_no_eval_s == pytest.approx(4.8 + 0.1)
    assert totals.eval_s == pytest.approx(1.0)
    records = totals.records()
    assert [r["images"] for r in records] == [4, 2]
    assert records[0]["data_s"] == pytest.approx(0.3)


def test_nan_loss_is_recorded_as_null():
    meter = EpochMeter(0)
    meter.loss_mean = float("nan")
    assert meter.record()["loss"] is None


def test_eta_and_plan():
    assert eta_seconds(10, 40, 20.0) == pytest.approx(60.0)
    assert eta_seconds(40, 40, 20.0) == 0.0
    assert eta_seconds(0, 40, 0.0) is None
    assert planned_iterations(100, 26, None) == 2600
    assert planned_iterations(100, 26, 150) == 150
    assert planned_iterations(100, 2, 5000) == 200
