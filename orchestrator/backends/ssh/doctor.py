"""`orchestrator doctor`: the preflight of a submission, on demand, as a per-node report."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.backends.ssh.preflight import NodeReport, probe_all
from orchestrator.plan import make_job
from orchestrator.specs import ClusterSpec, Topology, pick_nodes


def run_doctor(
    cluster: ClusterSpec, topology: str | None, node_names: str | None, console: Console
) -> bool:
    """Check the nodes a TOPOLOGY would use (default: every node, one process each)."""
    from orchestrator.images.profiles import load_profile
    from orchestrator.transport import NodeSession

    names = [n.strip() for n in node_names.split(",") if n.strip()] if node_names else None
    if topology:
        topo = Topology.parse(topology)
        nodes = pick_nodes(cluster, topo, names)
    else:
        nodes = tuple(cluster.node(n) for n in names) if names else cluster.nodes
        topo = Topology(len(nodes), 1)
    job = make_job(cluster, topo, nodes, run_id="doctor")
    monitor = load_profile(cluster.vendor).runtime.monitor
    with NodeSession(list(nodes), cluster.ssh, require_all=False) as session:
        reports = probe_all(
            session, job, smi=monitor[0] if monitor else None, docker=cluster.runtime == "docker"
        )
        for name, why in session.connect_failures.items():
            reports[name] = NodeReport(name, [{"name": "connect", "ok": False, "detail": why}])
        connect_error = session.connect_error()
    table = Table(
        "node", "check", "ok", "detail", title=f"doctor: {cluster.name} ({cluster.source})"
    )
    all_ok = True
    for node in nodes:
        report = reports[node.name]
        all_ok &= report.ok
        for i, check in enumerate(report.checks):
            table.add_row(
                node.name if i == 0 else "",
                check["name"],
                "[green]ok[/]" if check["ok"] else "[red]FAIL[/]",
                str(check["detail"]),
            )
    console.print(table)
    if connect_error is not None:
        # The line `submit` fails with, remedies included (e.g. the `ssh-keygen -R` command of
        # a changed host key), on one unwrapped line: the table above folds long details.
        console.print(Text(connect_error.one_line(), style="red"), soft_wrap=True)
    console.print("[green]all nodes ready[/]" if all_ok else "[red]some nodes are not ready[/]")
    return all_ok
