"""Every list of states and choices, defined once. The CLI's choices, the campaign parser, the
store's CHECK constraints and the backends import them from here; mypy checks every literal
written elsewhere against these types. The workload keeps its own copy of PRECISIONS (it must
not import orchestrator): tests/unit/test_states.py checks the two agree."""

from __future__ import annotations

from typing import Literal, get_args

# A run that is not over: waiting for a worker, or on its nodes (someone's: cancelled, not
# deleted); a campaign in these states still has such runs.
ActiveStatus = Literal["queued", "running"]
FinalStatus = Literal["succeeded", "failed", "cancelled", "lost"]
RunStatus = Literal[ActiveStatus, FinalStatus]
CampaignStatus = Literal[ActiveStatus, "finished", "cancelled"]
BackendName = Literal["ssh", "slurm"]
Runtime = Literal["host", "docker"]
Precision = Literal["fp32", "amp", "fp16"]
Distribution = Literal["relay", "star"]  # how an image reaches the nodes (images/distribute.py)
# A relay agent on a node while an image passes (images/relay.py): started, listening and
# receiving, holding the image, or given up on (its kind and reason say why).
RelayAgentState = Literal["starting", "running", "done", "failed"]
# Where a run's row came from: a run of this orchestrator, or a log of another tool imported.
RunSource = Literal["orchestrator", "flagperf"]
# Where a run's mem comes from: the accelerator tool's device peak, or the ranks' allocator peak.
MemSource = Literal["device", "allocator"]
# How a run's ranks talked across nodes (orchestrator/fabric.py): NCCL's IB verbs plugin
# (InfiniBand or RoCE), TCP sockets, nothing (one node), torch's gloo (a CPU run), nodes that
# disagree, or NCCL lines that name no network.
FabricTransport = Literal["ib", "socket", "intra-node", "gloo", "mixed", "unknown"]
# The health checks before runs (docs/health.md): what is measured, the verdict on each figure,
# when the gate runs, and which node pairs are measured.
HealthCheck = Literal["compute", "allreduce", "intra", "pair"]
HealthVerdict = Literal["ok", "fail", "unjudged"]
GateWhen = Literal["multi-node", "always", "never"]
PairsHow = Literal["ring", "all"]

RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
ACTIVE_STATUSES: tuple[ActiveStatus, ...] = get_args(ActiveStatus)
FINAL_STATUSES: tuple[FinalStatus, ...] = get_args(FinalStatus)
CAMPAIGN_STATUSES: tuple[CampaignStatus, ...] = get_args(CampaignStatus)
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
DISTRIBUTIONS: tuple[Distribution, ...] = get_args(Distribution)
RUN_SOURCES: tuple[RunSource, ...] = get_args(RunSource)
MEM_SOURCES: tuple[MemSource, ...] = get_args(MemSource)
FABRIC_TRANSPORTS: tuple[FabricTransport, ...] = get_args(FabricTransport)
HEALTH_CHECKS: tuple[HealthCheck, ...] = get_args(HealthCheck)
HEALTH_VERDICTS: tuple[HealthVerdict, ...] = get_args(HealthVerdict)
GATE_WHEN: tuple[GateWhen, ...] = get_args(GateWhen)
PAIRS_HOW: tuple[PairsHow, ...] = get_args(PairsHow)


def run_status(value: str) -> RunStatus:
    """A status read back from the store or a file, as the type (the store's CHECK constraint
    already refuses anything else)."""
    for status in RUN_STATUSES:
        if value == status:
            return status
    raise ValueError(f"unknown run status {value!r}; one of {', '.join(RUN_STATUSES)}")


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES
