"""The health probe over SSH (docs/health.md): the same nodes, runtime and torchrun launch as
a run, with workload/health_probe.py as what torchrun starts; its figures judged and stored.
Used by `orchestrator health NxM`, `doctor --health` and the gate before a run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends.ssh.launch import Watch, collect, stage
from orchestrator.backends.ssh.submit import container_cleanup, make_plan
from orchestrator.clock import utcnow
from orchestrator.errors import NodeError
from orchestrator.health_settings import HealthSettings
from orchestrator.plan import Plan, new_run_id
from orchestrator.runs.health import HealthReport, judge, refusal
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.runs.progress import ProgressView
from orchestrator.specs import ClusterSpec, JobSpec, Topology
from orchestrator.states import Precision
from orchestrator.store import health as health_rows
from orchestrator.store import quarantine

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.backends.base import HealthRequest
    from orchestrator.store import Store
    from orchestrator.transport import NodeSession

# Each node's device files found by preflight (backends/ssh/runtime_check.py: device_facts).
DeviceFacts = Mapping[str, Mapping[str, bool]]
PROBE_MODULE = "workload.health_probe"
HEALTH_FILE = "health.json"
STAGE_TIMEOUT_S = 300.0
START_TIMEOUT_S = 60.0


class HealthProbeFailed(NodeError):
    """The probe itself did not finish (within its budget, or a rank failed)."""


def probe_entry(settings: HealthSettings) -> Callable[[JobSpec, str], list[str]]:
    """The plan's `entry`: torchrun starts the probe with the [health] settings."""

    def entry(job: JobSpec, output_dir: str) -> list[str]:
        return [
            "-m",
            PROBE_MODULE,
            "--output-dir",
            output_dir,
            "--precision",
            job.precision,
            "--sizes-mib",
            ",".join(f"{size:g}" for size in settings.sizes_mib),
            "--iters",
            str(settings.iters),
            "--compute-s",
            f"{settings.compute_s:g}",
            "--pairs",
            settings.pairs,
            "--timeout-s",
            f"{settings.time_budget_s:g}",
        ]

    return entry


def probe_plan(
    cluster: ClusterSpec,
    topology: Topology,
    node_names: Sequence[str] | None,
    precision: Precision,
    *,
    image: str | None = None,
    image_id: str | None = None,
    facts: DeviceFacts | None = None,
    salt: str = "",
) -> Plan:
    """The probe's plan: a run's plan (same node choice, runtime and devices) whose torchrun
    starts the probe; its own run id, so its folders and processes are its own."""
    req = SubmitRequest(
        topology=topology,
        node_names=tuple(node_names) if node_names else None,
        precision=precision,
    )
    run_id = f"health-{new_run_id(salt=salt)}"
    return make_plan(
        cluster,
        req,
        run_id=run_id,
        image=image,
        image_id=image_id,
        facts=facts,
        entry=probe_entry(cluster.health),
    )


def run_probe(
    session: NodeSession,
    plan: Plan,
    local_dir: Path,
    view: ProgressView,
    stop: threading.Event,
) -> dict[str, Any]:
    """Stage, start the probe on every node, follow it within the time budget, collect; its
    health.json. The budget counts from the start of torchrun, so a hung collective or a node
    that cannot be reached at all ends the probe within it."""
    budget = plan.job.cluster.health.time_budget_s
    t0 = time.monotonic()  # each phase's seconds go into the figures' document
    stage(session, plan, STAGE_TIMEOUT_S)
    t1 = time.monotonic()
    watch = Watch(plan, session, view, stop, container_cleanup(plan))
    watch.start(START_TIMEOUT_S)
    t2 = time.monotonic()
    try:
        execution = watch.follow(budget, None)
    except BaseException:
        watch.stop_all()
        raise
    t3 = time.monotonic()
    problems = collect(session, plan, local_dir, STAGE_TIMEOUT_S)
    phases = {"stage": t1 - t0, "start": t2 - t1, "probe": t3 - t2}
    phases["collect"] = time.monotonic() - t3
    if execution.status != "succeeded":
        why = execution.failure.reason if execution.failure else execution.status
        raise HealthProbeFailed(
            f"the health probe did not finish ({why}; output in {local_dir})",
            remedy="see the logs there; raise [health] time_budget_s if the nodes are only slow",
        )
    found = local_dir / "ranks" / HEALTH_FILE
    if not found.is_file():
        raise HealthProbeFailed(
            "the health probe wrote no figures", problems, f"see the logs in {local_dir}"
        )
    doc = dict(json.loads(found.read_text()))
    doc["phases_s"] = phases  # here: staging, torchrun's start, the probe, collecting
    return doc


