"""Event lines: one JSON object per line, "event" first (the launcher matches that prefix), no NaN."""

from __future__ import annotations

import io
import json
import time

from workload.faster_rcnn import result_format
from workload.faster_rcnn.progress import Events


def test_progress_line_starts_with_event():
    line = result_format.progress_line(epoch=0, iteration=3, loss=0.5)
    assert line.startswith('{"event": "progress"')
    assert json.loads(line) == {"event": "progress", "epoch": 0, "iteration": 3, "loss": 0.5}


def test_events_are_single_lines_with_event_first_and_no_nan():
    out = io.StringIO()
    events = Events(enabled=True, stream=out)
    before = time.time()
    events.emit("epoch_end", epoch=1, loss=float("nan"), lr=0.02)
    events.progress(epoch=1, iteration=2, loss=float("inf"), images_per_s=3.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith('{"event"') for line in lines)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    # "at": when it happened (Unix time), for a replay stamped as it happened
    assert all(before - 0.01 <= doc.pop("at") <= time.time() + 0.01 for doc in (first, second))
    assert first == {"event": "epoch_end", "epoch": 1, "loss": None, "lr": 0.02}
    assert second["loss"] is None


def test_other_ranks_print_nothing():
    out = io.StringIO()
    events = Events(enabled=False, stream=out)
    events.emit("start", rank=1)
    events.progress(epoch=0)
    assert out.getvalue() == ""
