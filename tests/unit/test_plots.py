"""Report plots: written as non-empty PNGs, with the axes, titles and lines they promise."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.regressions import regressions_by_run
from orchestrator.reports.plots import (
    HISTORY_FILE,
    SCALING_FILE,
    VENDORS_FILE,
    history_figure,
    scaling_figure,
    vendors_figure,
    write_plots,
)
from orchestrator.reports.stats import group_rows

T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(run_id: str, vendor: str, hw: str, topology: str, p_core: float, day: int = 0) -> dict:
    return {
        "run_id": run_id,
        "vendor": vendor,
        "config": f"{hw} {topology}",
        "topology": topology,
        "precision": "fp32",
        "fix_hp": "bs=16",
        "status": "succeeded",
        "finished_at": T0 + timedelta(days=day),
        "p_core": p_core,
        "p_train": p_core * 0.8,
    }


ROWS = [
    _row("m1", "metax", "MXC500", "1x1", 40.0),
    _row("m8", "metax", "MXC500", "1x8", 300.0),
    _row("m16a", "metax", "MXC500", "2x8", 560.0, 1),
    _row("m16b", "metax", "MXC500", "2x8", 580.0, 2),
    _row("n1", "nvidia", "A100", "1x1", 45.0),
    _row("n16", "nvidia", "A100", "2x8", 650.0),
]


def _inside_the_figure(fig: Any) -> None:
    """The legend is drawn inside the axes, so no part of it is cut off."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    box = ax.get_window_extent(renderer)
    assert box.x0 <= legend.x0 and legend.x1 <= box.x1, (legend, box)
    assert box.y0 <= legend.y0 and legend.y1 <= box.y1, (legend, box)


