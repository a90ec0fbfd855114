"""One submission end to end: plan -> run row -> connect -> preflight + environment -> stage ->
start on all nodes -> watch -> stop everything -> collect -> publish. Every ending, including
Ctrl-C, leaves the run row final, the run folder written, and nothing running on any node."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends.ssh.guard import (
    Heartbeat,
    guard_grace_s,
    heartbeat_every_s,
    with_guards,
)
from orchestrator.backends.ssh.launch import Execution, Watch, collect, stage, staged_workloads
from orchestrator.backends.ssh.preflight import VISIBLE_DEVICES_KEY, NodeReport, run_preflight
from orchestrator.backends.ssh.runtime_check import (
    check_runtime_options,
    device_facts,
    runtime_lines,
)
from orchestrator.clock import utcnow
from orchestrator.errors import NodeError, OrchestratorError
from orchestrator.plan import NodePlan, Plan, build_plan
from orchestrator.rendezvous import master_address
from orchestrator.runfolder.folder import ImageRef, NodeRef, RunManifest, make_run_dir
from orchestrator.runs.ending import Cancelled, check_stop, finalize
from orchestrator.runs.failure import Failure
from orchestrator.runs.lifecycle import (
    Outcome,
    PhaseClock,
    SubmitRequest,
    follower_id,
    job_for,
    manifest_for,
    write_json,
)
from orchestrator.runs.progress import ProgressView, verbosity
from orchestrator.runs.request import encode_request
from orchestrator.specs import ClusterSpec, JobSpec, NodeSpec, pick_nodes
from orchestrator.states import RunStatus
from orchestrator.workload_source import workload_hash

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.images.profiles import VendorProfile
    from orchestrator.store import Store
    from orchestrator.transport import NodeSession, Transport

# The health gate: (session, plan, store, runs dir, view, stop, device facts) -> seconds;
# raises to refuse (backends/ssh/health.py).
HealthGate = Callable[..., float]
STAGE_TIMEOUT_S = 300.0
START_TIMEOUT_S = 60.0
COLLECT_TIMEOUT_S = 300.0


def make_plan(
    cluster: ClusterSpec,
    req: SubmitRequest,
    run_id: str | None = None,
    image: str | None = None,
    image_id: str | None = None,
    facts: Mapping[str, Mapping[str, bool]] | None = None,
    node_values: Mapping[str, str | None] | None = None,
    entry: Callable[[JobSpec, str], Sequence[str]] | None = None,
) -> Plan:
    """The plan a submission executes (what --dry-run prints). With the docker runtime each
    node's command is wrapped in `docker run` of `image` (default: the content tag the vendor's
    wheels and the workload give, computed without a daemon), with the runtime options that
    fit the node: `facts` are the device files its probe found (None: not probed yet). With
    the host runtime the visible-devices variable that a node's own environment sets is
    respected: `node_values` (preflight reads it on every node; this process's own environment
    is the local node's)."""
    from orchestrator.images.profiles import load_profile

    nodes = pick_nodes(cluster, req.topology, list(req.node_names) if req.node_names else None)
    job = job_for(cluster, req, nodes, run_id)
    run_id = job.run_id
    profile = load_profile(cluster.vendor)
    runtime = profile.runtime
    wrap = None
    notes: tuple[str, ...] = ()
    if cluster.runtime == "docker":
        from orchestrator.images.containers import node_wrapper

        if image is None:
            image, notes = _expected_image(cluster)
        wrap = node_wrapper(
            profile,
            image,
            run_id,
            data_dir=cluster.case.data_dir,
            backbone_weights=cluster.case.backbone_weights,
            facts=facts,
        )
    var = runtime.visible_devices_env or None
    if cluster.runtime == "host" and var and node_values is None:
        node_values = {n.name: os.environ.get(var) for n in nodes if n.is_local}
    plan = build_plan(
        job,
        master=master_address(job, _route),
        node_values=node_values if cluster.runtime == "host" else None,
        workload_hash=workload_hash(),
        vendor_env=runtime.env,
        visible_devices_var=var,
        wrap=wrap,
        image=image,
        entry=entry,
    )
    if wrap is not None:
        plan = _with_runtime_notes(plan, profile, facts)
    return replace(
        plan,
        notes=notes,
        image_id=image_id,
        hardware_label=profile.label,
        monitor_tool=runtime.monitor[0] if runtime.monitor else None,
        visible_devices_var=var,
    )


def _with_runtime_notes(
    plan: Plan, profile: VendorProfile, facts: Mapping[str, Mapping[str, bool]] | None
) -> Plan:
    """Each node's runtime options, used or left out and why, for the dry run."""
    from orchestrator.images.runtime_choice import choose_runtime

    nodes = tuple(
        replace(
            np_,
            runtime_notes=choose_runtime(
                profile.runtime, np_.node, facts.get(np_.node.name) if facts is not None else None
            ).lines(),
        )
        for np_ in plan.nodes
    )
    return replace(plan, nodes=nodes)


def _route(node: NodeSpec) -> str | None:
    from orchestrator.transport.route import source_address

    return source_address(node.address, node.port)


def _expected_image(cluster: ClusterSpec) -> tuple[str, tuple[str, ...]]:
    """The image tag without asking a daemon (the base image's id is resolved at build time)."""
    from orchestrator.errors import ImageError
    from orchestrator.images.workflow import image_spec, settings_for

    try:
        spec = image_spec(cluster, settings_for(cluster), None)
    except ImageError as exc:
        return "<image of profile " + cluster.vendor + ">", (f"image: {exc.one_line()}",)
    return spec.tag, ("image tag before the build host resolves the base image's id",)


def ssh_manifest(plan: Plan, req: SubmitRequest, status: RunStatus, **extra: Any) -> RunManifest:
    """The manifest of a run on the SSH backend: its planned nodes and image."""
    return manifest_for(
        plan.job,
        req,
        status,
        backend="ssh",
        runtime=plan.runtime,
        nodes=[
            NodeRef(
                n.node.name,
                n.node.address,
                n.node_rank,
                ib_hcas=n.node.ib_hcas,
                devices=n.devices.indices if n.devices else None,
            )
            for n in plan.nodes
        ],
        image=ImageRef(plan.image, plan.image_id) if plan.image else None,
        hardware_label=plan.hardware_label,
        **extra,
    )


def execute(
    plan: Plan,
    req: SubmitRequest,
    store: Store,
    runs_dir: Path,
    stop: threading.Event,
    console: Console,
    queued_at: datetime | None = None,
    gate: HealthGate | None = None,
) -> Outcome:
    """Run the plan; the run row and folder are final whatever happens. Raises nothing for a
    run that fails on the nodes: the Outcome says how it ended. `queued_at`: the run's row
    exists already, queued then claimed by a worker that holds its node leases. Otherwise
    this process takes the nodes' leases itself and keeps them while it follows the run, so
    that a worker or `orchestrator attach` adopts the run should this process die."""
    # Here, not at the top: planning (`submit --dry-run`) loads no store.
    from orchestrator.runs.keeper import LeaseKeeper
    from orchestrator.store.leases import create_followed_run, follower_ttl_s, release

    job = plan.job
    run_dir = runs_dir / job.run_id
    submitted_at = queued_at or utcnow()
    manifest = ssh_manifest(plan, req, "running", submitted_at=submitted_at)
    ttl = follower_ttl_s(job.cluster.follower_grace_s)
    if queued_at is not None:
        make_run_dir(run_dir, exist_ok=False)
        store.start_queued_run(manifest)
        submission = _Submission(plan, req, store, run_dir, stop, console, gate)
        return submission.run(submitted_at, ttl)
    nodes = tuple(n.node.name for n in plan.nodes)
    request = encode_request(
        job.cluster, replace(req, node_names=nodes), runs_dir=str(runs_dir.resolve())
    )
    holder = follower_id()
    create_followed_run(store, manifest, request, nodes, holder, ttl)
    make_run_dir(run_dir, exist_ok=False)
    taken_over = threading.Event()
    try:
        with LeaseKeeper(store, job.run_id, holder, ttl, stop, stop, on_lost=taken_over):
            submission = _Submission(plan, req, store, run_dir, stop, console, gate)
            return submission.run(submitted_at, ttl, taken_over)
    finally:
        if not taken_over.is_set():
            release(store, job.run_id, holder)


class _Submission:
    """One run over SSH as named steps (`run` takes them in order); each names its phase in
    the progress view and laps the phase clock. `plan` grows as they go: the nodes' devices,
    then the image."""

    def __init__(
        self,
        plan: Plan,
        req: SubmitRequest,
        store: Store,
        run_dir: Path,
        stop: threading.Event,
        console: Console,
        gate: HealthGate | None = None,
    ) -> None:
        self.plan, self.req, self.store, self.run_dir = plan, req, store, run_dir
        self.stop, self.console, self.gate = stop, console, gate
        self.phases = PhaseClock()
        self.verified: set[str] = set()  # nodes whose staged workload preflight verified
        self.view = ProgressView(plan.job.run_id, console)
        self.started_at: datetime | None = None

    def run(
        self, submitted_at: datetime, ttl_s: float, taken_over: threading.Event | None = None
    ) -> Outcome:
        """Every step, then the run's last write, whatever ended it."""
        status: RunStatus = "failed"
        failure: Failure | None = None
        try:
            with ExitStack() as stack:
                session = self.connect(stack)
                facts = self.preflight(session)
                check_stop(self.stop, "the workload started")
                self.prepare_image(session, facts)
                self.health_gate(session, facts)
                self.stage(session)
                check_stop(self.stop, "the workload started")
                execution = self.run_workload(session, ttl_s, taken_over)
                if execution.status == "detached":
                    return self.detached()
                status, failure = self.collect(session, execution)
        except Cancelled as exc:
            status, failure = "cancelled", Failure(str(exc))
        except OrchestratorError as exc:
            node = next(iter(exc.failures)) if isinstance(exc, NodeError) and exc.failures else None
            failure = Failure(exc.one_line(), node=node)
        except BaseException as exc:
            # A bug or an interrupt outside the watch: the row must still end final, then raise.
            cancelled = isinstance(exc, KeyboardInterrupt)
            failure = Failure("cancelled by the user" if cancelled else f"internal error: {exc!r}")
            self.finalize("cancelled" if cancelled else "failed", failure, submitted_at)
            raise
        outcome = self.finalize(status, failure, submitted_at)
        self.phases.lap("publish")
        write_json(self.run_dir / "timings.json", self.phases.as_dict())
        return outcome

    def connect(self, stack: ExitStack) -> NodeSession:
        """The progress view and a session to every node, both closed with `stack`."""
        from orchestrator.transport import NodeSession

        stack.enter_context(self.view)
        self.view.phase("connect", _connect_detail(self.plan))
        nodes = [n.node for n in self.plan.nodes]
        session = stack.enter_context(NodeSession(nodes, self.plan.job.cluster.ssh))
        check_stop(self.stop, "the workload started")
        self.phases.lap("connect")
        return session

    def preflight(self, session: NodeSession) -> dict[str, dict[str, bool]]:
        """Every node's checks and environment, recorded; returns the device files found."""
        plan = self.plan
        self.view.phase("preflight", f"{len(plan.nodes)} node(s) in parallel")
        reports = run_preflight(
            session,
            plan.job,
            smi=plan.monitor_tool,
            visible_devices_var=plan.visible_devices_var,
            docker=plan.runtime == "docker",
            on_node=lambda report, took: self.view.line(_preflight_line(report, took)),
            workloads=staged_workloads(plan),
        )
        self.phases.lap("preflight")
        self.verified = {name for name, r in reports.items() if r.workload_staged}
        facts = device_facts({name: r.env for name, r in reports.items()})
        chosen = runtime_lines(plan, facts) if plan.runtime == "docker" else {}
        for np_ in plan.nodes:
            env = reports[np_.node.name].env
            env["preflight"] = reports[np_.node.name].checks
            if np_.node.name in chosen:
                env["runtime_options"] = list(chosen[np_.node.name])
            accepted = session.accepted_new_host_keys.get(np_.node.name)
            if accepted:  # accept_new_host_keys was used: the run says so
                env["accepted_new_host_key"] = accepted
            self.store.record_environment(plan.job.run_id, np_.node.name, np_.node_rank, env)
            write_json(self.run_dir / "nodes" / np_.node.name / "env.json", env)
        self.plan = _with_node_devices(plan, self.req, reports)
        return facts

    def prepare_image(self, session: NodeSession, facts: dict[str, dict[str, bool]]) -> None:
        """The docker runtime: the image on every node, and the runtime options each takes."""
        if self.plan.runtime != "docker":
            return
        self.view.phase("image", "build where missing, then transfer to the nodes that lack it")
        with self.view.suspended():
            self.plan = _with_image(self.plan, self.req, session, self.store, self.console, facts)
        self.phases.lap("image")
        self.view.phase("runtime", "each node's daemon tries its runtime options")
        check_runtime_options(session, self.plan, facts)
        self.phases.lap("runtime")

    def health_gate(self, session: NodeSession, facts: dict[str, dict[str, bool]]) -> None:
        """The health gate (backends/ssh/health.py), when the cluster asks for it before this
        run: it refuses in one line naming the node or pair below its threshold."""
        if self.gate is None:
            return
        self.view.phase("health", f"probe on {len(self.plan.nodes)} node(s) before the run")
        self.gate(session, self.plan, self.store, self.run_dir.parent, self.view, self.stop, facts)
        self.phases.lap("health")
        check_stop(self.stop, "the workload started")

    def stage(self, session: NodeSession) -> None:
        self.view.phase("staging", _staging_detail(self.plan))
        stage(session, self.plan, STAGE_TIMEOUT_S, self.verified)
        self.phases.lap("stage")

    def run_workload(
        self, session: NodeSession, ttl_s: float, taken_over: threading.Event | None
    ) -> Execution:
        """Start torchrun on every node under the node guards and their heartbeat, and watch
        it to an ending; any exception stops every node first."""
        grace = self.plan.job.cluster.follower_grace_s
        plan = with_guards(self.plan, guard_grace_s(grace, ttl_s))  # each node's guard first
        self.view.phase("starting", f"torchrun on {len(plan.nodes)} node(s)")
        watch = Watch(
            plan,
            session,
            self.view,
            self.stop,
            container_cleanup(plan),
            taken_over,
            self_cleaning=True,
        )
        self.started_at = utcnow()
        with Heartbeat(session, plan, heartbeat_every_s(grace)):
            watch.start(START_TIMEOUT_S)
            self.phases.lap("start")
            try:
                execution = watch.follow(plan.job.timeout_s, plan.job.no_progress_timeout_s)
            except BaseException:
                watch.stop_all()
                raise
        # the workload's lifetime ends when its ending was seen; stopping what ran beside it
        # (guards, samplers) and the heartbeat is the orchestrator's own time
        self.phases.lap("workload", at=watch.ended_at)
        self.phases.lap("stop")
        return execution

    def collect(
        self, session: NodeSession, execution: Execution
    ) -> tuple[RunStatus, Failure | None]:
        """Rank files and logs from every node; a succeeded run missing any of them failed."""
        status: RunStatus = "failed" if execution.status == "detached" else execution.status
        failure = execution.failure
        self.view.phase("collecting", f"rank files and logs from {len(self.plan.nodes)} node(s)")
        problems = collect(session, self.plan, self.run_dir, COLLECT_TIMEOUT_S)
        self.phases.lap("collect")
        if problems and status == "succeeded":
            status = "failed"
            failure = Failure(
                "collection failed: " + "; ".join(f"{n}: {p}" for n, p in problems.items())
            )
        self.view.phase("publishing", f"run folder {self.run_dir} into the results store")
        return status, failure

    def detached(self) -> Outcome:
        """Another follower took the run over: it finishes the run; the row stays running."""
        reason = "another follower took the run over (this one was presumed dead)"
        self.console.print(f"[yellow]run {self.plan.job.run_id}: {reason}; it finishes the run[/]")
        return Outcome(self.plan.job.run_id, "running", self.run_dir, Failure(reason), None)

    def finalize(
        self, status: RunStatus, failure: Failure | None, submitted_at: datetime
    ) -> Outcome:
        manifest = ssh_manifest(
            self.plan,
            self.req,
            "running",
            submitted_at=submitted_at,
            started_at=self.started_at,
        )
        return finalize(manifest, self.run_dir, self.store, status, failure)


def _with_node_devices(plan: Plan, req: SubmitRequest, reports: dict[str, NodeReport]) -> Plan:
    """The host runtime's plan with the visible devices each node's own environment sets
    (its CUDA_VISIBLE_DEVICES, as preflight read it); a list that cannot serve the topology
    is refused here, before anything starts."""
    if plan.runtime != "host":
        return plan
    values = {name: r.env.get(VISIBLE_DEVICES_KEY) for name, r in reports.items()}
    if all(value is None for value in values.values()):
        return plan
    job = plan.job
    rebuilt = make_plan(job.cluster, req, job.run_id, node_values=values)
    return replace(rebuilt, job=job)


def _preflight_line(report: NodeReport, took_s: float) -> str:
    """One node's preflight, as it finishes: ok, or its failed checks."""
    if report.ok:
        return f"preflight {report.node}: ok, {len(report.checks)} checks in {took_s:.1f} s"
    return f"preflight {report.node}: FAIL {'; '.join(report.failures())}"


def _connect_detail(plan: Plan) -> str:
    remote = [n.node.name for n in plan.nodes if not n.node.is_local]
    if not remote:
        return "this machine (no SSH)"
    return f"{len(remote)} node(s) over SSH: {', '.join(remote)}"


def _staging_detail(plan: Plan) -> str:
    if plan.runtime == "host":
        return f"run folders and the workload source on {len(plan.nodes)} node(s)"
    return f"run folders on {len(plan.nodes)} node(s)"


def _with_image(
    plan: Plan,
    req: SubmitRequest,
    session: NodeSession,
    store: Store,
    console: Console,
    facts: Mapping[str, Mapping[str, bool]],
) -> Plan:
    """Build the image where the build host lacks it, put it on every node that lacks it,
    record it, and wrap every node's command in it."""
    from orchestrator.images.progress_ui import image_progress
    from orchestrator.images.workflow import ensure_image

    job = plan.job
    with image_progress(console, verbose=verbosity() > 0) as (observer, progress):
        prepared = ensure_image(
            job.cluster,
            list(job.nodes),
            session.transports,
            store=store,
            observer=observer,
            progress=progress,
        )
    image_id = prepared.record.get("image_id") if prepared.record else None
    console.print(f"[dim]image {prepared.tag} on every node[/]")
    rebuilt = make_plan(
        job.cluster, req, job.run_id, image=prepared.tag, image_id=image_id, facts=facts
    )
    return replace(rebuilt, job=job)


def container_cleanup(plan: Plan) -> Callable[[Transport, NodePlan], None] | None:
    """Watch's on_stop for the docker runtime: the run's containers go, whatever ended it."""
    if plan.runtime != "docker":
        return None
    from orchestrator.images.containers import remove_run_containers

    def cleanup(transport: Transport, node_plan: NodePlan) -> None:
        remove_run_containers(transport, plan.job.run_id, node_plan.node.docker_host)

    return cleanup
