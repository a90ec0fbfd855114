"""Where a hung run was stuck: every living rank's Python stack, asked for before the run is
stopped, and the failure reason that says which ranks were not in a collective and the frame
the others waited in.

Each rank registers faulthandler on SIGUSR1 (workload/faster_rcnn/stacks.py) with its own file
`<run dir>/stacks/rank-NNNNN.txt`. DUMP_STACKS_SCRIPT runs on every node before the stop: it
finds the node's rank processes (the run id, the node's GROUP_RANK and a RANK in their environment, a parent without
LOCAL_RANK: not the data loader's workers), signals those that are not stopped, waits for their
files, and prints one `rank R pid P state S` line per rank and every non-empty stack file; with
py-spy on the node it also reads each rank with `py-spy dump` (which reaches a stopped process
too). The stacks are kept in the run folder (docs/run-folder.md); `diagnose_hang` is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from orchestrator.runs.failure import Failure

STACKS_DIR = "stacks"
WAIT_TENTHS = 30  # up to 3 s for the dumps: faulthandler writes within milliseconds
# $1 run id, $2 the node's stacks folder, $3 tenths of a second to wait for the files, $4 the
# node's rank (torchrun's GROUP_RANK: where nodes share a machine, as test nodes do, each takes
# only its own ranks).
DUMP_STACKS_SCRIPT = r"""
rid=$1; dir=$2; steps=$3; group=$4
envof() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null; }
mkdir -p -- "$dir" 2>/dev/null
signalled=""
for p in $(grep -lxzsF -- "ORCHESTRATOR_RUN_ID=$rid" /proc/[0-9]*/environ 2>/dev/null |
           sed -n 's#^/proc/\([0-9][0-9]*\)/environ$#\1#p'); do
  rank=$(envof "$p" | sed -n 's/^RANK=\([0-9][0-9]*\)$/\1/p' | head -n 1)
  [ -n "$rank" ] || continue
  envof "$p" | grep -qx "GROUP_RANK=$group" || continue
  ppid=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null)
  envof "$ppid" | grep -q '^LOCAL_RANK=' && continue
  state=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] || continue
  echo "rank $rank pid $p state $state"
  file=$(printf '%s/rank-%05d.txt' "$dir" "$rank")
  if command -v py-spy >/dev/null 2>&1; then
    timeout 10 py-spy dump --pid "$p" > "${file%.txt}.py-spy.txt" 2>&1 || true
  fi
  case $state in
    T|t|Z|X) ;;
    *) kill -USR1 "$p" 2>/dev/null && signalled="$signalled $file" ;;
  esac
done
i=0
while [ "$i" -lt "$steps" ]; do
  waiting=0
  for f in $signalled; do [ -s "$f" ] || waiting=1; done
  [ "$waiting" = 0 ] && break
  sleep 0.1; i=$((i + 1))
done
sleep 0.2
for f in "$dir"/rank-*.txt; do
  [ -s "$f" ] || continue
  echo "=== ${f##*/}"
  head -c 65536 -- "$f"
  echo
done
"""

_PROCESS = re.compile(r"^rank (\d+) pid (\d+) state (\S+)$")
_FILE = re.compile(r"^=== (rank-(\d+)\.txt)$")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+) in (\S+)')
# Python frames a rank blocked in a collective sits in, innermost first, and what they mean.
COLLECTIVES = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "all_gather_object": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "broadcast": "broadcast",
    "broadcast_object_list": "broadcast",
    "barrier": "barrier",
    "monitored_barrier": "barrier",
    "_sync_buffers": "broadcast (DDP's buffers)",
    "_sync_module_states": "broadcast (DDP's buffers)",
    "_distributed_broadcast_coalesced": "broadcast (DDP's buffers)",
    "_default_broadcast_coalesced": "broadcast (DDP's buffers)",
    "_sync_module_buffers": "broadcast (DDP's buffers)",
    # DDP rebuilds its gradient buckets at the second forward: a C++ broadcast of the bucket
    # order from rank 0, so no Python frame of its own sits above _pre_forward
    "_pre_forward": "broadcast (DDP's bucket order, before forward)",
    "_engine_run_backward": "all_reduce (DDP's gradients, in backward)",
    "run_backward": "all_reduce (DDP's gradients, in backward)",
    "backward": "all_reduce (DDP's gradients, in backward)",
}
_STOPPED = {"T": "stopped", "t": "stopped (traced)", "Z": "dead", "X": "dead"}


@dataclass(frozen=True)
class RankProcess:
    rank: int
    node: str
    pid: int
    state: str  # /proc/PID/stat's: R, S, D, T (stopped), ...


@dataclass(frozen=True)
class NodeStacks:
    node: str
    processes: tuple[RankProcess, ...]
    stacks: dict[int, str]  # rank -> its faulthandler dump


def parse_dump(node: str, text: str) -> NodeStacks:
    """DUMP_STACKS_SCRIPT's output on one node."""
    processes, stacks = [], {}
    current: int | None = None
    lines: list[str] = []
    for line in text.splitlines():
        found = _PROCESS.match(line)
        header = _FILE.match(line)
        if header:
            if current is not None:
                stacks[current] = "\n".join(lines).strip() + "\n"
            current, lines = int(header.group(2)), []
        elif current is not None:
            lines.append(line)
        elif found:
            rank, pid, state = int(found.group(1)), int(found.group(2)), found.group(3)
            processes.append(RankProcess(rank, node, pid, state))
    if current is not None:
        stacks[current] = "\n".join(lines).strip() + "\n"
    return NodeStacks(node, tuple(processes), stacks)