def _legend_labels(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_scaling_plot_has_devices_on_x_and_an_ideal_line_from_1x1() -> None:
    fig = scaling_figure(group_rows(ROWS))
    ax = fig.axes[0]
    assert ax.get_title() == "Throughput scaling"
    assert ax.get_xlabel() == "devices (nodes x devices per node)"
    assert ax.get_ylabel() == "throughput (images/s)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    measured = lines["MXC500 fp32 (bs=16) p_core"]
    assert list(measured.get_xdata()) == [1, 8, 16]
    assert list(measured.get_ydata()) == [40.0, 300.0, 570.0]  # 2x8: mean of the repeats
    ideal = lines["MXC500 fp32 (bs=16) p_core ideal"]
    assert list(ideal.get_ydata()) == [40.0, 320.0, 640.0]  # 1x1 value x devices
    assert "A100 fp32 (bs=16) p_train ideal" in lines
    # integer device ticks, exactly the topologies run; y from 0
    assert list(ax.get_xticks()) == [1, 8, 16]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8", "16"]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 640.0
    assert set(_legend_labels(ax)) == set(lines)  # every legend entry is a drawn line
    _inside_the_figure(fig)


def test_a_one_run_scaling_plot_has_one_point_no_ideal_line_and_a_readable_axis() -> None:
    fig = scaling_figure(group_rows([_row("only", "cpu", "cpu", "1x2", 2.5)]))
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["cpu fp32 (bs=16) p_train", "cpu fp32 (bs=16) p_core"]  # no ideal line
    assert _legend_labels(ax) == labels
    assert list(ax.get_xticks()) == [2] and ax.get_xticklabels()[0].get_text() == "2"
    low, high = ax.get_xlim()
    assert low < 2 < high and high / low > 2  # not 1.9-2.1
    assert ax.get_ylim() == (0.0, 2.5 * 1.1)  # from 0, not a 0.2 % band around the value
    _inside_the_figure(fig)


def test_long_hyper_parameter_lists_wrap_inside_the_legend() -> None:
    fix_hp = "lr=0.0025, box_batch_size_per_image=64, epochs=2, max_size=96, min_size=96, workers=0"
    fig = scaling_figure(group_rows([{**_row("q", "cpu", "cpu", "1x2", 1.4), "fix_hp": fix_hp}]))
    labels = _legend_labels(fig.axes[0])
    assert all(len(line) <= 48 for label in labels for line in label.splitlines()), labels
    assert labels[0].replace("\n", " ") == f"cpu fp32 ({fix_hp}) p_train"
    _inside_the_figure(fig)
    history = history_figure([{**_row("q", "cpu", "cpu", "1x2", 1.4), "fix_hp": fix_hp}])
    _inside_the_figure(history)


def test_different_hyper_parameters_are_different_series() -> None:
    rows = [
        {**_row("e1", "cpu", "cpu", "1x1", 2.0), "fix_hp": "epochs=1"},
        {**_row("e2", "cpu", "cpu", "1x2", 6.0), "fix_hp": "epochs=2"},
        {**_row("e2b", "cpu", "cpu", "1x1", 2.2), "fix_hp": "epochs=2"},
    ]
    ax = scaling_figure(group_rows(rows), metrics=("p_core",)).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == [
        "cpu fp32 (epochs=1) p_core",
        "cpu fp32 (epochs=2) p_core",
        "cpu fp32 (epochs=2) p_core ideal",
    ]
    assert list(lines["cpu fp32 (epochs=1) p_core"].get_xdata()) == [1]  # not joined with 1x2
    ideal = lines["cpu fp32 (epochs=2) p_core ideal"]  # from its own smallest topology, 1x1
    assert list(ideal.get_xdata()) == [1, 2] and list(ideal.get_ydata()) == [2.2, 4.4]


def test_a_three_topology_selection_plots_one_series_with_its_ideal_line() -> None:
    rows = [_row(f"t{n}", "cpu", "cpu", f"1x{n}", 2.0 * n * 0.9) for n in (1, 2, 4)]
    ax = scaling_figure(group_rows(rows), metrics=("p_core",)).axes[0]
    assert list(ax.get_xticks()) == [1, 2, 4]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    (measured, ideal) = ax.get_lines()
    assert list(ideal.get_ydata()) == [1.8, 3.6, 7.2]
    assert ax.get_ylim()[0] == 0
    _inside_the_figure(ax.figure)


def test_history_plot_has_time_on_x_and_marks_regressions() -> None:
    history = [_row(f"h{i}", "metax", "MXC500", "2x8", 560.0 + i % 2, i) for i in range(6)]
    history.append(_row("slow", "metax", "MXC500", "2x8", 400.0, 7))
    fig = history_figure(history, regressions_by_run(history, history))
    ax = fig.axes[0]
    assert ax.get_title() == "History of p_core per configuration"
    assert ax.get_xlabel() == "finished at (UTC)" and ax.get_ylabel() == "p_core (images/s)"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["MXC500 2x8 fp32 (bs=16)", "regression"]
    assert len(ax.get_lines()[0].get_xdata()) == 7
    assert list(ax.get_lines()[1].get_ydata()) == [400.0]
    assert ax.get_ylim()[0] == 0
    _inside_the_figure(fig)


def test_the_time_axis_of_one_run_spans_hours_not_years() -> None:
    from matplotlib.dates import num2date

    fig = history_figure([_row("one", "cpu", "cpu", "1x1", 2.0, 3)])
    low, high = (num2date(x) for x in fig.axes[0].get_xlim())
    finished = T0 + timedelta(days=3)
    assert low < finished < high and high - low == timedelta(hours=1)
    # two runs two minutes apart: the axis spans minutes, not hours
    pair = [_row("a", "cpu", "cpu", "1x1", 2.0, 3), _row("b", "cpu", "cpu", "1x1", 2.1, 3)]
    pair[1]["finished_at"] = pair[0]["finished_at"] + timedelta(minutes=2)
    low, high = (num2date(x) for x in history_figure(pair).axes[0].get_xlim())
    assert high - low == timedelta(minutes=4)


def test_vendor_plot_has_one_bar_per_vendor_and_topology() -> None:
    fig = vendors_figure(group_rows(ROWS))
    ax = fig.axes[0]
    assert ax.get_title() == "Vendors side by side: p_core"
    assert ax.get_xlabel() == "topology" and ax.get_ylabel() == "p_core (images/s)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1x1", "1x8", "2x8"]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == sorted([40.0, 300.0, 570.0, 45.0, 650.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A100 fp32", "MXC500 fp32"]
    assert ax.get_ylim()[0] == 0
    _inside_the_figure(fig)


def test_write_plots_writes_non_empty_pngs(tmp_path: Path) -> None:
    made = write_plots(tmp_path / "plots", group_rows(ROWS), ROWS)
    names = [Path(path).name for _, path in made]
    assert names == [SCALING_FILE, HISTORY_FILE, VENDORS_FILE]
    for _, path in made:
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        svg = Path(path).with_suffix(".svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and len(svg) > 5000
    svgs = [Path(n).with_suffix(".svg").name for n in names]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names + svgs)


def test_plots_of_an_empty_selection_are_still_written(tmp_path: Path) -> None:
    made = write_plots(tmp_path, [], [])
    assert [Path(path).name for _, path in made] == [SCALING_FILE, HISTORY_FILE, VENDORS_FILE]
    for _, path in made:
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC)
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert data[12:16] == b"IHDR" and width > 100 and height > 100  # a real, empty chart


def test_unwritable_plots_folder_is_a_config_error(tmp_path: Path) -> None:
    from orchestrator.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the plots folder"):
        write_plots(blocker / "plots", [], [])
