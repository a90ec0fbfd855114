"""SSH fan-out benchmark: NodeSession against FlagPerf's serial `ssh` loop and against the floor.

Starts up to 32 real sshd daemons on 127.0.0.2.. (needs root and openssh-server), then for 2, 8
and 32 nodes measures, in the same run:

- serial: FlagPerf's way, one node after another, one `ssh` process per step: a trivial
  command, the launch of a job that does nothing, its teardown (3 `ssh` per node);
- ours: NodeSession (connections opened in parallel) + the trivial command fanned out, then
  launch + teardown of a no-op job (spawn `sleep 0`, wait, kill its process group);
- one more fan-out round of the trivial command with connections open (ours), against raw
  paramiko exec on already-open connections in parallel threads (the floor: what the sshd
  daemons themselves need), interleaved; the ratio is the median of the paired ratios;
- parallel OpenSSH processes (connect + trivial command), the floor for connect + command.

    .venv/bin/python bench/bench_ssh_fanout.py [--nodes 2,8,32] [--rounds 9] [--repeat 2]

Targets: at 32 nodes ours (connect + command + job) at least 3x faster than serial; one more
round within 1.2x of the floor.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paramiko  # noqa: E402

from orchestrator.specs import NodeSpec, SshSettings  # noqa: E402
from orchestrator.transport import NodeSession, Transport  # noqa: E402
from tests.support.sshd_fixtures import SshdCluster  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def ssh_argv(cluster: SshdCluster, node: NodeSpec, command: str) -> list[str]:
    return [
        "ssh",
        *cluster.ssh_options(),
        "-p",
        str(node.port),
        f"{node.user}@{node.address}",
        command,
    ]


def serial_flagperf(cluster: SshdCluster, nodes: Sequence[NodeSpec], workdir: str) -> float:
    """One node after another, one ssh process per step."""

    def run() -> None:
        for node in nodes:
            pid_file = f"{workdir}/{node.name}.pid"
            steps = [
                "true",
                f"cd {workdir} && nohup sleep 0 > {node.name}.log 2>&1 & echo $! > {pid_file}",
                f"kill $(cat {pid_file}) 2>/dev/null; rm -f {pid_file}",
            ]
            for step in steps:
                subprocess.run(ssh_argv(cluster, node, step), check=True, stdout=subprocess.DEVNULL)

    return timed(run)


def parallel_openssh(cluster: SshdCluster, nodes: Sequence[NodeSpec]) -> float:
    """Connect + trivial command with one OpenSSH process per node, all at once."""

    def run() -> None:
        procs = [
            subprocess.Popen(ssh_argv(cluster, n, "true"), stdout=subprocess.DEVNULL) for n in nodes
        ]
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError("ssh failed")

    return timed(run)


def noop_job(workdir: str) -> Callable[[Transport], int | None]:
    def launch_and_teardown(t: Transport) -> int | None:
        job = t.spawn(["sleep", "0"], log_path=f"{workdir}/{t.name}.log")
        code = job.wait(60)
        t.kill_process_group(job.pgid, grace_s=5)  # teardown: nothing of the group may remain
        return code

    return launch_and_teardown


def ours(
    nodes: Sequence[NodeSpec], ssh: SshSettings, workdir: str
) -> tuple[float, float, NodeSession]:
    """(connect + trivial command, launch + teardown of a no-op job), session left open."""
    started = time.perf_counter()
    session = NodeSession(nodes, ssh).open()
    session.fan_out(lambda t: t.run(["true"]), timeout=60, what="trivial command")
    connect_and_command = time.perf_counter() - started
    job = timed(lambda: session.fan_out(noop_job(workdir), timeout=60, what="no-op job"))
    return connect_and_command, job, session


def ours_round(session: NodeSession) -> float:
    """One more fan-out of the trivial command on the open session."""
    return timed(lambda: session.fan_out(lambda t: t.run(["true"]), timeout=60, what="round"))


def open_raw_clients(nodes: Sequence[NodeSpec], cluster: SshdCluster) -> list[paramiko.SSHClient]:
    clients: list[paramiko.SSHClient] = []
    lock = threading.Lock()

    def open_one(node: NodeSpec) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(cluster.known_hosts))
        client.connect(
            node.address, node.port, node.user, key_filename=node.key_file,
            look_for_keys=False, allow_agent=False, timeout=30,
        )  # fmt: skip
        with lock:
            clients.append(client)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(clients) != len(nodes):
        raise RuntimeError("raw paramiko connections failed")
    return clients


def raw_round(clients: Sequence[paramiko.SSHClient]) -> float:
    """exec `true` on every open connection in parallel threads, wait for every exit status."""

    def one(client: paramiko.SSHClient) -> None:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.exec_command("true")
        if chan.recv_exit_status() != 0:
            raise RuntimeError("true failed")
        chan.close()

    def run() -> None:
        threads = [threading.Thread(target=one, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return timed(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="2,8,32", help="comma-separated node counts")
    parser.add_argument("--rounds", type=int, default=9, help="fan-out rounds for the round ratio")
    parser.add_argument("--repeat", type=int, default=2, help="repeats of the slow measurements")
    args = parser.parse_args()
    counts = [int(c) for c in args.nodes.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    workdir = root / "work"
    workdir.mkdir()
    with SshdCluster(root / "sshd", max(counts)) as cluster:
        print(f"{max(counts)} sshd daemons on 127.0.0.2.. port {cluster.port}; medians of "
              f"{args.repeat} (serial/ours/parallel ssh) and {args.rounds} (rounds)\n")  # fmt: skip
        header = (
            f"{'nodes':>5}  {'serial ssh':>10}  {'ours conn+cmd':>13}  {'ours job':>8}  "
            f"{'ours total':>10}  {'speedup':>7}  {'par. ssh':>8}  "
            f"{'round ours':>10}  {'round floor':>11}  {'ratio':>5}"
        )
        print(header)
        print("-" * len(header))
        rows = []
        for count in counts:
            nodes = cluster.nodes[:count]
            serial = statistics.median(
                serial_flagperf(cluster, nodes, str(workdir)) for _ in range(args.repeat)
            )
            par_ssh = statistics.median(
                parallel_openssh(cluster, nodes) for _ in range(args.repeat)
            )
            conn_cmd, job, totals = [], [], []
            session = None
            for _ in range(args.repeat):
                if session is not None:
                    session.close()
                c, j, session = ours(nodes, cluster.ssh, str(workdir))
                conn_cmd.append(c)
                job.append(j)
                totals.append(c + j)
            assert session is not None
            raw = open_raw_clients(nodes, cluster)
            ours_rounds, raw_rounds = [], []
            try:
                for i in range(args.rounds):  # interleaved: both see the same machine load
                    if i % 2:  # and in alternating order
                        raw_rounds.append(raw_round(raw))
                        ours_rounds.append(ours_round(session))
                    else:
                        ours_rounds.append(ours_round(session))
                        raw_rounds.append(raw_round(raw))
            finally:
                session.close()
                for client in raw:
                    client.close()
            total = statistics.median(totals)
            round_ours, round_raw = statistics.median(ours_rounds), statistics.median(raw_rounds)
            # Each round is paired with the floor's round right after it: the median of the
            # pairs' ratios cancels most of the drift of a shared machine's load.
            ratio = statistics.median(o / r for o, r in zip(ours_rounds, raw_rounds))
            rows.append((count, serial / total, ratio))
            print(
                f"{count:>5}  {serial:>9.2f}s  {statistics.median(conn_cmd):>12.2f}s  "
                f"{statistics.median(job):>7.2f}s  {total:>9.2f}s  {serial / total:>6.1f}x  "
                f"{par_ssh:>7.2f}s  {round_ours:>9.3f}s  {round_raw:>10.3f}s  "
                f"{ratio:>5.2f}"
            )
    print()
    for count, speedup, ratio in rows:
        print(
            f"{count:>2} nodes: ours is {speedup:.1f}x faster than the serial ssh loop "
            f"(target >= 3x at 32); one more round takes {ratio:.2f}x the raw paramiko floor "
            f"(target <= 1.2x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
