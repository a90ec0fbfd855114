"""Node-side health probes, started by torchrun like the workload (docs/health.md).

    python -m torch.distributed.run ... -m workload.health_probe --output-dir DIR \
        --precision fp32 --sizes-mib 1,16,256 --iters 5 --compute-s 2

Every rank measures its device (a fixed matrix multiply and a convolution in the run's
precision, warm-up excluded); then all ranks measure a ring all-reduce over all of them, the
ranks of each node one over their node, and the first rank of each node one with the first
rank of the next node (a ring of pairs), so that a slow node or link can be named. Rank 0
writes every figure to DIR/health.json. nccl on accelerators, gloo on the CPU.

Python 3.8 and torch >= 2.0; imports nothing of `orchestrator`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

SCHEMA = 1
MIB = 1024 * 1024
WARMUP = 2


def bus_bandwidth(nbytes: int, seconds: float, ranks: int) -> Tuple[float, float]:
    """(algBW, busBW) in GB/s, nccl-tests' all-reduce definitions: algBW = bytes / time,
    busBW = algBW * 2(n-1)/n (what each rank's link carries in a ring)."""
    alg = nbytes / seconds / 1e9
    return alg, alg * 2.0 * (ranks - 1) / ranks


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="health_probe")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "fp16"])
    p.add_argument("--sizes-mib", default="1,16,256", help="all-reduce sizes, comma-separated")
    p.add_argument("--pair-mib", type=float, default=0.0, help="pair size (0: largest size)")
    p.add_argument("--iters", type=int, default=5, help="timed all-reduces per size")
    p.add_argument("--compute-s", type=float, default=2.0, help="timed compute per device")
    p.add_argument("--pairs", default="ring", choices=["ring", "all"])
    p.add_argument("--timeout-s", type=float, default=120.0, help="collective timeout")
    return p.parse_args(argv)


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    torch.set_num_threads(1)  # one core per rank: figures comparable across CPU nodes
    return torch.device("cpu")


def _device_index(device: torch.device, local_rank: int) -> int:
    """The device's index in the SMI tool's numbering (the visible list's entry)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    items = [v for v in visible.split(",") if v.strip()]
    if device.type == "cuda" and local_rank < len(items) and items[local_rank].strip().isdigit():
        return int(items[local_rank])
    return local_rank


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dtype(device: torch.device, precision: str) -> Tuple[torch.dtype, bool]:
    """(tensor dtype, autocast?) for the run's precision; the CPU's half type is bfloat16."""
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    if precision == "fp16":
        return half, False
    return torch.float32, precision == "amp"


def compute_probe(device: torch.device, precision: str, seconds: float) -> Dict[str, Any]:
    """GFLOP/s of a fixed matmul + 3x3 convolution step, warm-up excluded."""
    big = device.type != "cpu"
    n = 8192 if big else 512
    batch, channels, side = (64, 256, 56) if big else (4, 32, 32)
    dtype, autocast = _dtype(device, precision)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    x = torch.randn(batch, channels, side, side, generator=gen).to(device, dtype)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, dtype)
    flops = 2.0 * n**3 + 2.0 * batch * channels * side * side * channels * 9
    half = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=half, enabled=autocast):
            torch.mm(a, b)
            conv(x)

    for _ in range(WARMUP):
        step()
    _sync(device)
    iterations, began = 0, time.perf_counter()
    while True:
        step()
        iterations += 1
        _sync(device)
        took = time.perf_counter() - began
        if took >= seconds and iterations >= 3:
            break
    return {"gflops": flops * iterations / took / 1e9, "seconds": took, "iterations": iterations}


def _timed_allreduce(
    nbytes: int, iters: int, device: torch.device, group: Any, ranks: int
) -> Dict[str, Any]:
    """One size: WARMUP then `iters` all-reduces; the slowest member's time counts."""
    tensor = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=device)
    for _ in range(WARMUP):
        dist.all_reduce(tensor, group=group)
    _sync(device)
    dist.barrier(group=group)
    began = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor, group=group)
    _sync(device)
    took = torch.tensor([(time.perf_counter() - began) / iters], device=device)
    dist.all_reduce(took, op=dist.ReduceOp.MAX, group=group)
    seconds = float(took.item())
    alg, bus = bus_bandwidth(tensor.numel() * 4, seconds, ranks)
    return {"bytes": tensor.numel() * 4, "seconds": seconds, "algbw_gbs": alg, "busbw_gbs": bus}


