"""Before a run that hangs (or lost a peer) is stopped: ask every living rank for its Python
stack over the node's transport (inside its container with the docker runtime), and say in the failure where the ranks were
(orchestrator/runs/stacks.py). The stack files stay in each node's run folder, which collect()
copies into the local run folder's stacks/."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from orchestrator.images.containers import container_name, docker_argv
from orchestrator.runs.failure import Failure
from orchestrator.runs.stacks import (
    DUMP_STACKS_SCRIPT,
    STACKS_DIR,
    WAIT_TENTHS,
    NodeStacks,
    diagnose_hang,
    parse_dump,
)

if TYPE_CHECKING:
    from orchestrator.plan import NodePlan, Plan
    from orchestrator.transport import NodeSession, Transport

DUMP_TIMEOUT_S = 30.0


def stacks_dir(run_dir: str) -> str:
    return str(PurePosixPath(run_dir) / STACKS_DIR)


def dump_stacks(session: NodeSession, plan: Plan, failure: Failure) -> Failure:
    """The failure with where each rank was; unchanged where no node answered."""
    by_node = {np_.node.name: np_ for np_ in plan.nodes}
    found: dict[str, NodeStacks] = {}

    def one(t: Transport) -> None:
        argv = dump_argv(plan, by_node[t.node.name])
        done = t.run(argv, timeout=DUMP_TIMEOUT_S, check=False)
        found[t.node.name] = parse_dump(t.node.name, done.stdout)

    session.fan_out_results(one, timeout=DUMP_TIMEOUT_S + 10, what="stack dumps")
    nodes = [found[n] for n in by_node if n in found]
    per_node = plan.job.topology.nproc_per_node
    silent = {
        np_.node_rank * per_node + local: name
        for name, np_ in by_node.items()
        if name not in found
        for local in range(per_node)
    }
    return diagnose_hang(failure, nodes, plan.job.topology.world_size, silent)


def dump_argv(plan: Plan, np_: NodePlan) -> list[str]:
    """The node's dump command: on the host, or inside the node's container with the docker
    runtime (there the ranks run as the container's user, whose environment and signals an
    SSH user other than root cannot reach from the host; the run folder is mounted at the same
    path)."""
    folder, group = stacks_dir(np_.run_dir), str(np_.node_rank)
    script = ["sh", "-c", DUMP_STACKS_SCRIPT, "sh", plan.job.run_id, folder, str(WAIT_TENTHS)]
    script.append(group)
    if plan.runtime != "docker":
        return script
    container = container_name(plan.job.run_id, np_.node_rank)
    return [*docker_argv(np_.node.docker_host), "exec", container, *script]


def collect_stacks(t: Transport, run_dir: str, local_dir: Path) -> None:
    """The node's non-empty stack files into the local run folder's stacks/ (rank numbers
    are global: no two nodes write the same name)."""
    remote = stacks_dir(run_dir)
    if not t.exists(remote):
        return
    into = local_dir / STACKS_DIR
    fetched = local_dir / f".{STACKS_DIR}-{t.node.name}"
    t.get_tree(remote, fetched)
    for file in sorted(fetched.glob("rank-*")):
        if file.is_file() and file.stat().st_size > 0:
            into.mkdir(parents=True, exist_ok=True)
            file.replace(into / file.name)
    shutil.rmtree(fetched, ignore_errors=True)
