"""Image distribution benchmark: the raw star against our relay, for N nodes, on the namespace
testbed (tests/support/netns_testbed.py): every node in its own network namespace with its own
sshd and dockerd, every link (the build host's too) shaped to --rate-mbit both ways.

For each N of --nodes, in one run, on nodes that start empty:
- raw star: `docker save IMAGE | ssh node docker load`, to the N nodes at once;
- ours: `distribute()` (the relay, what `submit` and `image push-to-nodes` use);
- ours again after one workload file changed (a new image sharing all other layers);
- ours once more with the image everywhere: how long deciding that takes.
Bytes are the links' interface counters: out of the build host, into each node. The image is
made here (tests/support/docker_fixtures.layered_image): an incompressible base of --sizes-mb[0],
one layer per further size, and the workload on top.

    .venv/bin/python bench/bench_image_distribution.py --nodes 1,2,4,8 [--rate-mbit 200]

Targets (issue 16): out of the build host <= 1.1 x the bytes that must move, for every N;
wall(N=8) <= 1.5 x wall(N=1); after a one-file change, bytes moved <= 5 % of the image; deciding
that all 8 nodes have the image < 1 s. Needs root, dockerd (scripts/start-services.sh), iproute2,
openssh-server and openssh-client.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.images.build import open_api  # noqa: E402
from orchestrator.images.distribute import DistributionReport, distribute  # noqa: E402
from orchestrator.images.workflow import targets  # noqa: E402
from orchestrator.transport import NodeSession  # noqa: E402
from tests.support.docker_fixtures import layered_image  # noqa: E402
from tests.support.netns_testbed import Testbed  # noqa: E402

MB = 1e6


@dataclass
class Run:
    wall_s: float
    out_of_build_host: int
    into_nodes: list[int]
    node_cpu_s: float = 0.0  # what the nodes' processes used, all together (2 cores here)


def traffic(
    bed: Testbed, before: dict[str, tuple[int, int]], names: list[str]
) -> tuple[int, list[int]]:
    after = bed.counters()
    out = after["build-host"][1] - before["build-host"][1]
    return out, [after[n][0] - before[n][0] for n in names]


def empty(bed: Testbed) -> None:
    def clean(name: str) -> None:
        daemon = bed.daemon(name)
        ids = daemon.docker("image", "ls", "--all", "--quiet", "--no-trunc").stdout.split()
        if ids:
            daemon.docker("rmi", "--force", *sorted(set(ids)), check=False)

    with ThreadPoolExecutor(len(bed.nodes)) as pool:
        list(pool.map(clean, [n.name for n in bed.nodes]))


def raw_star(bed: Testbed, tag: str, count: int) -> Run:
    """`docker save TAG | ssh NODE docker -H SOCK load`, to `count` nodes at once."""
    nodes = bed.nodes[:count]
    before, cpu = bed.counters(), bed.cpu_seconds()
    started = time.monotonic()
    pipes = []
    for node in nodes:
        ssh = ["ssh", *bed.ssh_options(), f"{node.user}@{node.address}"]
        remote = shlex.join(["docker", "-H", node.docker_host or "", "load", "--quiet"])
        line = f"docker save {shlex.quote(tag)} | {shlex.join(ssh)} {shlex.quote(remote)}"
        pipes.append(
            subprocess.Popen(
                bed.build_host_argv(["sh", "-c", line]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for proc in pipes:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"raw star failed: {err.decode()[-500:]}")
    wall = time.monotonic() - started
    out, into = traffic(bed, before, [n.name for n in nodes])
    return Run(wall, out, into, bed.cpu_seconds() - cpu)


def ours(bed: Testbed, api, tag: str, count: int) -> tuple[Run, DistributionReport]:
    nodes = bed.nodes[:count]
    with bed.on_build_host():
        with NodeSession(nodes, bed.ssh) as session:  # submit has its connections open already
            before, cpu = bed.counters(), bed.cpu_seconds()
            started = time.monotonic()
            report = distribute(api, tag, targets(nodes, session.transports))
            wall = time.monotonic() - started
            cpu = bed.cpu_seconds() - cpu  # before the sessions close: sshd reaps them later
    out, into = traffic(bed, before, [n.name for n in nodes])
    return Run(wall, out, into, cpu), report


def presence_seconds(bed: Testbed, api, tag: str, count: int, repeat: int = 5) -> list[float]:
    """Time for distribute() to decide that every node already has `tag`."""
    nodes = bed.nodes[:count]
    seconds = []
    with bed.on_build_host():
        with NodeSession(nodes, bed.ssh) as session:
            for _ in range(repeat):
                started = time.monotonic()
                report = distribute(api, tag, targets(nodes, session.transports))
                seconds.append(time.monotonic() - started)
                assert report.method == "none", report.method
    return seconds


def ssh_command_cost(bed: Testbed, repeat: int = 10) -> tuple[float, float]:
    """Wall and node CPU seconds of one SSH command (`true`) on a node, over an open
    connection: what every per-node step costs here before it does anything."""
    with bed.on_build_host():
        with NodeSession(bed.nodes[:1], bed.ssh) as session:
            transport = session.transports[bed.nodes[0].name]
            cpu, started = bed.cpu_seconds(), time.monotonic()
            for _ in range(repeat):
                transport.run(["true"])
            return (time.monotonic() - started) / repeat, (bed.cpu_seconds() - cpu) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="1,2,4,8", help="node counts (default 1,2,4,8)")
    parser.add_argument("--rate-mbit", type=int, default=200, help="every link (default 200)")
    parser.add_argument(
        "--sizes-mb", default="160,80,40", help="layer sizes below the workload (MiB)"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    sizes = tuple(int(s) for s in args.sizes_mb.split(","))
    api = open_api()
    first, _ = layered_image(api, "bench", sizes)
    second, _ = layered_image(api, "bench", sizes, "one changed line")
    image_bytes = int(api.inspect_image(first)["Size"])
    layers = len(api.inspect_image(first)["RootFS"]["Layers"])
    print(
        f"image {first}: {image_bytes / MB:.0f} MB in {layers} layers; links {args.rate_mbit} "
        f"Mbit/s; load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        started = time.monotonic()
        with Testbed(Path(tmp), max(counts), args.rate_mbit) as bed:
            print(f"testbed of {max(counts)} nodes up in {time.monotonic() - started:.0f}s")
            wall, cpu = ssh_command_cost(bed)
            print(
                f"one SSH command on a node: {wall * 1000:.0f} ms, {cpu * 1000:.0f} ms of the "
                "node's CPU (the login shell's startup files run for every command)"
            )
            for count in counts:
                empty(bed)
                star = raw_star(bed, first, count)
                empty(bed)
                relay, report = ours(bed, api, first, count)
                again, changed = ours(bed, api, second, count)
                decide = presence_seconds(bed, api, second, count)
                rows.append((count, star, relay, report, again, changed, decide))
                print(
                    f"N={count}: star {star.wall_s:.1f}s, ours {relay.wall_s:.1f}s, "
                    f"changed {again.wall_s:.1f}s, decide {max(decide):.2f}s",
                    flush=True,
                )
            empty(bed)
    print_table(rows, image_bytes)


def print_table(rows: list, image_bytes: int) -> None:
    base_wall = rows[0][2].wall_s
    print()
    print(
        f"{'N':>2} {'':6} {'wall s':>7} {'/N=1':>5} {'out of build host MB':>21} "
        f"{'must move MB':>13} {'out/must':>8} {'into each node MB':>18} {'node CPU s':>10}"
    )
    for count, star, relay, report, *_ in rows:
        must = report.payload_bytes
        for name, run, ratio in (
            ("star", star, ""),
            ("ours", relay, f"{relay.wall_s / base_wall:5.2f}"),
        ):
            into = f"{min(run.into_nodes) / MB:.0f}-{max(run.into_nodes) / MB:.0f}"
            print(
                f"{count:>2} {name:6} {run.wall_s:7.1f} {ratio:>5} {run.out_of_build_host / MB:21.1f} "
                f"{must / MB:13.1f} {run.out_of_build_host / must:8.2f} {into:>18} "
                f"{run.node_cpu_s:10.1f}"
            )
    print()
    print("after one workload file changed (ours; the star sends the whole image again):")
    print(
        f"{'N':>2} {'wall s':>7} {'layers':>6} {'out of build host MB':>21} {'into each node MB':>18} {'moved/image':>11}"
    )
    for count, _star, _relay, _report, again, changed, _decide in rows:
        into = f"{min(again.into_nodes) / MB:.2f}-{max(again.into_nodes) / MB:.2f}"
        print(
            f"{count:>2} {again.wall_s:7.1f} {len(changed.layers):>6} "
            f"{again.out_of_build_host / MB:21.2f} {into:>18} "
            f"{max(again.into_nodes) / image_bytes:10.2%}"
        )
    print()
    for count, *_, decide in rows:
        print(
            f"N={count}: deciding that every node has the image: median "
            f"{sorted(decide)[len(decide) // 2] * 1000:.0f} ms, max {max(decide) * 1000:.0f} ms"
        )
    last = rows[-1]
    worst_out = max(r[2].out_of_build_host / r[3].payload_bytes for r in rows)
    worst_change = max(max(r[4].into_nodes) for r in rows) / image_bytes
    print()
    print("targets:")
    print(f"  out of the build host / must move, worst N      {worst_out:.3f}  (<= 1.1)")
    print(
        f"  wall N={last[0]} / wall N={rows[0][0]} (ours)                  {last[2].wall_s / base_wall:.2f}   (<= 1.5)"
    )
    print(f"  one-file change: bytes moved / image, worst N    {worst_change:.2%}  (<= 5 %)")
    print(f"  deciding all {last[0]} nodes have it, max               {max(last[6]):.2f} s (< 1 s)")
    print(f"  load average at the end                          {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
