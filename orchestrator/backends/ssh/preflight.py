"""Preflight and environment capture: one probe per node, all nodes in parallel.

The probe (orchestrator/nodeside/node_probe.py, standard library only) runs with the node's own Python
and answers in one round trip: pass/fail checks plus the node's environment (OS, kernel, CPU,
memory, accelerators, driver, Docker, torch, InfiniBand), which becomes the run's environment
block. Nothing starts unless every node passes.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from orchestrator.backends.ssh.runtime_check import runtime_probe_args
from orchestrator.errors import NodeError, PreflightError
from orchestrator.workload_source import NODE_PROBE_PATH

if TYPE_CHECKING:
    from orchestrator.specs import JobSpec, NodeSpec
    from orchestrator.transport import NodeSession, Transport

PROBE_SOURCE = NODE_PROBE_PATH.read_text(encoding="utf-8")
#: env.json key: the visible-devices variable as the node's own environment sets it (or null).
VISIBLE_DEVICES_KEY = "visible_devices_env"


class StagedWorkload(TypedDict):
    """A workload folder staged on a node and the `sha256sum` lines its files must match."""

    dir: str
    manifest: str


@dataclass
class NodeReport:
    node: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    # The probe found the staged workload complete, every file as its manifest says.
    workload_staged: bool = False

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self.checks if not c["ok"]]


def probe_args(
    job: JobSpec,
    node: NodeSpec,
    *,
    smi: str | None,
    docker: bool,
    visible_devices_var: str | None = None,
    workload: StagedWorkload | None = None,
) -> dict[str, Any]:
    return {
        "nproc": job.topology.nproc_per_node,
        "data_dir": job.cluster.case.data_dir,
        "weights": job.cluster.case.backbone_weights,
        "workdir": node.workdir,
        "min_free_gb": 1.0,
        "ib_hcas": list(node.ib_hcas),
        "smi": smi,
        "need_torch": not docker,
        "count_accelerators": job.cluster.vendor != "cpu",
        "need_docker": docker,
        "docker_host": node.docker_host,
        **runtime_probe_args(job, node, docker=docker),
        # host runtime: which devices an admin's own setting on the node makes visible
        "visible_devices_env": None if docker else visible_devices_var,
        # the staged workload to verify (read only), so that staging needs no check of its own
        **({"workload": workload} if workload is not None else {}),
    }


def probe_node(
    transport: Transport, python: str, args: dict[str, Any], timeout: float
) -> NodeReport:
    result = transport.run(
        [python, "-c", PROBE_SOURCE, json.dumps(args)], timeout=timeout, check=False
    )
    name = transport.node.name
    if result.exit_code != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        reason = (
            f"{python} not found"
            if result.exit_code == 127
            else f"probe exited {result.exit_code}: {tail[0]}"
        )
        return NodeReport(name, [{"name": "python", "ok": False, "detail": reason}])
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return NodeReport(name, [{"name": "probe", "ok": False, "detail": "unreadable output"}])
    checks = [{"name": "connect", "ok": True, "detail": "reachable"}, *data["checks"]]
    return NodeReport(name, checks, data["env"], data.get("workload_staged") is True)


def probe_all(
    session: NodeSession,
    job: JobSpec,
    *,
    smi: str | None = None,
    docker: bool = False,
    timeout: float = 120.0,
    visible_devices_var: str | None = None,
    on_node: Callable[[NodeReport, float], None] | None = None,
    workloads: Mapping[str, StagedWorkload] | None = None,
) -> dict[str, NodeReport]:
    """Probe every connected node in parallel; a node whose probe breaks gets a failed check.
    `on_node(report, seconds)` hears of each node as its probe ends (live progress);
    `workloads`: node -> its staged workload, verified by the probe (NodeReport.workload_staged)."""
    nodes = {n.name: n for n in job.nodes}

    def one(t: Transport) -> NodeReport:
        node = nodes[t.node.name]
        python = "python3" if docker else node.python
        started = time.monotonic()
        args = probe_args(
            job,
            node,
            smi=smi,
            docker=docker,
            visible_devices_var=visible_devices_var,
            workload=(workloads or {}).get(node.name),
        )
        report = probe_node(t, python, args, timeout)
        if on_node is not None:
            on_node(report, time.monotonic() - started)
        return report

    def broken(name: str, exc: BaseException) -> NodeReport:
        detail = (exc.failures.get(name) if isinstance(exc, NodeError) else None) or str(exc)
        return NodeReport(name, [{"name": "probe", "ok": False, "detail": detail}])

    return session.fan_out_results(one, timeout=timeout + 5, what="preflight").recover(broken)


def doctor_command(job: JobSpec) -> str:
    """The `orchestrator doctor` that checks what this job's preflight checked: its topology,
    nodes, dataset and weights (they may come from submit's --data-dir / --backbone-weights)."""
    words = ["orchestrator"]
    if not job.cluster.source.startswith("<"):  # a cluster file, not the embedded default
        words += ["--cluster", job.cluster.source]
    words += ["doctor", str(job.topology)]
    words += ["--nodes", ",".join(n.name for n in job.nodes)]
    case = job.cluster.case
    if case.data_dir:
        words += ["--data-dir", case.data_dir]
    if case.backbone_weights:
        words += ["--backbone-weights", case.backbone_weights]
    return shlex.join(words)


def shared_workdirs(reports: dict[str, NodeReport], workdirs: dict[str, str]) -> dict[str, str]:
    """Nodes whose workdirs are one folder (the same id in it: a shared file system): they
    would write one node.log and collect each other's files. Each such node, with why."""
    by_id: dict[str, list[str]] = {}
    for name, report in reports.items():
        found = report.env.get("workdir_id")
        if isinstance(found, str) and found:
            by_id.setdefault(found, []).append(name)
    problems = {}
    for names in by_id.values():
        if len(names) < 2:
            continue
        for name in names:
            others = ", ".join(n for n in sorted(names) if n != name)
            problems[name] = (
                f"workdir: {workdirs.get(name, '?')} is the same folder as {others}'s (a shared "
                "file system): give each node a workdir of its own on a node-local disk"
            )
    return problems


def run_preflight(
    session: NodeSession,
    job: JobSpec,
    *,
    smi: str | None = None,
    docker: bool = False,
    timeout: float = 120.0,
    visible_devices_var: str | None = None,
    on_node: Callable[[NodeReport, float], None] | None = None,
    workloads: Mapping[str, StagedWorkload] | None = None,
) -> dict[str, NodeReport]:
    """Probe every node; raise PreflightError naming each failing node and check."""
    reports = probe_all(
        session,
        job,
        smi=smi,
        docker=docker,
        timeout=timeout,
        on_node=on_node,
        visible_devices_var=visible_devices_var,
        workloads=workloads,
    )
    bad = {name: "; ".join(r.failures()) for name, r in reports.items() if not r.ok}
    bad.update(shared_workdirs(reports, {n.name: n.workdir for n in job.nodes}))
    if bad:
        raise PreflightError(
            f"preflight failed on {len(bad)} of {len(reports)} node(s), nothing was started",
            bad,
            remedy=f"fix the nodes named, then check again: {doctor_command(job)}",
        )
    return reports
