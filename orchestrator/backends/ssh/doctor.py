"""`orchestrator doctor`: the preflight of a submission, on demand, as a per-node report."""

from __future__ import annotations

from typing import Any

from orchestrator.backends.base import DoctorCheck, DoctorReport
from orchestrator.backends.ssh.preflight import NodeReport, probe_all, shared_workdirs
from orchestrator.plan import make_job
from orchestrator.specs import ClusterSpec, NodeSpec, Topology, pick_nodes


def run_doctor(cluster: ClusterSpec, topology: str | None, node_names: str | None) -> DoctorReport:
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
        trials = _runtime_trials(session, cluster, nodes, reports)
        for name, why in shared_workdirs(reports, {n.name: n.workdir for n in nodes}).items():
            reports[name].checks.append({"name": "workdir shared", "ok": False, "detail": why})
        for name, why in session.connect_failures.items():
            reports[name] = NodeReport(name, [{"name": "connect", "ok": False, "detail": why}])
        connect_error = session.connect_error()
    checks = [
        DoctorCheck(node.name, str(check["name"]), bool(check["ok"]), str(check["detail"]))
        for node in nodes
        for check in reports[node.name].checks
    ]
    checks += [
        DoctorCheck(node.name, "runtime options", *trials[node.name])
        for node in nodes
        if node.name in trials
    ]
    # The line `submit` fails with, remedies included (e.g. the `ssh-keygen -R` command of a
    # changed host key), whole: a table folds long details.
    notes = (connect_error.one_line(),) if connect_error is not None else ()
    return DoctorReport(cluster.name, cluster.source, tuple(checks), notes)


def _runtime_trials(
    session: Any, cluster: ClusterSpec, nodes: tuple[NodeSpec, ...], reports: dict[str, NodeReport]
) -> dict[str, tuple[bool, str]]:
    """The docker runtime: does each reachable node's daemon accept its runtime options?"""
    if cluster.runtime != "docker":
        return {}
    from orchestrator.backends.ssh.runtime_check import device_facts, doctor_trials
    from orchestrator.images.profiles import load_profile

    facts = device_facts({name: r.env for name, r in reports.items()})
    return doctor_trials(session, load_profile(cluster.vendor), nodes, facts)
