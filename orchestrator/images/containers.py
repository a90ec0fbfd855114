"""The Docker runtime: the `docker run` argv that wraps a node's command, and cleanup by label.

Pure argv builders (golden-tested) plus small functions that run them through anything with a
`run(argv, timeout=..., check=...)` method (the SSH Transport, or the local runner).

Containers run in the foreground (no -d) so the launcher streams their output and gets the exit
code; `--rm` removes a container that exits, and `remove_run_containers` removes by label whatever
a killed client or a failure left behind, on every node.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from orchestrator.errors import ImageError
from orchestrator.images.profiles import RuntimeOptions, VendorProfile
from orchestrator.images.runtime_choice import choose_runtime
from orchestrator.transport.base import CommandResult, Stdin

if TYPE_CHECKING:
    from orchestrator.plan import NodePlan

LABEL_RUN_ID = "orchestrator.run_id"
LABEL_NODE_RANK = "orchestrator.node_rank"
LABEL_MANAGED = "orchestrator.managed"
CONTAINER_PYTHON = "/opt/venv/bin/python"  # the image's interpreter (with torch)
CONTAINER_WORKLOAD_ROOT = (
    "/opt/orchestrator"  # PYTHONPATH root: `python -m workload.faster_rcnn...`
)
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" allows a trailing newline


@dataclass(frozen=True)
class Mount:
    """A host path mounted at the same path in the container, so the plan's paths stay valid."""

    host_path: str
    container_path: str | None = None
    read_only: bool = False

    def option(self) -> str:
        """The value of `--mount`: docker reads it as one CSV record of key=value fields, so a
        field with a comma, quote or newline is quoted (quotes doubled); any other character
        a Linux path may hold (':', '=', spaces) is literal there. `-v a:b` would split at ':'."""
        target = self.container_path or self.host_path
        for path in (self.host_path, target):
            check_mount_path(path)
        fields = ["type=bind", f"source={self.host_path}", f"target={target}"]
        if self.read_only:
            fields.append("readonly")
        return ",".join(_csv_field(f) for f in fields)


def check_mount_path(path: str) -> None:
    """Refuse, in one line, a path that `--mount` cannot carry unchanged: relative ones, and a
    carriage return (docker's CSV reader drops one before a newline)."""
    if not path.startswith("/"):
        raise ImageError(f"mount path {path!r} is not absolute", "use an absolute path")
    if "\r" in path:
        raise ImageError(
            f"mount path {path!r} holds a carriage return, which docker's --mount parser drops",
            "rename the file or folder",
        )


def _csv_field(field: str) -> str:
    if any(c in field for c in ',"\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


class Runner(Protocol):
    """What image code needs of a node: a command run to its end (a Transport does it)."""

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: Stdin = None,
        check: bool = True,
    ) -> CommandResult: ...


def docker_argv(docker_host: str | None = None) -> list[str]:
    """`docker`, pointed at the node's daemon when it is not the default one."""
    return ["docker", "-H", docker_host] if docker_host else ["docker"]


def container_name(run_id: str, node_rank: int) -> str:
    safe = _NAME_UNSAFE.sub("-", run_id).strip("-.") or "run"
    return f"orch-{safe}-n{node_rank}"


def container_argv(
    profile: VendorProfile | RuntimeOptions,
    image: str,
    run_id: str,
    node_rank: int,
    command_argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    mounts: Iterable[Mount] = (),
    *,
    docker_host: str | None = None,
    workdir: str | None = None,
) -> list[str]:
    """`docker run ... IMAGE COMMAND...` for one node of a run.

    The vendor's environment comes first and the plan's `env` overrides it. Every value is passed
    explicitly with -e so the container sees exactly what the plan shows.
    """
    runtime = profile.runtime if isinstance(profile, VendorProfile) else profile
    if not command_argv:
        raise ImageError("container command is empty", "pass the node's command argv")
    merged = {**runtime.env, **(env or {})}
    for key in merged:
        if not _ENV_NAME.fullmatch(key):
            raise ImageError(
                f"environment variable name {key!r} is invalid", "use letters, digits and _"
            )
    argv = docker_argv(docker_host) + [
        "run",
        "--rm",
        "--init",  # PID 1 forwards signals to torchrun and reaps its children
        "--name",
        container_name(run_id, node_rank),
        "--label",
        f"{LABEL_MANAGED}=true",
        "--label",
        f"{LABEL_RUN_ID}={run_id}",
        "--label",
        f"{LABEL_NODE_RANK}={node_rank}",
        *runtime_args(runtime),
    ]
    for mount in mounts:
        argv += ["--mount", mount.option()]
    for key in sorted(merged):
        argv += ["-e", f"{key}={merged[key]}"]
    if workdir:
        argv += ["-w", workdir]
    return argv + [image, *command_argv]


