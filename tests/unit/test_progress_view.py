"""The live progress of a run, fed the workload's events on a fake clock: plain lines (a log),
a Rich bar on a terminal, -q and -v, and the line every run ends with."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from orchestrator.runs.progress import ProgressView, parse_event, summary_line

START = {
    "event": "start",
    "world_size": 2,
    "device": "cpu",
    "epochs": 2,
    "iterations_per_epoch": 8,
    "steps": 16,
    "train_images": 32,
    "val_images": 8,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(it: int, loss: float = 1.5) -> dict[str, Any]:
    return {
        "event": "progress",
        "epoch": 0,
        "epochs": 2,
        "iteration": it,
        "iterations": 8,
        "loss": loss,
        "images_per_s": 12.3456,
        "eta_s": 65.2,
        "epoch_eta_s": 30.4,
    }


def _plain(level: int = 0) -> tuple[ProgressView, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=False, width=80)
    return ProgressView("r1", console, level=level, clock=clock), out, clock


def test_plain_output_has_a_line_per_phase_and_progress_at_most_every_10_s() -> None:
    view, out, clock = _plain()
    with view:
        view.phase("preflight", "2 node(s) in parallel")
        clock.now += 1.5
        view.event({"event": "phase", "phase": "init"})
        clock.now += 20
        view.event(START)
        view.event({"event": "phase", "phase": "training", "epoch": 0, "epochs": 2})
        for i, step in enumerate((2, 4, 6, 8)):  # every 4 s: only one line per 10 s
            clock.now += 4
            view.event(_progress(i + 1 if step < 8 else 8))
        view.event({"event": "epoch_end", "epoch": 0, "epochs": 2, "loss": 1.25, "train_s": 16.0})
        view.event({"event": "phase", "phase": "evaluation", "epoch": 0, "images": 8})
        clock.now += 2
        view.event({"event": "eval_progress", "epoch": 0, "images": 8, "total": 8})
        view.event({"event": "eval", "epoch": 0, "map": 0.1234, "images": 8, "eval_s": 3.04})
    lines = out.getvalue().splitlines()
    assert lines == [
        "    0.0s  preflight: 2 node(s) in parallel",
        "    1.5s  init: dataset, torch, process group, model",
        "   21.5s  init: 2 process(es) on cpu, 2 epoch(s) of 8 iterations (16 planned), 32 "
        "training images, 8 for evaluation",
        "   21.5s  training: epoch 1/2, 8 iterations",
        # 12 s after the phase line, the first progress line; the others within 10 s of it
        "   33.5s  training: epoch 1/2 iteration 3/8, loss 1.500  12.3 img/s  epoch eta 30s  "
        "run eta 1m05s",
        "   37.5s  training: epoch 1/2 done, loss 1.250, 16.0 s",
        "   37.5s  evaluation: after epoch 1, 8 images",
        "   39.5s  evaluation: epoch 1 mAP 0.123 on 8 images in 3.0 s",
    ]


def test_an_epoch_with_steps_skipped_for_overflow_says_how_many() -> None:
    view, out, clock = _plain()
    with view:
        view.event(START)
        end = {"event": "epoch_end", "epoch": 0, "epochs": 2, "loss": 1.25, "train_s": 16.0}
        view.event(dict(end, skipped_steps=0, loss_scale=None))  # fp32: nothing to say
        view.event(dict(end, epoch=1, skipped_steps=3, loss_scale=8192.0))
    lines = out.getvalue().splitlines()
    assert lines[-2].endswith("training: epoch 1/2 done, loss 1.250, 16.0 s")
    assert lines[-1].endswith(
        "training: epoch 2/2 done, loss 1.250, 16.0 s, 3 step(s) skipped for overflow "
        "(loss scale now 8192)"
    )


def test_a_quiet_phase_gets_a_line_every_10_s_in_a_log() -> None:
    view, out, clock = _plain()
    view.phase("init", "model")
    for _ in range(25):
        clock.now += 1
        view.tick()
    assert out.getvalue().splitlines()[1:] == [
        "   10.0s  init: still running after 10.0 s",
        "   20.0s  init: still running after 20.0 s",
    ]


def test_verbose_prints_every_event_and_quiet_prints_nothing() -> None:
    view, out, clock = _plain(level=1)
    view.event({"event": "phase", "phase": "training", "epoch": 0})
    for i in range(1, 4):
        clock.now += 1
        view.event(_progress(i))
    text = out.getvalue()
    assert [f"iteration {i}/8," in text for i in (1, 2, 3)] == [True, True, True]
    quiet, out, _ = _plain(level=-1)
    with quiet:
        quiet.phase("preflight")
        quiet.event(START)
        quiet.event(_progress(1))
        quiet.tick()
    assert out.getvalue() == ""


def test_on_a_terminal_the_bar_knows_its_total_from_the_start_event() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    view = ProgressView("r1", console)
    assert view.live
    with view:
        view.phase("init", "model")
        progress = view._progress
        assert progress is not None
        (task,) = progress.tasks
        assert task.total is None  # before the start event: a spinner, no made-up total
        view.event(START)
        view.event({"event": "phase", "phase": "training", "epoch": 0, "epochs": 2})
        view.event(_progress(3))
        (task,) = progress.tasks
        assert (task.description, task.total, task.completed) == ("epoch 1/2", 8, 3)
        assert task.fields["stats"] == ("loss 1.500  12.3 img/s  epoch eta 30s  run eta 1m05s")
        view.event({"event": "phase", "phase": "evaluation", "epoch": 0, "images": 8})
        view.event({"event": "eval_progress", "epoch": 0, "images": 4, "total": 8})
        (task,) = progress.tasks
        assert (task.description, task.total, task.completed) == ("eval epoch 1", 8, 4)
    text = out.getvalue()
    assert "4/8 img" in text and "init: 2 process(es) on cpu" in text  # lines above the bar


def test_an_epoch_that_max_iters_cuts_short_shows_the_iterations_it_will_run() -> None:
    out = io.StringIO()
    view = ProgressView("r1", Console(file=out, force_terminal=True, width=120))
    with view:
        view.event({**START, "steps": 11})  # two epochs of 8, stopped after 11 iterations
        progress = view._progress
        assert progress is not None
        view.event({"event": "phase", "phase": "training", "epoch": 0, "epochs": 2})
        assert [(t.description, t.total) for t in progress.tasks] == [("epoch 1/2", 8)]
        view.event({"event": "phase", "phase": "training", "epoch": 1, "epochs": 2})
        assert [(t.description, t.total) for t in progress.tasks] == [("epoch 2/2", 3)]
    assert "epoch 2/2, 3 iterations" in out.getvalue()


def test_the_final_line_says_status_id_wall_time_numbers_and_folder() -> None:
    assert summary_line("succeeded", "r1", 83.44, 1234.5, 0.36789, "runs/r1") == (
        "succeeded: run r1 in 1m23.4s, p_core 1230 img/s, mAP 0.368, run folder runs/r1"
    )
    assert summary_line("failed", "r2", 5.0, None, None, "runs/r2") == (
        "failed: run r2 in 5.0 s, no metrics, run folder runs/r2"
    )


def test_parse_event_reads_event_lines_only() -> None:
    assert parse_event('{"event": "phase", "phase": "init"}') == {
        "event": "phase",
        "phase": "init",
    }
    assert parse_event("[faster_rcnn] rank 0/1 on cpu") is None
    assert parse_event('{"event": broken') is None


def test_a_held_back_progress_line_is_said_at_the_next_tick_not_still_running() -> None:
    view, out, clock = _plain()
    view.event({"event": "phase", "phase": "training", "epoch": 0, "epochs": 2})
    clock.now += 5
    view.event(_progress(2))  # within 10 s of the phase line: held back
    clock.now += 5
    view.tick()
    assert out.getvalue().splitlines()[1] == (
        "   10.0s  training: epoch 1/2 iteration 2/8, loss 1.500  12.3 img/s  epoch eta 30s  "
        "run eta 1m05s"
    )


def test_a_phase_with_a_display_of_its_own_suspends_the_bar() -> None:
    """The image build shows its own Rich display: the run's bar steps aside, then returns."""
    from rich.progress import Progress

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with ProgressView("r1", console) as view:
        view.phase("image", "build where missing")
        with view.suspended():
            assert view._progress is None
            with Progress(console=console) as other:  # older Rich: one live display at once
                other.add_task("build", total=3)
        assert view._progress is not None
        view.phase("staging")
        (task,) = view._progress.tasks
        assert task.description == "staging"


def test_a_replay_stamps_each_event_when_it_happened_not_when_it_was_read(
    monkeypatch: Any,
) -> None:
    """`attach` reads a log that is minutes old in one go: its lines keep the workload's own
    times ("at"), counted from the run's submission, as the submit showed them."""
    import time
    from datetime import datetime, timezone

    view, out, clock = _plain()
    submitted = 1_700_000_000.0
    monkeypatch.setattr(time, "time", lambda: submitted + 300.0)  # attach runs 5 min later
    view.replay_from(datetime.fromtimestamp(submitted, timezone.utc))
    with view:
        view.event({"event": "phase", "phase": "init", "at": submitted + 12.0})
        view.event({**START, "at": submitted + 20.5})
        view.event({"event": "phase", "phase": "training", "epoch": 0, "at": submitted + 21})
        view.event({**_progress(1), "at": submitted + 25})  # held back: 10 s spacing
        view.tick()  # said now, at the time it happened
        view.line("read now")
    stamps = [line.split("s  ", 1)[0].strip() for line in out.getvalue().splitlines()]
    assert stamps == ["12.0", "20.5", "21.0", "25.0", "300.0"]
    assert "training: epoch 1/2 iteration 1/8" in out.getvalue().splitlines()[3]
