"""How long `orchestrator health 4x1` takes on the namespace testbed, and what it measures
(docs/health.md): four nodes in network namespaces, 200 Mbit/s links, one of them optionally
at a fifth of that. Prints each probe's wall time, its phases and its figures.

    python bench/bench_health.py [--repeat 3] [--slow node3] [--nodes 4]

Needs root, iproute2, openssh-server (tests/support/netns_testbed.py). Load on the machine
(`uptime`) is printed too: on a shared 2-core machine torch's import dominates the time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster_fixtures import cli_env, write_cluster_file  # noqa: E402
from tests.support.netns_testbed import Testbed  # noqa: E402

RATE_MBIT = 200


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--slow", default=None, help="a node whose link runs at a fifth")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hl-bench-") as tmp:
        root = Path(tmp)
        bed = Testbed(root / "bed", args.nodes, RATE_MBIT, docker=False, prefix="hl")
        with bed:
            cfg = write_cluster_file(
                root / "cluster.toml",
                list(bed.nodes),
                bed.ssh,
                data_dir=root,
                workdir_root=root / "nodes",
                accelerators=1,
                socket_ifname="eth0",
                health=[
                    "sizes_mib = [0.25, 1]",
                    "iters = 3",
                    "compute_s = 0.5",
                    f"expected_busbw_gbs = {RATE_MBIT / 8000}",
                ],
            )
            if args.slow:
                bed.set_rate(args.slow, RATE_MBIT // 5)
            cli = [sys.executable, "-m", "orchestrator", "--cluster", str(cfg)]
            cli += ["--db", f"sqlite:///{root / 'results.db'}"]
            topology = f"{args.nodes}x1"
            env = cli_env(PYTHONPATH=str(ROOT))
            for i in range(args.repeat):
                load = os.getloadavg()[0]
                began = time.monotonic()
                proc = subprocess.run(
                    bed.build_host_argv([*cli, "health", topology, "--format", "json"]),
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                wall = time.monotonic() - began
                if proc.returncode not in (0, 3):
                    print(proc.stderr[-2000:])
                    raise SystemExit(1)
                doc = json.loads(proc.stdout)
                phases = {k: round(v, 1) for k, v in doc["probe"]["phases_s"].items()}
                print(
                    f"run {i + 1}: health {topology} {wall:.1f} s (load {load:.1f}); "
                    f"phases {phases}; probe inside {doc['probe_s']:.1f} s; ok {doc['ok']}; "
                    f"blamed {doc['blamed']}"
                )
                for f in doc["figures"]:
                    where = f["node"] or f"{f['ranks']} ranks"
                    peer = f" - {f['peer']}" if f["peer"] else ""
                    print(
                        f"  {f['check']:9} {where}{peer}: {f['value']:.4g} {f['unit']} "
                        f"({f['verdict']})"
                    )


if __name__ == "__main__":
    main()
