"""Live progress from rank 0's JSON event lines: a Rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


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


class ProgressView:
    """Shows epoch, iteration, loss, images/s and ETA of the run."""

    def __init__(
        self,
        run_id: str,
        console: Console | None = None,
        plain_every_s: float = 10.0,
        live: bool = True,
    ):
        self.console = console or Console(stderr=True)
        self.run_id = run_id
        # live=False: plain lines only (a worker following several runs from threads; rich
        # allows one live display at a time)
        self.live = live and self.console.is_terminal
        self.plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._progress: Progress | None = None
        self._task: Any = None
        self.last_event_at = time.monotonic()

    def __enter__(self) -> ProgressView:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(f"{self.run_id} starting", total=None, stats="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def note(self, text: str) -> None:
        self.console.print(text)

    def event(self, event: dict[str, Any]) -> None:
        self.last_event_at = time.monotonic()
        kind = event.get("event")
        if kind == "progress":
            # Epochs are 0-based in the events; people count from 1.
            epoch, epochs = int(event.get("epoch", 0)) + 1, event.get("epochs", "?")
            it, total = event.get("iteration", 0), event.get("iterations")
            stats = "loss {:.3f}  {:.1f} img/s  eta {}".format(
                float(event.get("loss") or 0.0),
                float(event.get("images_per_s") or 0.0),
                _eta(event.get("eta_s")),
            )
            if self._progress is not None:
                self._progress.update(
                    self._task,
                    description=f"epoch {epoch}/{epochs}",
                    completed=it,
                    total=total,
                    stats=stats,
                )
            elif time.monotonic() - self._last_plain >= self.plain_every_s:
                self._last_plain = time.monotonic()
                print(
                    f"  epoch {epoch}/{epochs} iter {it}/{total}  {stats}",
                    file=sys.stderr,
                    flush=True,
                )
        elif kind == "eval":
            self.note(
                f"  eval after epoch {_human(event.get('epoch'))}: mAP {_fmt(event.get('map'))}"
            )
        elif kind == "epoch_end":
            self.note(
                f"  epoch {_human(event.get('epoch'))} done: loss {_fmt(event.get('loss'))}, "
                f"{_fmt(event.get('train_s'))} s"
            )


def _human(epoch: Any) -> str:
    return str(epoch + 1) if isinstance(epoch, int) else str(epoch)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _eta(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
