"""Live progress of one run through every phase: the orchestrator's own (connect, preflight,
image, staging, starting, collecting, publishing) and the workload's, read from rank 0's JSON
event lines (init, training, evaluation).

On a terminal: one Rich live display, a bar whose total is known from the workload's `start`
event (iterations of the epoch, then images of the evaluation), a spinner where no total exists.
Elsewhere (a log file, a worker, CI): one plain line per phase change and at most one every
`plain_every_s` (10 s) during a phase, so a log always says what the run is doing.
Epochs are 0-based in the events and the store; people count from 1 here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from orchestrator.units import duration, eta, sig3

PLAIN_EVERY_S = 10.0
# -1: quiet (no progress, warnings only), 0: normal, 1: verbose (every event, no throttle).
_VERBOSITY = [0]


def set_verbosity(level: int) -> None:
    """The CLI's -q / -v, for every progress view this process makes."""
    _VERBOSITY[0] = max(-1, min(1, level))


def verbosity() -> int:
    return _VERBOSITY[0]


def parse_event(line: str) -> dict[str, Any] | None:
    """A workload event line (`{"event": ...}`), or None for any other output."""
    text = line.strip()
    if not text.startswith('{"event"'):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _num(event: dict[str, Any], key: str) -> float | None:
    value = event.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _int(event: dict[str, Any], key: str, default: int = 0) -> int:
    value = event.get(key)
    return int(value) if isinstance(value, (int, float)) else default


def _skipped(event: dict[str, Any]) -> str:
    """Steps the loss scaling skipped for overflow (fp16, amp), when there were any."""
    skipped = _int(event, "skipped_steps")
    if not skipped:
        return ""
    scale = _num(event, "loss_scale")
    return f", {skipped} step(s) skipped for overflow" + (
        f" (loss scale now {scale:g})" if scale is not None else ""
    )


