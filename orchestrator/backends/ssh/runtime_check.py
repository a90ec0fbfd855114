"""The docker runtime's options against each node, before anything starts.

Two steps. The node probe (preflight, `orchestrator doctor`) reports which of the profile's
device files exist and fails a needed one that does not (probe_args here). Once the image is on
the nodes, one `docker run --rm` per node with exactly that node's runtime options and a no-op
command asks its daemon whether it accepts them (a --ulimit memlock=-1 that a rootless daemon
refuses, a --gpus without the NVIDIA Container Toolkit, ...); a refusal stops the run there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import PreflightError
from orchestrator.images.containers import docker_argv, trial_argv
from orchestrator.images.profiles import VendorProfile, load_profile
from orchestrator.images.runtime_choice import choose_runtime, probe_devices
from orchestrator.images.spec import REPOSITORY_PREFIX

if TYPE_CHECKING:
    from orchestrator.plan import Plan
    from orchestrator.specs import JobSpec, NodeSpec
    from orchestrator.transport import NodeSession, Transport

TRIAL_TIMEOUT_S = 120.0
DeviceFacts = Mapping[str, Mapping[str, bool]]  # node name -> device path -> exists


def runtime_probe_args(job: JobSpec, node: NodeSpec, *, docker: bool) -> dict[str, Any]:
    """The node probe's `devices` input (docker runtime only: `--device` is docker's)."""
    if not docker:
        return {}
    return {"devices": probe_devices(load_profile(job.cluster.vendor), node.ib_hcas)}


def device_facts(envs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    """node -> {device path: exists}, from each node's probed environment."""
    facts: dict[str, dict[str, bool]] = {}
    for name, env in envs.items():
        found = env.get("devices")
        if isinstance(found, Mapping):
            facts[name] = {str(k): bool(v) for k, v in found.items()}
    return facts


def runtime_lines(plan: Plan, facts: DeviceFacts) -> dict[str, tuple[str, ...]]:
    """Per node, its runtime options used or left out and why (kept in its env.json)."""
    runtime = load_profile(plan.job.cluster.vendor).runtime
    return {
        np_.node.name: choose_runtime(runtime, np_.node, facts.get(np_.node.name)).lines()
        for np_ in plan.nodes
    }


def trial_argvs(profile: VendorProfile, plan: Plan, facts: DeviceFacts) -> dict[str, list[str]]:
    """Per node, the no-op `docker run` with the options its run gets."""
    return {
        np_.node.name: trial_argv(
            choose_runtime(profile.runtime, np_.node, facts.get(np_.node.name)).options,
            plan.image or "",
            plan.job.run_id,
            np_.node_rank,
            docker_host=np_.node.docker_host,
        )
        for np_ in plan.nodes
    }


def refusal(stderr: str, exit_code: int) -> str:
    """The daemon's reason, in one line, with what to change."""
    # The CLI's last line is its "Run 'docker run --help'" hint; the reason is the one before.
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Run 'docker")] or lines
    reason = lines[-1] if lines else f"exit {exit_code}"
    low = reason.lower()
    if "rlimit" in low or "ulimit" in low:
        hint = (
            "the daemon refuses a --ulimit of the profile: raise its limit (LimitMEMLOCK=infinity "
            "in docker.service) or move the limit to rdma_ulimits"
        )
    elif "device driver" in low and "gpu" in low:
        hint = "--gpus needs the NVIDIA Container Toolkit on the node"
    elif "device" in low:
        hint = "a --device the profile names is not usable on the node"
    else:
        hint = "check the profile's [runtime] options against this node's daemon"
    return f"docker run refused the runtime options: {reason[:300]} ({hint})"


def check_runtime_options(session: NodeSession, plan: Plan, facts: DeviceFacts) -> None:
    """Raise PreflightError naming every node whose daemon refuses its runtime options."""
    profile = load_profile(plan.job.cluster.vendor)
    argvs = trial_argvs(profile, plan, facts)

    def one(transport: Transport) -> str | None:
        result = transport.run(argvs[transport.node.name], timeout=TRIAL_TIMEOUT_S, check=False)
        if result.exit_code == 0:
            return None
        return refusal(result.stderr or result.stdout, result.exit_code)

    group = session.fan_out_results(one, timeout=TRIAL_TIMEOUT_S + 5, what="runtime check")
    group.raise_interrupts()
    bad = {
        name: (str(outcome) if isinstance(outcome, BaseException) else outcome)
        for name, outcome in group.items()
        if outcome is not None
    }
    if bad:
        raise PreflightError(
            f"runtime options refused on {len(bad)} of {len(argvs)} node(s), nothing was started",
            bad,
            remedy=f"fix the nodes or the [runtime] table of {profile.source}, then run "
            "`orchestrator doctor`",
        )


def doctor_trials(
    session: NodeSession, profile: VendorProfile, nodes: Sequence[NodeSpec], facts: DeviceFacts
) -> dict[str, tuple[bool, str]]:
    """`orchestrator doctor`'s try of each node's runtime options, with the newest image of the
    profile that the node's daemon holds (any will do: the options do not depend on it)."""
    ranks = {node.name: (rank, node) for rank, node in enumerate(nodes)}
    repository = f"{REPOSITORY_PREFIX}/{profile.name}"

    def one(transport: Transport) -> tuple[bool, str]:
        rank, node = ranks[transport.node.name]
        listing = transport.run(
            [*docker_argv(node.docker_host), "images", "--format", "{{.Repository}}:{{.Tag}}"]
            + [repository],
            timeout=30,
            check=False,
        )
        images = listing.stdout.split() if listing.exit_code == 0 else []
        if not images:
            return True, f"not tried: no {repository} image on the node yet (submit tries them)"
        options = choose_runtime(profile.runtime, node, facts.get(node.name)).options
        argv = trial_argv(
            options, images[0], f"doctor-{os.getpid()}", rank, docker_host=node.docker_host
        )
        result = transport.run(argv, timeout=TRIAL_TIMEOUT_S, check=False)
        if result.exit_code == 0:
            return True, f"accepted by the daemon ({images[0]})"
        return False, refusal(result.stderr or result.stdout, result.exit_code)

    group = session.fan_out_results(one, timeout=TRIAL_TIMEOUT_S + 35, what="runtime check")
    return group.recover(lambda name, exc: (False, str(exc)))
