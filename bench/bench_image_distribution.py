"""Image distribution benchmark: our `docker save` -> SSH -> `docker load` to 2 nodes in parallel,
against a raw `docker save | docker load` pipe on the same machine, in the same run.

Starts 2 real sshd nodes on 127.0.0.2.. and 2 extra Docker daemons (one per node, own data
root), builds an image with an incompressible payload layer of --size-mb on the local daemon
(or uses --image), then, --repeat times, interleaved:

- raw: `docker save IMAGE | docker -H node1 load` (no SSH, one node), MB/s;
- ours: `distribute()` to both nodes at once (one save stream teed to both, over SSH), MB/s per
  node (its bytes / its time) and in all; and to one node alone (our overhead against raw);
- raw to both nodes at once (two `docker save | docker load` pipes): the like-for-like baseline
  when both "nodes" share this machine's disk and cores;
- the image removed from the nodes after each round.

Then: how long deciding that a node already has the image takes (per node, parallel check over
open connections), and the bytes a second distribution moves (must be 0).

    .venv/bin/python bench/bench_image_distribution.py [--size-mb 512] [--repeat 2] [--image TAG]

Targets: ours per node >= 0.8x raw, nodes served in parallel; presence decided in < 1 s per node.
Needs root, dockerd running (scripts/start-services.sh), openssh-server, debootstrap.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.images.build import build_image, image_id, open_api  # noqa: E402
from orchestrator.images.distribute import check_presence, distribute  # noqa: E402
from orchestrator.images.profiles import load_profile  # noqa: E402
from orchestrator.images.spec import Sha256Cache, make_image_spec  # noqa: E402
from orchestrator.images.workflow import targets  # noqa: E402
from orchestrator.transport import NodeSession  # noqa: E402
from tests.support.docker_fixtures import (  # noqa: E402
    REPO,
    copy_workload,
    start_node_daemons,
    tiny_wheel,
    write_test_profile,
)
from tests.support.sshd_fixtures import SshdCluster  # noqa: E402


def payload_image(api, work: Path, size_mb: int) -> str:
    base = subprocess.run(
        ["bash", str(REPO / "scripts" / "make-base-image.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    wheels = work / "wheels"
    tiny_wheel(wheels)
    root = write_test_profile(work / "images", "orchbench", base, wheels)
    workload = copy_workload(work / "src", payload_mb=size_mb)
    spec = make_image_spec(
        load_profile("orchbench", root),
        None,
        image_id(api, base),
        workload_dir=workload,
        cache=Sha256Cache(None),
    )
    started = time.monotonic()
    built = build_image(spec, api, log_dir=work / "logs")
    print(
        f"image {spec.tag}: {built.size_bytes / 1e6:.0f} MB, built in {time.monotonic() - started:.0f}s"
    )
    return spec.tag


def raw_pipes(tag: str, docker_hosts: list[str]) -> float:
    """Seconds until `docker save TAG | docker -H HOST load` is done for every host, all at once."""
    started = time.monotonic()
    pipes = []
    for host in docker_hosts:
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        load = subprocess.Popen(
            ["docker", "-H", host, "load", "--quiet"],
            stdin=save.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert save.stdout is not None
        save.stdout.close()  # the load holds the pipe now
        pipes.append((save, load))
    for save, load in pipes:
        _, err = load.communicate()
        if save.wait() != 0 or load.returncode != 0:
            raise SystemExit(f"raw pipe failed: {err.decode()[-500:]}")
    return time.monotonic() - started


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=512, help="payload layer size (default 512)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--image", help="an image on the local daemon to use instead of building one"
    )
    args = parser.parse_args()

    api = open_api()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        work = Path(tmp)
        tag = args.image or payload_image(api, work, args.size_mb)
        daemons = start_node_daemons(2, prefix="bench", log_dir=work)
        cluster = SshdCluster(work / "sshd", 2).start()
        try:
            nodes = tuple(
                replace(n, docker_host=d.docker_host) for n, d in zip(cluster.nodes, daemons)
            )
            raw_rates: list[float] = []
            raw2_rates: list[float] = []
            ours1_rates: list[float] = []
            ours_node_rates: list[float] = []
            ours_total_rates: list[float] = []
            ours_cpu: list[float] = []
            stream_bytes = 0
            hosts = [d.docker_host for d in daemons]
            with NodeSession(nodes, cluster.ssh) as session:
                nodes_t = targets(nodes, session.transports)
                for round_ in range(1, args.repeat + 1):
                    started, cpu = time.monotonic(), cpu_seconds()
                    report = distribute(api, tag, nodes_t)
                    wall = time.monotonic() - started
                    ours_cpu.append(cpu_seconds() - cpu)
                    stream_bytes = max(t.bytes_sent for t in report.transfers.values())
                    rates = {n: t.mb_per_s for n, t in report.transfers.items()}
                    ours_node_rates += rates.values()
                    ours_total_rates.append(
                        sum(t.bytes_sent for t in report.transfers.values()) / 1e6 / wall
                    )
                    for daemon in daemons:
                        daemon.remove_image(tag)
                    raw_rates.append(stream_bytes / 1e6 / raw_pipes(tag, hosts[:1]))
                    daemons[0].remove_image(tag)
                    single = distribute(api, tag, nodes_t[:1]).transfers[nodes[0].name]
                    ours1_rates.append(single.mb_per_s)
                    daemons[0].remove_image(tag)
                    raw2_rates.append(stream_bytes / 1e6 / raw_pipes(tag, hosts))
                    for daemon in daemons:
                        daemon.remove_image(tag)
                    print(
                        f"round {round_}: raw {raw_rates[-1]:.0f} MB/s to 1 node, {raw2_rates[-1]:.0f} MB/s "
                        f"per node to 2 at once; ours "
                        + ", ".join(f"{n} {r:.0f} MB/s" for n, r in rates.items())
                        + f" ({wall:.1f}s for {stream_bytes / 1e6:.0f} MB x 2, {ours_cpu[-1]:.1f} CPU-s here);"
                        + f" ours to 1 node alone {ours1_rates[-1]:.0f} MB/s"
                    )
                distribute(api, tag, nodes_t)
                presence_s: list[float] = []
                for _ in range(10):
                    found = check_presence(nodes_t, tag)
                    presence_s += [p.seconds for p in found.values()]
                again = distribute(api, tag, nodes_t)
            raw = statistics.median(raw_rates)
            raw2 = statistics.median(raw2_rates)
            ours = statistics.median(ours_node_rates)
            print()
            print(f"stream size                        {stream_bytes / 1e6:.0f} MB")
            print(f"raw save|load, 1 node              {raw:.0f} MB/s (median of {len(raw_rates)})")
            print(f"raw save|load, 2 nodes at once     {raw2:.0f} MB/s per node")
            print(
                f"ours, 2 nodes at once, per node    {ours:.0f} MB/s (median of {len(ours_node_rates)})"
            )
            print(
                f"ours, both nodes together          {statistics.median(ours_total_rates):.0f} MB/s"
            )
            print(f"ours, 1 node alone                 {statistics.median(ours1_rates):.0f} MB/s")
            print(
                f"ours CPU here (save, tee, SSH)     {statistics.median(ours_cpu):.1f} CPU-s per distribution"
            )
            print(f"ratio per node / raw 1 node        {ours / raw:.2f}  (target >= 0.80)")
            print(
                f"ratio per node / raw 2 at once     {ours / raw2:.2f}  (same load on this one machine)"
            )
            print(
                f"ratio 1 node alone / raw 1 node    {statistics.median(ours1_rates) / raw:.2f}  (our overhead)"
            )
            print(
                f"presence check per node            median {statistics.median(presence_s) * 1000:.0f} ms, "
                f"max {max(presence_s) * 1000:.0f} ms (target < 1000 ms)"
            )
            print(
                f"second distribution moved          {again.bytes_moved} bytes (method {again.method})"
            )
        finally:
            cluster.stop()
            for daemon in daemons:
                daemon.stop()
            if not args.image:
                subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


if __name__ == "__main__":
    main()