def runtime_args(runtime: RuntimeOptions) -> list[str]:
    """The vendor's options of a `docker run`: only `devices` and `ulimits` (a node's own
    options, resolved by runtime_choice.choose_runtime, carry the optional ones it uses)."""
    argv = ["--network", "host", "--ipc", "host", "--shm-size", runtime.shm_size]
    for limit in runtime.ulimits:
        argv += ["--ulimit", limit]
    if runtime.gpus:
        argv += ["--gpus", runtime.gpus]
    for device in runtime.devices:
        argv += ["--device", device]
    for group in runtime.group_add:
        argv += ["--group-add", group]
    return argv + list(runtime.options)


def trial_argv(
    runtime: RuntimeOptions,
    image: str,
    run_id: str,
    node_rank: int,
    *,
    docker_host: str | None = None,
) -> list[str]:
    """A no-op `docker run` with a node's runtime options: does its daemon accept them?
    Labelled like the run's containers, so cleanup by run id finds one a killed client left."""
    return docker_argv(docker_host) + [
        "run",
        "--rm",
        "--name",
        container_name(run_id, node_rank) + "-check",
        "--label",
        f"{LABEL_MANAGED}=true",
        "--label",
        f"{LABEL_RUN_ID}={run_id}",
        *runtime_args(runtime),
        "--entrypoint",
        CONTAINER_PYTHON,
        image,
        "-c",
        "",
    ]


def list_containers_argv(run_id: str | None = None, docker_host: str | None = None) -> list[str]:
    """IDs, run ids, names and states of our containers (of one run, or of every run)."""
    label = f"{LABEL_RUN_ID}={run_id}" if run_id is not None else LABEL_RUN_ID
    fmt = '{{.ID}}\t{{.Label "' + LABEL_RUN_ID + '"}}\t{{.Names}}\t{{.State}}'
    return docker_argv(docker_host) + [
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        f"label={label}",
        "--format",
        fmt,
    ]


def remove_containers_argv(
    container_ids: Sequence[str], docker_host: str | None = None
) -> list[str]:
    return docker_argv(docker_host) + ["rm", "-f", "-v", *container_ids]


@dataclass(frozen=True)
class ContainerInfo:
    container_id: str
    run_id: str
    name: str
    state: str


def parse_container_list(stdout: str) -> list[ContainerInfo]:
    found = []
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0]:
            found.append(ContainerInfo(*parts))
    return found


def _check(result: CommandResult, what: str) -> str:
    if result.exit_code != 0:
        stderr = result.stderr.strip().splitlines()
        raise ImageError(
            f"{what} failed: {stderr[-1] if stderr else 'exit ' + str(result.exit_code)}"
        )
    return result.stdout


def find_containers(
    runner: Runner, run_id: str | None = None, docker_host: str | None = None, timeout: float = 30.0
) -> list[ContainerInfo]:
    """Our containers on one node: of `run_id`, or of any run (leftovers) when it is None."""
    argv = list_containers_argv(run_id, docker_host)
    return parse_container_list(_check(runner.run(argv, timeout=timeout, check=False), "docker ps"))


def remove_run_containers(
    runner: Runner, run_id: str | None, docker_host: str | None = None, timeout: float = 60.0
) -> list[ContainerInfo]:
    """Stop and remove the containers of `run_id` (or of every run) on one node; returns them."""
    found = find_containers(runner, run_id, docker_host, timeout)
    if found:
        argv = remove_containers_argv([c.container_id for c in found], docker_host)
        result = runner.run(argv, timeout=timeout, check=False)
        # A container that ended (--rm) between listing and removal is already gone: fine.
        if result.exit_code != 0 and "No such container" not in result.stderr:
            _check(result, "docker rm")
    return found


def _absolute(path: str, cwd: str) -> str:
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(cwd, path))


def node_wrapper(
    profile: VendorProfile,
    image: str,
    run_id: str,
    *,
    data_dir: str,
    backbone_weights: str | None = None,
    facts: Mapping[str, Mapping[str, bool]] | None = None,
) -> Callable[[NodePlan], tuple[str, ...]]:
    """The plan's `wrap`: a node's torchrun command -> its `docker run` command.

    Each node gets the runtime options that fit it (runtime_choice.choose_runtime), from
    `facts`, what its probe found (node -> device path -> exists); None before any probe.

    Paths keep their meaning inside the container: the dataset (read-only), the backbone
    weights (read-only) and the run directory are mounted at the same paths, and the container
    starts in the run directory. Only the interpreter changes, to the image's venv.
    """

    def wrap(node_plan: NodePlan) -> tuple[str, ...]:
        run_dir = node_plan.run_dir
        mounts = [Mount(_absolute(data_dir, run_dir), read_only=True)]
        if backbone_weights and backbone_weights != "none":
            mounts.append(Mount(_absolute(backbone_weights, run_dir), read_only=True))
        mounts.append(Mount(run_dir))
        command = [CONTAINER_PYTHON, *list(node_plan.torchrun_argv)[1:]]
        found = facts.get(node_plan.node.name) if facts is not None else None
        runtime = choose_runtime(profile.runtime, node_plan.node, found).options
        return tuple(
            container_argv(
                runtime,
                image,
                run_id,
                node_plan.node_rank,
                command,
                dict(node_plan.env),
                mounts,
                docker_host=node_plan.node.docker_host,
                workdir=run_dir,
            )
        )

    return wrap