@dataclass(frozen=True)
class Waited:
    """The collective a rank's stack shows it in, and the workload's frame that called it."""

    collective: str
    caller: str  # "train.py:118 in train_epoch", or "" when no workload frame is on the stack


def waited_in(stack: str) -> Waited | None:
    """The innermost recognised collective frame of the thread that runs the workload (the
    thread whose stack holds a faster_rcnn frame), None when none is on it."""
    for block in re.split(r"\n\s*\n", stack):
        frames = [m for m in map(_FRAME.match, block.splitlines()) if m]
        if not any("faster_rcnn" in m.group(1) for m in frames):
            continue
        collective = next(
            (COLLECTIVES[m.group(3)] for m in frames if m.group(3) in COLLECTIVES), None
        )
        if collective is None:
            continue
        # the workload's collective helper (comm.py) is a wrapper: name the line that called it
        own = next((m for m in frames if _is_workload_caller(m.group(1))), None)
        caller = (
            f"{own.group(1).rsplit('/', 1)[-1]}:{own.group(2)} in {own.group(3)}" if own else ""
        )
        return Waited(collective, caller)
    return None


def _is_workload_caller(path: str) -> bool:
    return "faster_rcnn" in path and not path.endswith("/comm.py")


def diagnose_hang(
    failure: Failure,
    nodes: Sequence[NodeStacks],
    world_size: int,
    silent: Mapping[int, str] | None = None,
) -> Failure:
    """The failure with where the ranks were: `... ; stacks: rank 1 on node b was stopped
    (state T), no stack; rank 0 on node a waited in all_reduce (DDP's gradients) at train.py:
    118 in train_epoch (stacks/)`. `silent`: rank -> its node, for nodes that did not answer.
    Unchanged when no rank process was found."""
    processes = {p.rank: p for n in nodes for p in n.processes}
    if not processes:
        return failure
    stacks = {rank: text for n in nodes for rank, text in n.stacks.items()}
    missing, waiting, elsewhere = [], [], []
    for rank in range(world_size):
        proc = processes.get(rank)
        if proc is None and rank in (silent or {}):
            missing.append(f"rank {rank}: node {(silent or {})[rank]} did not answer")
            continue
        if proc is None:
            missing.append(f"rank {rank} had no process left")
            continue
        where = waited_in(stacks[rank]) if rank in stacks else None
        if rank not in stacks:
            why = _STOPPED.get(proc.state, f"state {proc.state}")
            missing.append(f"rank {rank} on node {proc.node} was {why} and wrote no stack")
        elif where is None:
            elsewhere.append(f"rank {rank} on node {proc.node}")
        else:
            at = f" at {where.caller}" if where.caller else ""
            waiting.append((where.collective + at, f"{rank}", proc.node))
    said = list(missing)
    for place in sorted({w[0] for w in waiting}):
        who = [w for w in waiting if w[0] == place]
        ranks = ", ".join(f"{r} (node {n})" for _, r, n in who)
        said.append(f"rank{'s' if len(who) > 1 else ''} {ranks} waited in {place}")
    if elsewhere:
        said.append(", ".join(elsewhere) + " not in a collective")
    reason = f"{failure.reason}; stacks ({STACKS_DIR}/): " + "; ".join(said)
    return replace(failure, reason=reason[:1000])


def stack_files(nodes: Sequence[NodeStacks]) -> Mapping[str, str]:
    """File name in the run folder's stacks/ -> text, for every rank that wrote one."""
    return {f"rank-{rank:05d}.txt": text for n in nodes for rank, text in sorted(n.stacks.items())}
