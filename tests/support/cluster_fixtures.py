"""Helpers for end-to-end tests of `orchestrator submit` against real sshd nodes: a cluster file
for a set of test nodes, the real CLI as a subprocess, and a look at what runs on the machine
(every test node is this machine, so /proc shows every node's processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator.specs import NodeSpec, SshSettings

REPO = Path(__file__).resolve().parents[2]
# A few tiny iterations on 64-pixel images: a CPU step near a second.
TINY_SETS = [
    "max_iters=2",
    "epochs=1",
    "min_size=64",
    "max_size=64",
    "eval_max_images=4",
    "workers=0",
    "box_batch_size_per_image=64",
]


# Long enough to be stopped or killed mid-run.
LONG_SETS = ["max_iters=400", "epochs=400", "eval=false"]


def set_args(*extra: str) -> list[str]:
    """`--set` options: the tiny run's settings, then `extra` (later ones win)."""
    return [arg for item in [*TINY_SETS, *extra] for arg in ("--set", item)]


def start_long_submit(cfg: Path, db: Path, topology: str, cwd: Path) -> subprocess.Popen[str]:
    """`orchestrator submit TOPOLOGY` of a run long enough to interrupt, in the background."""
    args = ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", topology]
    return start_cli([*args, *set_args(*LONG_SETS)], cwd)


def workers_of(proc: subprocess.Popen[str], node_rank: str | None = None) -> list[dict[str, Any]]:
    """The workload's rank processes (not torchrun) now running, on one node rank or all;
    fails at once if the submitting process already ended. Only this submission's: ranks
    whose working directory (their run folder) lies under the submitting process's (a test's
    tmp_path), so that a test that kills a rank never kills another test's on this machine."""
    if proc.poll() is not None:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"submit exited early ({proc.returncode}): {err[-2000:]}")
    root = _cwd(proc.pid)
    found = [p for p in run_processes() if p["local_rank"] is not None]
    found = [p for p in found if root and _cwd(p["pid"]).startswith(root + "/")]
    return [p for p in found if node_rank is None or p["node_rank"] == node_rank]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _free_port() -> int:
    from tests.support.workload_fixtures import free_port

    return free_port()


def write_cluster_file(
    path: Path,
    nodes: Sequence[NodeSpec],
    ssh: SshSettings,
    *,
    data_dir: Path,
    workdir_root: Path,
    accelerators: int = 2,
    connect_timeout_s: float = 5.0,
    store_url: str | None = None,
    runtime: str = "host",
    follower_grace_s: float | None = None,
    socket_ifname: str = "lo",
    extra_cluster: Sequence[str] = (),
    health: Sequence[str] = ('before_run = "never"',),
) -> Path:
    """A cluster file as a lab admin would write it, for test nodes on loopback addresses.
    `health`: the [health] table's lines; by default no health gate before runs (the tests of
    the gate, tests/integration/test_health_netns.py, give their own)."""
    lines = [
        "[cluster]",
        'name = "test"',
        'vendor = "cpu"',
        f"runtime = {_toml_str(runtime)}",
        f"master_port = {_free_port()}",
        *([f"follower_grace_s = {follower_grace_s}"] if follower_grace_s else []),
        *extra_cluster,
        "",
        "[ssh]",
        f"known_hosts = [{', '.join(_toml_str(k) for k in ssh.known_hosts)}]",
        f"connect_timeout_s = {connect_timeout_s}",
        "command_timeout_s = 60",
        "",
        "[case]",
        f"data_dir = {_toml_str(str(data_dir))}",
        'backbone_weights = "none"',
        "",
    ]
    if store_url:
        lines += ["[store]", f"url = {_toml_str(store_url)}", ""]
    if health:
        lines += ["[health]", *health, ""]
    for node in nodes:
        lines += [
            "[[nodes]]",
            f"name = {_toml_str(node.name)}",
            f"address = {_toml_str(node.address)}",
            f"port = {node.port}",
            f"user = {_toml_str(node.user or 'root')}",
            *([f"key_file = {_toml_str(node.key_file)}"] if node.key_file else []),
            *([f"docker_host = {_toml_str(node.docker_host)}"] if node.docker_host else []),
            f"accelerators = {accelerators}",
            f"socket_ifname = {_toml_str(socket_ifname)}",
            f"python = {_toml_str(sys.executable)}",
            f"workdir = {_toml_str(str(workdir_root / node.name))}",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("ORCHESTRATOR_CLUSTER", "ORCHESTRATOR_DB", "ORCHESTRATOR_RUNS_DIR"):
        env.pop(key, None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=cli_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def run_processes(run_id: str | None = None) -> list[dict[str, Any]]:
    """Every live process started for a run (or any run): pid, its run id, node rank, local
    rank (None for torchrun itself) and command line. Zombies are not processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        rid = env.get("ORCHESTRATOR_RUN_ID")
        if rid is None or (run_id is not None and rid != run_id):
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state == "Z":
            continue
        found.append(
            {
                "pid": pid,
                "run_id": rid,
                "node_rank": env.get("GROUP_RANK"),
                "local_rank": env.get("LOCAL_RANK"),
                "cmdline": cmdline,
            }
        )
    return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(
    proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 60
) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic COCO 2017 layout of tiny images, shared by the submit tests."""
    from tests.support.workload_fixtures import make_synth

    return make_synth(tmp_path_factory.mktemp("coco") / "coco", images=8, val_images=4, size=64)
