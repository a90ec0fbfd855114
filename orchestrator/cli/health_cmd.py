"""`orchestrator health NxM` and `orchestrator nodes show|release` (docs/health.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.context import AppContext, open_store_for_submit, runs_folder, stop_on_signals
from orchestrator.cli.output import Output, Section, emit, format_option
from orchestrator.states import PRECISIONS, Precision

if TYPE_CHECKING:
    from orchestrator.runs.health import Figure, HealthReport

EXIT_UNHEALTHY = 3  # as doctor's "not ready"


def register(cli: click.Group) -> None:
    cli.add_command(health)
    cli.add_command(nodes)


@click.command()
@click.argument("topology")
@click.option("--nodes", "node_names", help="Comma-separated node names (default: as submit).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the probe's files go (under health/) [default: $ORCHESTRATOR_RUNS_DIR or ./runs].",
)
@format_option()
@click.pass_obj
def health(
    app: AppContext,
    topology: str,
    node_names: str | None,
    precision: Precision,
    runs_dir: str | None,
    output: str,
) -> None:
    """Probe the nodes a TOPOLOGY run would take: compute per device, all-reduce bus bandwidth
    over all ranks and within each node, node-to-node bandwidth of each pair; each figure
    judged against its expected value ([health] in the cluster file, docs/health.md) and
    stored. Exit code 3 when a figure is below its threshold.

    \b
    Examples:
      orchestrator --cluster lab.toml health 2x8
      orchestrator --cluster lab.toml health 4x1 --format json
    """
    report, check_id, wall = run_health(app, topology, node_names, precision, runs_dir)
    emit(health_output(report, check_id, topology, wall), output)
    if not report.ok:
        raise SystemExit(EXIT_UNHEALTHY)


def run_health(
    app: AppContext,
    topology: str,
    node_names: str | None,
    precision: Precision,
    runs_dir: str | None,
) -> tuple[HealthReport, int, float]:
    """Probe, judge and store, on the nodes submit would choose (free of runs)."""
    from rich.console import Console

    from orchestrator.backends import for_cluster
    from orchestrator.backends.base import HealthRequest
    from orchestrator.specs import Topology, pick_nodes

    cluster = app.cluster
    names = tuple(n.strip() for n in node_names.split(",") if n.strip()) if node_names else None
    # A topology or node list the cluster cannot serve is refused before the store is opened.
    pick_nodes(cluster, Topology.parse(topology), list(names) if names else None)
    began = time.monotonic()
    console = Console(stderr=True)
    with open_store_for_submit(app) as store, stop_on_signals() as stop:
        request = HealthRequest(
            cluster, topology, names, precision, store, runs_folder(runs_dir), stop, console
        )
        report, check_id = for_cluster(cluster).health(request)
    return report, check_id, time.monotonic() - began


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _verdict(fig: Figure) -> str:
    text = {"ok": "ok", "fail": "FAIL", "unjudged": "—"}[fig.verdict]
    return f"{text} (exempt)" if fig.exempt else text


def _row(fig: Figure) -> list[str]:
    threshold = None if fig.expected is None else fig.expected * fig.fraction
    return [
        _value(fig.value),
        _value(fig.expected),
        fig.expected_from,
        _value(threshold),
        _verdict(fig),
    ]


def health_output(report: HealthReport, check_id: int, topology: str, wall_s: float) -> Output:
    tail = ["value", "expected", "from", "threshold", "verdict"]
    compute = [[f.node, str(f.device), *_row(f)] for f in report.figures if f.check == "compute"]
    pairs = [[f"{f.node} - {f.peer}", *_row(f)] for f in report.figures if f.check == "pair"]
    reduce = [
        [
            f"all {f.ranks} ranks" if f.check == "allreduce" else f"{f.node} ({f.ranks} ranks)",
            *_row(f),
        ]
        for f in report.figures
        if f.check in ("allreduce", "intra")
    ]
    verdict = "ok" if report.ok else f"FAIL: {', '.join(report.blamed()) or 'the fabric'}"
    document = {
        "check_id": check_id,
        "topology": topology,
        "nodes": list(report.nodes),
        "ok": report.ok,
        "blamed": list(report.blamed()),
        "probe_s": report.took_s,
        "wall_s": wall_s,
        "figures": [figure_doc(f) for f in report.figures],
        "probe": dict(report.doc),
    }
    return Output(
        [
            Section("compute per device (GFLOP/s)", ["node", "device", *tail], compute),
            Section("node pairs: all-reduce busBW (GB/s)", ["pair", *tail], pairs),
            Section("all-reduce busBW (GB/s)", ["ranks", *tail], reduce),
        ],
        document,
        footer=[
            f"health {topology}: {verdict}; probe {report.took_s:.1f} s, in all {wall_s:.1f} s "
            f"(check {check_id})"
        ],
    )


def figure_doc(fig: Figure) -> dict[str, Any]:
    return {
        "check": fig.check,
        "node": fig.node,
        "peer": fig.peer,
        "device": fig.device,
        "ranks": fig.ranks,
        "value": fig.value,
        "unit": fig.unit,
        "expected": fig.expected,
        "expected_from": fig.expected_from,
        "fraction": fig.fraction,
        "verdict": fig.verdict,
        "exempt": fig.exempt,
    }


@click.group()
def nodes() -> None:
    """A node's health over time, and its quarantine."""


@nodes.command("show")
@click.argument("node")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@format_option()
@click.pass_obj
def nodes_show(app: AppContext, node: str, limit: int, output: str) -> None:
    """NODE's health figures over time (newest first) and whether it is quarantined."""
    from orchestrator.store import health as health_rows
    from orchestrator.store import quarantine

    cluster = app.cluster
    cluster.node(node)  # a name the cluster file does not have: one line, the known ones
    with app.open_store() as store, store.reading() as conn:
        figures = health_rows.node_figures(conn, node, cluster.name, limit)
        held = [q for q in quarantine.active(conn, cluster.name) if q.node == node]
    rows = [
        [
            f["measured_at"][:19],
            f["check_name"],
            f["peer_name"] if f["node_name"] == node else f["node_name"] or "",
            "" if f["device_index"] is None else str(f["device_index"]),
            _value(f["value"]),
            f["unit"],
            _value(f["expected"]),
            f["verdict"],
            f["gated_run_id"] or "",
        ]
        for f in figures
    ]
    state = (
        f"{node}: quarantined until {held[0].expires_at.isoformat(timespec='seconds')}: "
        f"{held[0].reason}"
        if held
        else f"{node}: not quarantined"
    )
    document = {
        "node": node,
        "cluster": cluster.name,
        "quarantined": bool(held),
        "quarantine": {
            "reason": held[0].reason,
            "since": held[0].since.isoformat(),
            "expires_at": held[0].expires_at.isoformat(),
        }
        if held
        else None,
        "figures": figures,
    }
    columns = [
        "time",
        "check",
        "peer",
        "device",
        "value",
        "unit",
        "expected",
        "verdict",
        "gated run",
    ]
    section = Section(f"health of {node}", columns, rows, empty=f"no health figures of {node} yet")
    emit(Output([section], document, footer=[state]), output)


@nodes.command("release")
@click.argument("node")
@click.pass_obj
def nodes_release(app: AppContext, node: str) -> None:
    """Lift NODE's quarantine: queued runs may take it again."""
    from orchestrator.store import quarantine

    cluster = app.cluster
    cluster.node(node)
    with app.open_store() as store, store.transaction() as conn:
        lifted = quarantine.release(conn, cluster.name, node)
    click.echo(f"{node}: released" if lifted else f"{node}: was not quarantined")
