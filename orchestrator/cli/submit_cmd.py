"""`orchestrator submit` and `orchestrator doctor`."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from orchestrator.cli.context import (
    AppContext,
    command_line,
    open_store_for_submit,
    parse_duration,
    print_outcome,
    print_summary,
    runs_folder,
    say,
    stop_on_signals,
)
from orchestrator.cli.output import Output, Section, emit, format_option
from orchestrator.errors import ConfigError
from orchestrator.states import BACKENDS, PRECISIONS, BackendName, Precision

if TYPE_CHECKING:
    from orchestrator.backends.base import DoctorReport, PlannedRun
    from orchestrator.repeat_rule import RepeatRule
    from orchestrator.runs.lifecycle import Outcome, SubmitRequest
    from orchestrator.store import Store


def register(cli: click.Group) -> None:
    cli.add_command(submit)
    cli.add_command(doctor)


def detach_from_terminal(log: Path | None) -> None:
    """After SIGHUP: stdout and stderr go to `log` (or nowhere), stdin is /dev/null, so the
    process can go on following its run without a terminal."""
    target = str(log) if log is not None else os.devnull
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


class Hangup:
    """SIGHUP during a foreground submit: the run goes on and this process keeps following it
    in the background (its output in the run folder's submit.log); `orchestrator attach RUN`
    shows its progress again. Said once, then the terminal is let go."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run_id: str | None = None
        self.seen = False

    def __call__(self) -> None:
        if self.seen:
            return
        self.seen = True
        run_dir = self.folder / self.run_id if self.run_id else None
        log = run_dir / "submit.log" if run_dir is not None and run_dir.is_dir() else None
        where = f"; re-attach with `orchestrator attach {self.run_id}`" if self.run_id else ""
        output = f" (output: {log})" if log else ""
        say(f"\nSIGHUP: the run goes on; this process keeps following it{output}{where}")
        detach_from_terminal(log)


@click.command()
@click.argument("topology")
@click.option(
    "--nodes", "node_names", help="Comma-separated node names (default: the first that fit)."
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a hyper-parameter, e.g. --set bs=16 --set lr=0.16.",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Run N times in a row.",
)
@click.option(
    "--repeat-until",
    "repeat_until",
    metavar="PCT%",
    default=None,
    help="Repeat until the 95 % interval of the metric is within ±PCT % of its mean, e.g. 2% "
    "(docs/campaigns.md); failed runs are failures, not samples.",
)
@click.option(
    "--repeat-min", type=int, default=None, help="With --repeat-until: at least N runs [3]."
)
@click.option(
    "--repeat-max", type=int, default=None, help="With --repeat-until: at most N runs [10]."
)
@click.option(
    "--repeat-metric",
    default=None,
    help="With --repeat-until: the metric [p_core]; p_train, p_whole, e2e_time or map.",
)
@click.option(
    "--timeout", "timeout", default=None, help="Overall limit per run, e.g. 2h (default: none)."
)
@click.option(
    "--no-progress-timeout",
    default="30m",
    show_default=True,
    help="Stop when rank 0 reports nothing for this long.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local run folders [default: $ORCHESTRATOR_RUNS_DIR or ./runs].",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (every node's exact command) and touch nothing."
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Launch over SSH or through Slurm [default: the cluster file's backend].",
)
@click.option(
    "--detach", is_flag=True, help="Queue the run(s) for `orchestrator worker` and return at once."
)
@click.option(
    "--wait",
    "wait_for_nodes",
    is_flag=True,
    help="When another run holds the nodes, wait for them instead of refusing.",
)
@click.option(
    "--data-dir",
    help="The dataset (COCO 2017 layout) of this run, as the nodes see it, instead of the "
    "cluster file's [case] data_dir; a relative path is made absolute from here.",
)
@click.option(
    "--backbone-weights",
    help="The ResNet-50 checkpoint of this run ('none': from scratch), instead of [case] "
    "backbone_weights.",
)
@click.pass_obj
def submit(
    app: AppContext,
    topology: str,
    node_names: str | None,
    precision: Precision,
    sets: tuple[str, ...],
    repeat: int,
    repeat_until: str | None,
    repeat_min: int | None,
    repeat_max: int | None,
    repeat_metric: str | None,
    timeout: str | None,
    no_progress_timeout: str | None,
    runs_dir: str | None,
    dry_run: bool,
    backend: BackendName | None,
    detach: bool,
    wait_for_nodes: bool,
    data_dir: str | None,
    backbone_weights: str | None,
) -> None:
    """Run the Faster R-CNN benchmark on TOPOLOGY (NODESxPROCESSES, e.g. 2x8).

    Connects to the nodes, checks them (preflight), starts torchrun on all of them at once,
    shows rank 0's progress, stops every node on any failure or Ctrl-C, collects the per-rank
    results into ./runs/RUN_ID and stores them. Exit code 0 only when every run succeeded; 1
    failed, 4 cancelled by `orchestrator cancel`, 130 Ctrl-C, 143 SIGTERM (docs/output.md).

    \b
    Examples:
      orchestrator submit 1x2 --set max_iters=20
      orchestrator submit 1x1 --data-dir /data/coco2017 --backbone-weights none
      orchestrator --cluster lab.toml submit 2x8 --precision amp --set bs=16 --set lr=0.16
      orchestrator --cluster lab.toml submit 2x8 --dry-run
    """
    from orchestrator import backends
    from orchestrator.plan import parse_sets
    from orchestrator.repeat_rule import rule_from_options
    from orchestrator.runs.lifecycle import SubmitRequest
    from orchestrator.specs import Topology, with_inputs

    rule = rule_from_options(repeat_until, repeat_min, repeat_max, repeat_metric)
    if rule is not None and repeat != 1:
        raise ConfigError("--repeat and --repeat-until are both given", "keep one of them")
    if rule is not None and detach:
        raise ConfigError(
            "--repeat-until runs in the foreground only",
            "leave out --detach, or write the rule in a campaign file (docs/campaigns.md)",
        )
    topo = Topology.parse(topology)
    data, weights = _input_path(data_dir), _input_path(backbone_weights)
    req = SubmitRequest(
        topology=topo,
        node_names=tuple(n.strip() for n in node_names.split(",") if n.strip())
        if node_names
        else None,
        precision=precision,
        sets=tuple(parse_sets(list(sets)).items()),
        timeout_s=parse_duration(timeout, "--timeout"),
        no_progress_timeout_s=parse_duration(no_progress_timeout, "--no-progress-timeout"),
        command=command_line(),
        data_dir=data,
        backbone_weights=weights,
    )
    cluster = with_inputs(app.cluster, data, weights)
    if backend and backend != cluster.backend:
        cluster = dataclasses.replace(cluster, backend=backend)
    chosen = backends.for_cluster(cluster)
    first = chosen.plan(cluster, req)  # pure: a bad --set or topology fails before any write
    if detach and not dry_run:
        from orchestrator.cli import with_global_options
        from orchestrator.queue.enqueue import EnqueueItem, detach_hints, enqueue_runs

        items: list[EnqueueItem] = [(cluster, req, {}) for _ in range(repeat)]
        with open_store_for_submit(app) as store:
            ids = enqueue_runs(store, items)
        for run_id in ids:
            click.echo(run_id)
        for hint in detach_hints(items):
            click.echo(with_global_options(hint, app), err=True)
        return
    if dry_run:
        click.echo(first.render(), nl=False)
        click.echo(
            f"dry run: nothing was started or stored; run id {first.job.run_id} is a placeholder "
            "(each submit picks its own)",
            err=True,
        )
        return
    _run_repeats(
        app, req, repeat, runs_dir, lambda: chosen.plan(cluster, req), wait_for_nodes, rule
    )


def _input_path(text: str | None) -> str | None:
    """An absolute path (the nodes do not share this process's working directory); `none`
    stays `none` (backbone weights: train from scratch)."""
    if text is None:
        return None
    if not text.strip():
        raise ConfigError("an empty path was given", "name a folder or file, or leave it out")
    if text.strip().lower() == "none":
        return "none"
    return str(Path(text).expanduser().absolute())


def _run_repeats(
    app: AppContext,
    req: SubmitRequest,
    repeat: int,
    runs_dir: str | None,
    make: Callable[[], PlannedRun],
    wait_for_nodes: bool = False,
    rule: RepeatRule | None = None,
) -> None:
    """Run the request `repeat` times in a row (stopping early on Ctrl-C), or with a rule up
    to its maximum until it holds; exit 0 only when every run succeeded."""
    from orchestrator.runs.lifecycle import raise_for
    from orchestrator.runs.stopping import cause_of

    console = Console(stderr=True)
    folder = runs_folder(runs_dir)
    hangup = Hangup(folder)
    with open_store_for_submit(app) as store, stop_on_signals(hangup) as stop:
        app.settle_orphans(store, console)
        outcomes = []
        repeat = rule.max if rule else repeat
        for i in range(repeat):
            planned = make()
            if not wait_for_nodes:
                planned.check_free(store)
            hangup.run_id = planned.job.run_id
            console.print(
                f"[bold]run {planned.job.run_id}[/] ({i + 1}/{repeat}): {req.topology} "
                f"{planned.where()}, {req.precision}"
            )
            began = time.monotonic()
            outcome = _execute_when_free(
                app, store, console, stop, planned, wait_for_nodes, req, folder
            )
            outcomes.append(outcome)
            _print_outcome(store, outcome, time.monotonic() - began)
            if stop.is_set():
                break
            if rule is not None:
                verdict = rule.verdict([_sample(o, rule.metric) for o in outcomes])
                console.print(verdict.describe(), markup=False, highlight=False)
                if verdict.holds:
                    break
    for outcome in outcomes:
        raise_for(outcome, cause_of(stop))


def _sample(outcome: Outcome, metric: str) -> tuple[str, float | None]:
    """(status, value) of a run for a repeat rule: a failed run has no sample."""
    m = outcome.summary.metrics if outcome.summary else None
    if m is None:
        return (outcome.status, None)
    values = {
        "e2e_time": m.e2e_time_s,
        "p_whole": m.p_whole,
        "p_train": m.p_train,
        "p_core": m.p_core,
        "map": m.map,
    }
    return (outcome.status, values[metric])


def _execute_when_free(
    app: AppContext,
    store: Store,
    console: Console,
    stop: threading.Event,
    planned: PlannedRun,
    wait_for_nodes: bool,
    req: SubmitRequest,
    folder: Path,
) -> Outcome:
    """Execute the plan; with --wait, a run that holds the nodes is waited for (and an
    abandoned one settled) instead of refusing."""
    from orchestrator.errors import RunCancelled
    from orchestrator.runs.stopping import EXIT_SIGINT, cause_of, stop_reason
    from orchestrator.store.leases import NodesBusy

    said = False
    while True:
        try:
            return planned.execute(req, store, folder, stop, console)
        except NodesBusy as exc:
            if not wait_for_nodes:
                raise
            if not said:
                console.print(f"[yellow]waiting: {exc.message}[/]")
                said = True
        if stop.wait(5.0):
            cause = cause_of(stop)
            raise RunCancelled(
                f"stopped while waiting for the nodes ({stop_reason(stop)})",
                "nothing was started",
                cause.exit_code if cause else EXIT_SIGINT,
            )
        app.settle_orphans(store, console)


def _print_outcome(store: Store, outcome: Outcome, wall_s: float) -> None:
    print_outcome(store, outcome.run_id, outcome.status)
    print_summary(store, outcome.run_id, outcome.run_dir, wall_s)


@click.command()
@click.argument("topology", default="")
@click.option("--nodes", "node_names", help="Comma-separated node names (default: every node).")
@click.option(
    "--data-dir",
    help="Check this dataset (as submit --data-dir would use it) instead of [case] data_dir.",
)
@click.option(
    "--backbone-weights",
    help="Check this checkpoint (as submit --backbone-weights) instead of [case] backbone_weights.",
)
@click.option(
    "--health",
    "with_health",
    is_flag=True,
    help="Then run the health checks on the TOPOLOGY's nodes (`orchestrator health`).",
)
@format_option()
@click.pass_obj
def doctor(
    app: AppContext,
    topology: str,
    node_names: str | None,
    data_dir: str | None,
    backbone_weights: str | None,
    with_health: bool,
    output: str,
) -> None:
    """Check that nodes are ready to run TOPOLOGY: reachable, host key known, torch (or Docker),
    accelerators, dataset, weights, disk, InfiniBand; with the docker runtime, the profile's
    needed devices and whether each daemon accepts the node's runtime options (tried with an
    image of the profile the node holds). Prints a report per node. On a Slurm
    cluster: Slurm's commands, the controller, the partition, shared_dir, and `sbatch
    --test-only` of the exact job `submit` would send (no job is created). Exit code 3 when
    something is not ready.

    \b
    Examples:
      orchestrator doctor
      orchestrator --cluster lab.toml doctor 2x8 --format json
      orchestrator doctor 1x1 --data-dir /data/coco2017   # what submit --data-dir would read
      orchestrator doctor 2x8 --health                     # then the health checks (docs/health.md)
    """
    from orchestrator import backends
    from orchestrator.specs import with_inputs

    cluster = with_inputs(app.cluster, _input_path(data_dir), _input_path(backbone_weights))
    if with_health and not topology:
        raise ConfigError(
            "doctor --health needs a TOPOLOGY", "e.g. orchestrator doctor 2x8 --health"
        )
    found = backends.for_cluster(cluster).doctor(cluster, topology or None, node_names)
    checked = doctor_output(found)
    if not (with_health and found.ok):
        emit(checked, output)
        if not found.ok:
            raise SystemExit(3)
        return
    # only on nodes found ready: the probe needs SSH and torch there
    from orchestrator.cli.health_cmd import EXIT_UNHEALTHY, health_output, run_health

    report, check_id, wall = run_health(app, topology, node_names, "fp32", None)
    probed = health_output(report, check_id, topology, wall)
    if output == "json":  # one document: {"doctor": ..., "health": ...}
        emit(Output([], {"doctor": checked.document, "health": probed.document}), output)
    else:
        emit(checked, output)
        emit(probed, output)
    if not report.ok:
        raise SystemExit(EXIT_UNHEALTHY)


def doctor_output(found: DoctorReport) -> Output:
    rows = [[c.node, c.check, "ok" if c.ok else "FAIL", c.detail] for c in found.checks]
    columns = ["node", "check", "ok", "detail"]
    if not any(c.node for c in found.checks):  # Slurm: checks of the whole cluster
        rows, columns = [row[1:] for row in rows], columns[1:]
    document = {
        "cluster": found.cluster,
        "source": found.source,
        "ok": found.ok,
        "checks": [
            {"node": c.node or None, "check": c.check, "ok": c.ok, "detail": c.detail}
            for c in found.checks
        ],
        "notes": list(found.notes),
    }
    verdict = found.ready if found.ok else found.not_ready
    return Output(
        [Section(f"doctor: {found.cluster} ({found.source})", columns, rows)],
        document,
        footer=[*found.notes, verdict],
    )