def _sweep(
    sizes: Sequence[int], iters: int, device: torch.device, group: Any, ranks: int
) -> Dict[str, Any]:
    """Every size; the figure is the largest size's busBW (small sizes measure latency)."""
    rows = [_timed_allreduce(s, iters, device, group, ranks) for s in sizes]
    return {"ranks": ranks, "sizes": rows, "busbw_gbs": rows[-1]["busbw_gbs"]}


def pair_list(nnodes: int, how: str) -> List[Tuple[int, int]]:
    """Node pairs to measure: a ring (each node in two pairs, so a slow node shows as the one
    shared by two slow pairs) or every pair."""
    if nnodes < 2:
        return []
    if how == "all" or nnodes == 2:
        return [(i, j) for i in range(nnodes) for j in range(i + 1, nnodes)]
    return [(i, (i + 1) % nnodes) for i in range(nnodes)]


def _in_turns(nnodes: int, node_rank: int, work: Callable[[], Any]) -> Any:
    """Nodes take turns (a barrier between turns); a node's own ranks work at once."""
    result = None
    for turn in range(nnodes):
        if turn == node_rank:
            result = work()
        dist.barrier()
    return result


def run(args: argparse.Namespace) -> Dict[str, Any]:
    env = os.environ
    rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    per_node = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    node_rank, nnodes = rank // per_node, world // per_node
    node = env.get("ORCHESTRATOR_NODE") or socket.gethostname()
    device = _device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    began = time.perf_counter()
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout_s))
    names: List[Any] = [None] * world
    dist.all_gather_object(names, node)
    node_names = [str(names[k * per_node]) for k in range(nnodes)]

    compute = _in_turns(
        nnodes, node_rank, lambda: compute_probe(device, args.precision, args.compute_s)
    )
    compute.update(node=node, node_rank=node_rank, local_rank=local_rank)
    compute["device"] = _device_index(device, local_rank)

    sizes = [int(float(s) * MIB) for s in args.sizes_mib.split(",") if s.strip()]
    everyone = _sweep(sizes, args.iters, device, None, world) if world > 1 else None

    intra = None
    if per_node > 1:  # every rank makes every group, in the same order (torch's rule)
        node_groups = [
            dist.new_group(list(range(k * per_node, (k + 1) * per_node))) for k in range(nnodes)
        ]
        intra = _sweep(sizes, args.iters, device, node_groups[node_rank], per_node)
        intra["node"] = node

    pair_bytes = int(args.pair_mib * MIB) if args.pair_mib > 0 else sizes[-1]
    pairs_out = []
    for a, b in pair_list(nnodes, args.pairs):
        group = dist.new_group([a * per_node, b * per_node])
        if rank in (a * per_node, b * per_node):
            row = _timed_allreduce(pair_bytes, args.iters, device, group, 2)
            row.update(a=node_names[a], b=node_names[b])
            pairs_out.append(row)
        dist.barrier()

    gathered: List[Any] = [None] * world
    dist.all_gather_object(gathered, {"compute": compute, "intra": intra, "pairs": pairs_out})
    dist.destroy_process_group()
    pairs: Dict[Tuple[str, str], Any] = {}
    for part in gathered:
        for row in part["pairs"]:
            pairs[(row["a"], row["b"])] = row  # both members hold it: once per pair
    return {
        "schema": SCHEMA,
        "backend": backend,
        "device_type": device.type,
        "precision": args.precision,
        "world_size": world,
        "nnodes": nnodes,
        "nproc_per_node": per_node,
        "nodes": node_names,
        "compute": [part["compute"] for part in gathered],
        "allreduce": everyone,
        "intra": _one_per_node([part["intra"] for part in gathered]),
        "pairs": list(pairs.values()),
        "took_s": time.perf_counter() - began,
    }


def _one_per_node(rows: List[Any]) -> List[Any]:
    seen: Dict[str, Any] = {}
    for row in rows:
        if row is not None and row["node"] not in seen:
            seen[row["node"]] = row
    return list(seen.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    doc = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, "health.json")
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
        print(f"health probe: {len(doc['compute'])} device(s) in {doc['took_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
