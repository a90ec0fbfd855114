"""Numbers as people read them: 3 significant digits, 0.1 s, GiB/MiB."""

from __future__ import annotations

import pytest

from orchestrator.units import duration, eta, mem_cell, seconds, sig3, size


@pytest.mark.parametrize(
    "value, shown",
    [
        (1234.5, "1230"),
        (302.339, "302"),
        (48.376, "48.4"),
        (9.996, "10.0"),
        (999.7, "1000"),
        (0.88954, "0.890"),
        (0.000123456, "0.000123"),
        (-5.5551, "-5.56"),
        (0.0, "0"),
        (None, ""),
    ],
)
def test_throughputs_have_three_significant_digits(value, shown):
    assert sig3(value) == shown


def test_times_sizes_and_memory_cells():
    assert seconds(829.637) == "829.6" and seconds(None) == ""
    assert duration(5) == "5.0 s" and duration(83.44) == "1m23.4s"
    assert duration(3725) == "1h02m05s" and duration(None) == "?"
    assert eta(65.4) == "1m05s" and eta(3700) == "1h01m" and eta(None) == "?"
    assert size(25324732416) == "23.6 GiB" and size(5 * 2**20) == "5.0 MiB"
    assert mem_cell("37.1/64.0", True) == "37.1/64.0"
    assert mem_cell(None, True) == "n/a (cpu)" and mem_cell(None, False) == ""


@pytest.mark.parametrize(
    "name, value, shown",
    [
        ("map", 0, "0.000"),
        ("map", 0.000835, "0.001"),
        ("map", 0.0019, "0.002"),
        ("map", None, ""),
        ("e2e_time", 18, "18.0"),
        ("core_s", 3.04, "3.0"),
        ("p_core", 3, "3.00"),
        ("p_whole", 1234.5, "1230"),
    ],
)
def test_a_metric_is_shown_as_the_report_shows_it(name, value, shown):
    from orchestrator.reports import report
    from orchestrator.units import metric

    assert metric(name, value) == shown
    formatters = {key: f for key, _, f in report.SEED_HEADERS}
    if name in formatters:  # the CLI's report column: the same text
        assert formatters[name](value) == shown


def test_the_web_shows_a_cpu_runs_memory_as_the_cli_does():
    from orchestrator.web.present import metric, run_mem

    cpu_run = {"mem": None, "p_core": 3.0, "source": "orchestrator", "mem_source": None}
    assert run_mem(cpu_run) == "n/a (cpu)"
    assert run_mem({**cpu_run, "source": "flagperf"}) == ""  # an import may simply not say
    gpu = {"mem": "37.1/64.0", "p_core": 519.0, "source": "orchestrator", "mem_source": "device"}
    assert run_mem(gpu) == "37.1/64.0 (device)"
    assert metric(0.000835, "map") == "0.001"
