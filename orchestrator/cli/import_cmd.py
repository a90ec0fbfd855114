"""`orchestrator import flagperf PATH`: other tools' results into the store, as run folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from orchestrator.cli.context import AppContext, runs_folder
from orchestrator.states import PRECISIONS, Precision


@click.group("import")
def import_group() -> None:
    """Import results of other benchmark tools into the results store."""


@import_group.command("flagperf")
@click.argument("path", type=click.Path())
@click.option("--vendor", help="The runs' vendor, when FlagPerf's hardware name does not say it.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="The precision the FlagPerf configuration ran (its logs do not say).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    help="Where the run folders are kept. Default: $ORCHESTRATOR_RUNS_DIR, else ./runs.",
)
@click.pass_obj
def flagperf(
    app: AppContext, path: str, vendor: str | None, precision: str, runs_dir: str | None
) -> None:
    """Read FlagPerf's faster_rcnn result logs into the store, one run per case and round.

    PATH is FlagPerf's log folder (FLAGPERF_LOG_PATH), one of its run<time> folders, or a case,
    round or node folder in it. Each node's FINISHED line gives e2e_time, the three throughputs
    and final_mAP; the folder names give the case, vendor and topology. Every log is checked
    before anything is written; importing the same logs again changes nothing. The runs show in
    report beside native ones (docs/flagperf.md).

    \b
    Example: orchestrator import flagperf /home/FlagPerf/training/result/run20240611103000
    """
    from orchestrator.interchange.flagperf import read_logs
    from orchestrator.interchange.flagperf_folder import write_folder

    chosen: Precision = next(p for p in PRECISIONS if p == precision)
    runs = read_logs(Path(path), vendor)
    home = runs_folder(runs_dir)
    staging = home / f".import-{os.getpid()}"
    try:
        staged = [write_folder(run, chosen, staging / run.run_id) for run in runs]
        with app.open_store() as store:
            summaries = store.ingest(staged)  # all runs in one transaction, or none
        for folder in staged:  # the folders stay, like a submitted run's, replayable
            final = home / folder.name
            shutil.rmtree(final, ignore_errors=True)
            folder.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for run, summary in zip(runs, summaries):
        what = "stored" if summary.changed else "unchanged (already in the store)"
        metrics = summary.metrics
        numbers = (
            f", p_train {metrics.p_train:.1f} img/s, mAP {metrics.map:.3f}"
            if metrics and metrics.map is not None
            else ""
        )
        click.echo(
            f"{run.run_id}: FlagPerf {run.case.key} round {run.result.round}{numbers}: {what}"
        )


def register(cli: click.Group) -> None:
    cli.add_command(import_group)
