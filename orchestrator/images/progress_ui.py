"""Live progress of builds and transfers for the CLI: Rich on a terminal, plain lines elsewhere.

with build_progress(console) as observer:      # -> BuildObserver
    build_image(spec, api, observer=observer)
with transfer_progress(console) as progress:   # -> ProgressFn(node, sent, total)
    distribute(api, tag, targets, progress=progress)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from orchestrator.images.build import BuildObserver
from orchestrator.images.distribute import ProgressFn

PLAIN_EVERY_S = 10.0


@contextmanager
def build_progress(console: Console, verbose: bool = False) -> Iterator[BuildObserver]:
    """Steps as they start (and every output line with `verbose`), the context upload as a bar."""
    if not console.is_terminal:
        last = [0.0]

        def plain_upload(sent: int, total: int) -> None:
            now = time.monotonic()
            if sent >= total or now - last[0] >= PLAIN_EVERY_S:
                last[0] = now
                console.print(f"build context: {sent / 1e6:.0f} of {total / 1e6:.0f} MB sent")

        yield BuildObserver(
            on_line=(lambda line: console.print(line, markup=False, highlight=False))
            if verbose
            else None,
            on_step=lambda n, m, what: console.print(
                f"step {n}/{m}: {what}", markup=False, highlight=False
            ),
            on_upload=plain_upload,
        )
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        upload = progress.add_task("build context", total=None)

        def on_upload(sent: int, total: int) -> None:
            progress.update(upload, completed=sent, total=total)

        def on_step(n: int, m: int, what: str) -> None:
            progress.console.print(f"[bold]step {n}/{m}[/]: {what}", highlight=False)

        def on_line(line: str) -> None:
            if verbose:
                progress.console.print(line, markup=False, highlight=False)

        yield BuildObserver(on_line=on_line, on_step=on_step, on_upload=on_upload)


@contextmanager
def transfer_progress(console: Console) -> Iterator[ProgressFn]:
    """One bar per node, in bytes, as `docker load` receives the image."""
    lock = threading.Lock()
    if not console.is_terminal:
        last: dict[str, float] = {}

        def plain(node: str, sent: int, total: int) -> None:
            now = time.monotonic()
            with lock:
                if now - last.get(node, 0.0) < PLAIN_EVERY_S:
                    return
                last[node] = now
            console.print(f"{node}: {sent / 1e6:.0f} of ~{total / 1e6:.0f} MB sent")

        yield plain
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[str, TaskID] = {}
    with progress:

        def update(node: str, sent: int, total: int) -> None:
            with lock:
                if node not in tasks:
                    tasks[node] = progress.add_task(node, total=total or None)
                task = tasks[node]
            # The saved stream is a little larger than the image's size: grow the total.
            progress.update(task, completed=sent, total=max(total, sent) or None)

        yield update


@contextmanager
def image_progress(
    console: Console, verbose: bool = False
) -> Iterator[tuple[BuildObserver, ProgressFn]]:
    """Build and transfer progress in ONE live display (older Rich allows only one at a time):
    `with image_progress(console) as (observer, progress): ensure_image(..., observer=observer,
    progress=progress)`."""
    if not console.is_terminal:
        with build_progress(console, verbose) as plain_observer, transfer_progress(
            console
        ) as plain:
            yield plain_observer, plain
        return
    display = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    lock = threading.Lock()
    tasks: dict[str, TaskID] = {}

    def task(name: str, total: int) -> TaskID:
        with lock:
            if name not in tasks:
                tasks[name] = display.add_task(name, total=total or None)
            return tasks[name]

    def on_line(line: str) -> None:
        if verbose:
            display.console.print(line, markup=False, highlight=False)

    observer = BuildObserver(
        on_line=on_line,
        on_step=lambda n, m, what: display.console.print(
            f"[bold]step {n}/{m}[/]: {what}", highlight=False
        ),
        on_upload=lambda sent, total: display.update(
            task("build context", total), completed=sent, total=total
        ),
    )

    def progress(node: str, sent: int, total: int) -> None:
        display.update(task(node, total), completed=sent, total=max(total, sent) or None)

    with display:
        yield observer, progress