def judge_and_record(
    store: Store,
    plan: Plan,
    doc: dict[str, Any],
    gated_run_id: str | None,
    started_at: datetime,
) -> tuple[HealthReport, int]:
    """Judge the figures (own medians from the store) and store them; (report, check id)."""
    job = plan.job
    cluster = job.cluster
    names = [n.name for n in job.nodes]
    with store.reading() as conn:
        history = health_rows.passing_history(
            conn, cluster.name, names, job.precision, cluster.health.history
        )
    report = judge(doc, cluster.health, job.nodes, history)
    check = {
        "cluster": cluster.name,
        "topology": str(job.topology),
        "nodes": names,
        "gated_run_id": gated_run_id,
        "backend": doc.get("backend"),
        "precision": job.precision,
        "started_at": started_at,
        "took_s": report.took_s,
        "ok": report.ok,
        "blamed": list(report.blamed()),
        "summary": report.summary()[:1024],
    }
    figures = [
        {
            "check_name": f.check,
            "node_name": f.node,
            "peer_name": f.peer,
            "device_index": f.device,
            "ranks": f.ranks,
            "value": f.value,
            "unit": f.unit,
            "expected": f.expected,
            "expected_from": f.expected_from,
            "fraction": f.fraction,
            "verdict": f.verdict,
            "exempt": f.exempt,
        }
        for f in report.figures
    ]
    with store.transaction() as conn:
        check_id = health_rows.record_check(conn, check, figures)
    return report, check_id


def check_nodes(
    session: NodeSession,
    plan: Plan,
    store: Store,
    runs_dir: Path,
    view: ProgressView,
    stop: threading.Event,
    gated_run_id: str | None = None,
) -> tuple[HealthReport, int, float]:
    """Probe, judge, store: (report, check id, seconds it took here)."""
    began, started_at = time.monotonic(), utcnow()
    local_dir = runs_dir / "health" / plan.job.run_id
    doc = run_probe(session, plan, local_dir, view, stop)
    report, check_id = judge_and_record(store, plan, doc, gated_run_id, started_at)
    return report, check_id, time.monotonic() - began


def gate_plan(run_plan: Plan, facts: DeviceFacts | None = None) -> Plan:
    """The probe's plan for a run's plan: its nodes (and image, with the runtime options
    that fit each node's devices, `facts`, when the run has one)."""
    job = run_plan.job
    plan = probe_plan(
        job.cluster,
        job.topology,
        [n.name for n in job.nodes],
        job.precision,
        image=run_plan.image if run_plan.runtime == "docker" else None,
        image_id=run_plan.image_id,
        facts=facts,
        salt=job.run_id,
    )
    return replace(plan, image_id=run_plan.image_id)


def quarantine_and_requeue(
    store: Store,
    run_id: str,
    cluster: ClusterSpec,
    blamed: Sequence[str],
    reason: str,
    check_id: int,
) -> bool:
    """The queue's answer to a refusal: the nodes blamed are quarantined, the run goes back
    to the queue for other nodes."""
    with store.transaction() as conn:
        return quarantine.requeue_after_gate(
            conn,
            run_id,
            cluster.name,
            blamed,
            reason,
            cluster.health.quarantine_expiry_s,
            check_id,
        )


def gate_before_run(
    session: NodeSession,
    plan: Plan,
    store: Store,
    runs_dir: Path,
    view: ProgressView,
    stop: threading.Event,
    facts: DeviceFacts | None = None,
) -> float:
    """The gate inside a run's execution, on its connected, preflighted nodes: refuses the
    run (HealthGateRefused, one line) when a figure is below threshold; the seconds it took."""
    report, _, took = check_nodes(
        session, gate_plan(plan, facts), store, runs_dir, view, stop, plan.job.run_id
    )
    view.line(f"health gate: {report.summary()}")
    if not report.ok:
        raise refusal(report, str(plan.job.topology))
    return took


def gate_queued_run(
    plan: Plan, store: Store, runs_dir: Path, stop: threading.Event, console: Console
) -> HealthReport:
    """The gate of a run a worker claimed, before its execution: on refusal the nodes blamed
    are quarantined and the run is back in the queue (the report says so: not ok)."""
    from orchestrator.transport import NodeSession

    job = plan.job
    probe = gate_plan(plan)
    with NodeSession(list(job.nodes), job.cluster.ssh) as session, ProgressView(
        job.run_id, console, live=False
    ) as view:
        report, check_id, _ = check_nodes(session, probe, store, runs_dir, view, stop, job.run_id)
    if not report.ok:
        refused = refusal(report, str(job.topology))
        blamed = refused.blamed or tuple(n.name for n in job.nodes)
        quarantine_and_requeue(store, job.run_id, job.cluster, blamed, refused.one_line(), check_id)
        console.print(
            f"run {job.run_id}: {refused.message}; quarantined {', '.join(blamed)}, "
            "the run is back in the queue",
            markup=False,
            highlight=False,
        )
    return report


def health_check(request: HealthRequest) -> tuple[HealthReport, int]:
    """`orchestrator health NxM` over SSH, outside a run: the probe in the host runtime on the
    nodes submit would choose (free of runs), judged and stored."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.leases import check_nodes_free
    from orchestrator.transport import NodeSession

    cluster = request.cluster
    if cluster.runtime == "docker":
        raise ConfigError(
            "health outside a run uses the host runtime",
            'the gate before a run probes in its image; here, set runtime = "host"',
        )
    names = list(request.node_names) if request.node_names else None
    plan = probe_plan(cluster, Topology.parse(request.topology), names, request.precision)
    check_nodes_free(request.store, cluster.name, [n.node.name for n in plan.nodes])
    with NodeSession([n.node for n in plan.nodes], cluster.ssh) as session, ProgressView(
        plan.job.run_id, request.console
    ) as view:
        view.phase("health", f"probe on {len(plan.nodes)} node(s)")
        report, check_id, _ = check_nodes(
            session, plan, request.store, request.runs_dir, view, request.stop
        )
    return report, check_id