class ProgressView:
    """Shows where a run is: phase, epoch, iterations done/total, loss, images/s, the epoch's
    and the run's ETA, evaluation images done/total."""

    def __init__(
        self,
        run_id: str,
        console: Console | None = None,
        plain_every_s: float = PLAIN_EVERY_S,
        live: bool = True,
        level: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.console = console or Console(stderr=True)
        self.run_id = run_id
        self.level = verbosity() if level is None else level
        # live=False: plain lines only (a worker following several runs from threads; rich
        # allows one live display at a time)
        self.live = live and self.console.is_terminal and self.level >= 0
        self.plain_every_s = 0.0 if self.level > 0 else plain_every_s
        self.clock = clock
        self.t0 = clock()
        self.last_event_at = self.t0
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._phase = ""
        self._phase_at = self.t0
        self._latest = ""  # the newest progress line held back by the 10 s spacing
        self._last_line = self.t0
        self._totals: dict[str, int] = {}  # from the start event
        self._epoch = 0  # 1-based, for people
        self._depth = 0
        # Replaying a run another process started (`attach`): lines are stamped from the run's
        # submission, and each event at the time the workload emitted it (its "at").
        self._wall_t0: float | None = None
        self._event_at: float | None = None
        self._latest_at: float | None = None  # the held-back line's event time

    def replay_from(self, origin: datetime) -> None:
        """Stamp lines from `origin` (the run's submission), as its submit showed them."""
        aware = origin if origin.tzinfo else origin.replace(tzinfo=timezone.utc)  # stored UTC
        self._wall_t0 = aware.timestamp()
        self.t0 = self.clock() - max(0.0, time.time() - self._wall_t0)

    def _now(self) -> float:
        """This view's clock, or, while replaying an event, the time it happened."""
        if self._event_at is not None and self._wall_t0 is not None:
            return self.t0 + (self._event_at - self._wall_t0)
        return self.clock()

    # -- the display ---------------------------------------------------------------------

    def __enter__(self) -> ProgressView:
        # re-entrant: a caller may hold the view across steps that enter it again
        self._depth += 1
        if self.live and self._depth == 1:
            self._start_live()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._stop_live()

    def _start_live(self) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(
            self._phase or f"run {self.run_id}", total=None, count="", stats=""
        )

    def _stop_live(self) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """No live display inside (a phase with a display of its own: the image build)."""
        was_live = self._progress is not None
        self._stop_live()
        try:
            yield
        finally:
            if was_live:
                self._start_live()

    def _show(self, description: str, total: int | None, done: int, count: str, stats: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=description,
                total=total,
                completed=done,
                count=count,
                stats=stats,
            )

    def _line(self, text: str) -> None:
        """A line for the log (and above the live display)."""
        self._last_line = self._now()
        if self.level < 0:
            return
        stamp = f"{self._last_line - self.t0:7.1f}s"
        try:
            # one line per line in a log, however wide
            self.console.print(f"{stamp}  {text}", markup=False, highlight=False, soft_wrap=True)
        except OSError:
            pass  # the terminal is gone; the run goes on

    def line(self, text: str) -> None:
        """A stamped line within the current phase (e.g. one node's preflight)."""
        with self._lock:
            self._line(text)

    def note(self, text: str) -> None:
        """A message that is not a phase (a warning, a pending reason): always shown."""
        try:
            self.console.print(text, soft_wrap=not self.console.is_terminal)
        except OSError:
            pass

    # -- phases --------------------------------------------------------------------------

    def phase(self, name: str, detail: str = "") -> None:
        """The run enters phase `name` (connect, preflight, image, staging, starting,
        collecting, publishing, or the workload's init, training, evaluation)."""
        with self._lock:
            now = self._now()
            took = now - self._phase_at
            # On a terminal the bar shows the phase; above it, what ended and how long it took
            # (training and evaluation say so in their own result lines).
            if self.live and self._phase not in ("", name, "training", "evaluation") and took >= 1:
                self._line(f"{self._phase} done in {duration(took)}")
            self._phase, self._phase_at, self._latest = name, now, ""
            if self._progress is not None and self._task is not None:
                self._progress.reset(self._task, total=None, completed=0)
            self._show(name, None, 0, "", detail)
            self._line(f"{name}: {detail}" if detail else name)

    def tick(self) -> None:
        """Called from the poll loops: a plain log line when a phase has been quiet for
        `plain_every_s`, so a log never goes silent for long."""
        if self.live or not self._phase:
            return
        now = self.clock()
        every = self.plain_every_s or PLAIN_EVERY_S
        if now - self._last_line >= every:
            latest, self._latest = self._latest, ""
            if latest:  # a held-back event's line keeps the event's time
                self._event_at, self._latest_at = self._latest_at, None
                try:
                    self._line(latest)
                finally:
                    self._event_at = None
                return
            self._line(f"{self._phase}: still running after {duration(now - self._phase_at)}")

    # -- the workload's events -------------------------------------------------------------

    def event(self, event: dict[str, Any]) -> None:
        self.last_event_at = self.clock()
        at = event.get("at")
        self._event_at = float(at) if isinstance(at, (int, float)) else None
        try:
            self._event(event)
        finally:
            self._event_at = None

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self._start(event)
        elif kind == "phase":
            self._workload_phase(event)
        elif kind == "progress":
            self._training(event)
        elif kind == "eval_progress":
            self._evaluating(event)
        elif kind == "epoch_end":
            self._line(
                f"training: epoch {_int(event, 'epoch') + 1}/{event.get('epochs', '?')} done, "
                f"loss {_fmt_loss(_num(event, 'loss'))}, {duration(_num(event, 'train_s'))}"
                + _skipped(event)
            )
        elif kind == "eval":
            self._line(
                f"evaluation: epoch {_int(event, 'epoch') + 1} mAP {_fmt_map(_num(event, 'map'))} "
                f"on {_int(event, 'images')} images in {duration(_num(event, 'eval_s'))}"
            )
        elif kind == "done" and event.get("status") == "failed":
            self._line(f"workload failed: {event.get('error', '?')}")
        elif kind == "done":
            self.phase("finishing", "rank 0 wrote its results; waiting for every rank to exit")

    def _start(self, event: dict[str, Any]) -> None:
        self._totals = {
            key: _int(event, key)
            for key in ("epochs", "iterations_per_epoch", "steps", "val_images", "world_size")
        }
        t = self._totals
        self._line(
            f"init: {t['world_size']} process(es) on {event.get('device', '?')}, "
            f"{t['epochs']} epoch(s) of {t['iterations_per_epoch']} iterations "
            f"({t['steps']} planned), {_int(event, 'train_images')} training images, "
            f"{t['val_images']} for evaluation"
        )
        self._show("init", t["iterations_per_epoch"] or None, 0, "", "model ready")

    def _workload_phase(self, event: dict[str, Any]) -> None:
        name = str(event.get("phase") or "?")
        if name == "init":
            self.phase("init", "dataset, torch, process group, model")
            return
        epochs = event.get("epochs") or self._totals.get("epochs") or "?"
        self._epoch = _int(event, "epoch") + 1
        if name == "training":
            total = self._epoch_total(self._epoch)
            self.phase("training", f"epoch {self._epoch}/{epochs}, {total or '?'} iterations")
            self._show(f"epoch {self._epoch}/{epochs}", total or None, 0, f"0/{total} it", "")
        elif name == "evaluation":
            images = _int(event, "images")
            self.phase("evaluation", f"after epoch {self._epoch}, {images} images")
            self._show(f"eval epoch {self._epoch}", images or None, 0, f"0/{images} img", "")
        else:
            self.phase(name)

    def _epoch_total(self, epoch: int) -> int | None:
        """Iterations epoch `epoch` (from 1) will run: a full epoch, or what max_iters leaves."""
        per_epoch, steps = self._totals.get("iterations_per_epoch"), self._totals.get("steps")
        if not isinstance(per_epoch, int) or not per_epoch:
            return None
        if isinstance(steps, int) and steps > 0:
            return max(0, min(per_epoch, steps - (epoch - 1) * per_epoch))
        return per_epoch

    def _training(self, event: dict[str, Any]) -> None:
        epoch, epochs = _int(event, "epoch") + 1, event.get("epochs", "?")
        it, total = _int(event, "iteration"), _int(event, "iterations")
        stats = (
            f"loss {_fmt_loss(_num(event, 'loss'))}  "
            f"{sig3(_num(event, 'images_per_s')) or '?'} img/s  "
            f"epoch eta {eta(event.get('epoch_eta_s'))}  run eta {eta(event.get('eta_s'))}"
        )
        self._show(f"epoch {epoch}/{epochs}", total or None, it, f"{it}/{total} it", stats)
        self._throttled(f"training: epoch {epoch}/{epochs} iteration {it}/{total}, {stats}")

    def _evaluating(self, event: dict[str, Any]) -> None:
        done, total = _int(event, "images"), _int(event, "total")
        epoch = _int(event, "epoch") + 1
        scoring = "inference done, scoring (COCOeval)" if event.get("scoring") else ""
        self._show(f"eval epoch {epoch}", total or None, done, f"{done}/{total} img", scoring)
        self._throttled(
            f"evaluation: epoch {epoch}, {done}/{total} images"
            + (f", {scoring}" if scoring else "")
        )

    def _throttled(self, text: str) -> None:
        if self.live and self.level <= 0:
            return  # the bar shows it; -v prints every event above the bar as well
        if self._now() - self._last_line >= self.plain_every_s:
            self._latest = ""
            self._line(text)
        else:
            self._latest = text  # the next tick says it, when the 10 s are up
            self._latest_at = self._event_at


def _fmt_loss(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def _fmt_map(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def summary_line(
    status: str,
    run_id: str,
    wall_s: float | None,
    p_core: float | None,
    map_: float | None,
    run_dir: Any,
    stragglers: str | None = None,
) -> str:
    """The one line every run ends with; `stragglers`: the flagged ranks, short
    (runs/stragglers.stored_line), after the numbers."""
    numbers = []
    if p_core is not None:
        numbers.append(f"p_core {sig3(p_core)} img/s")
    if map_ is not None:
        numbers.append(f"mAP {map_:.3f}")
    if stragglers:
        numbers.append(stragglers)
    shown = ", ".join(numbers) or "no metrics"
    return f"{status}: run {run_id} in {duration(wall_s)}, {shown}, run folder {run_dir}"
