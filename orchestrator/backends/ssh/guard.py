"""The node side of a run's follower: a guard beside torchrun on every node, the heartbeat the
follower feeds it, and a probe of how the run stands on a node (for an adopter).

Whoever follows a run (the foreground `submit`, a worker, `orchestrator attach`) touches
RUN_DIR/heartbeat on every node every few seconds. The guard, started on each node before the
workload, ends the run there by itself when the heartbeat is older than the grace: no follower,
no adopter, so nothing must stay (processes, containers, samplers). It also stops the node's
sampler as soon as the node's workload has ended, whoever follows. It carries the run's id in
its environment, so every stop of the run (`kill_run_processes`) ends it too.
"""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from orchestrator.transport.shell import EXIT_FILE_SUFFIX, join, with_env

if TYPE_CHECKING:
    from orchestrator.plan import NodePlan, Plan
    from orchestrator.transport import NodeSession, Transport

HEARTBEAT_FILE = "heartbeat"
GUARD_LOG = "guard.log"
POLL_S = 2  # how often the guard looks (the grace is counted in whole seconds)

# The run's processes on this node: they carry the run id and the node's name (nodes that
# share a machine, as test nodes do, must not stop each other's processes). grep -F: an id or
# a name is matched as it is written, never as a pattern (`a.c` must not match `abc`). A shell
# whose own environment carries the run id (the guard) sets own_session: the subshells it
# forks show that environment too, and they are in its session, which no run process is.
# `keep`: pids never listed (the end of a node's run leaves out the shells waiting for it).
_MINE = """\
session_of() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f4; }
mine() {
  skip=""; [ -n "${own_session:-}" ] && skip=$(session_of "$$")
  for f in $(grep -lxzsF -- "ORCHESTRATOR_RUN_ID=$rid" /proc/[0-9]*/environ 2>/dev/null); do
    grep -qxzsF -- "ORCHESTRATOR_NODE=$node" "$f" || continue
    p=${f#/proc/}; p=${p%/environ}
    [ "$p" = "$$" ] && continue
    s=$(session_of "$p"); [ -n "$s" ] || continue  # gone meanwhile
    [ -n "$skip" ] && [ "$s" = "$skip" ] && continue
    case " ${keep:-} " in *" $p "*) continue ;; esac
    echo "$p"
  done
}
workload() {  # the workload's processes, not the guard or the sampler beside them
  for p in $(mine); do grep -qzs '^ORCHESTRATOR_ROLE=' "/proc/$p/environ" || echo "$p"; done
}
"""

# TERM the run's other processes on this node, KILL what is left after 5 s (after _MINE).
_STOP_MINE = """\
stop_mine() {
  pids=$(mine); [ -z "$pids" ] && return 0
  kill -TERM $pids 2>/dev/null
  i=0
  while [ "$i" -lt 250 ]; do
    sleep 0.02; pids=$(mine); [ -z "$pids" ] && return 0; i=$((i + 1))
  done
  kill -KILL $pids 2>/dev/null
}
"""

# $1 run dir, $2 grace in seconds, $3 the workload's exit file, then the docker command prefix
# (`docker [-H HOST]`) or nothing. The run id and node name come from the environment; they
# are unset at once so that the guard's own children (sleep, grep) never look like the run's.
GUARD_SCRIPT = (
    """\
dir=$1; grace=$2; done_file=$3; shift 3
rid=$ORCHESTRATOR_RUN_ID; node=$ORCHESTRATOR_NODE; own_session=1
unset ORCHESTRATOR_RUN_ID ORCHESTRATOR_NODE ORCHESTRATOR_ROLE
hb="$dir/heartbeat"
[ -e "$hb" ] || touch "$hb"
"""
    + _MINE
    + _STOP_MINE
    + """\
while :; do
  sleep 2
  [ -d "$dir" ] || exit 0  # collected: the follower has stopped everything already
  if [ -e "$done_file" ]; then
    stop_mine
    exit 0
  fi
  seen=$(stat -c %Y -- "$hb" 2>/dev/null || echo 0)
  now=$(date +%s)
  if [ $((now - seen)) -ge "$grace" ]; then
    echo "$now $seen" >"$dir/abandoned"
    echo "no follower since $seen (grace ${grace}s): stopping run $rid" >&2
    stop_mine
    if [ "$#" -gt 0 ]; then
      ids=$("$@" ps -aq --filter "label=orchestrator.run_id=$rid")
      [ -n "$ids" ] && "$@" rm -f -v $ids >/dev/null
    fi
    exit 0
  fi
done
"""
)

# $1 run dir, $2 the workload's exit file, $3 run id, $4 node, $5 log, $6 log offset (-1: none).
# Touches the heartbeat (the caller follows the run), then prints one status line, then the
# log's bytes from the offset up to the size it reported. Status: "exit CODE" | "alive" |
# "gone", the log's size, and "abandoned NOW SEEN" when the guard ended the run.
STATE_SCRIPT = (
    """\
dir=$1; exitf=$2; rid=$3; node=$4; log=$5; off=$6
"""
    + _MINE
    + """\
[ -d "$dir" ] && touch "$dir/heartbeat"
if [ -f "$exitf" ]; then code=$(cat "$exitf"); state="exit ${code:--1}"
elif [ -n "$(workload)" ]; then state=alive
else state=gone; fi
size=0; [ -f "$log" ] && size=$(wc -c <"$log")
if [ -f "$dir/abandoned" ]; then state="$state $size abandoned $(cat "$dir/abandoned")"
else state="$state $size"; fi
echo "$state"
if [ "$off" -ge 0 ] && [ "$size" -gt "$off" ]; then
  tail -c +"$((off + 1))" -- "$log" | head -c "$((size - off))"
fi
"""
)


def run_env(run_id: str, node: str, role: str) -> dict[str, str]:
    """What marks a process as the run's on that node (plan.node_env sets the first two for
    the workload); `role` tells the processes beside the workload (guard, monitor) apart."""
    return {"ORCHESTRATOR_RUN_ID": run_id, "ORCHESTRATOR_NODE": node, "ORCHESTRATOR_ROLE": role}


def exit_file(node_plan: NodePlan) -> str:
    return node_plan.log_path + EXIT_FILE_SUFFIX


def heartbeat_path(node_plan: NodePlan) -> str:
    return f"{node_plan.run_dir}/{HEARTBEAT_FILE}"


def guard_grace_s(grace_s: float, lease_ttl_s: float) -> int:
    """The node side waits at least twice the follower's lease: an adopter needs that long to
    see the lease expire and take the run over."""
    return int(max(grace_s, 2 * lease_ttl_s, 2 * POLL_S))


def heartbeat_every_s(grace_s: float) -> float:
    return max(0.5, min(5.0, grace_s / 4))


def guard_argv(plan: Plan, node_plan: NodePlan, grace_s: int) -> list[str]:
    docker: list[str] = []
    if plan.runtime == "docker":
        from orchestrator.images.containers import docker_argv

        docker = docker_argv(node_plan.node.docker_host)
    return ["sh", "-c", GUARD_SCRIPT, "guard", node_plan.run_dir, str(grace_s)] + [
        exit_file(node_plan),
        *docker,
    ]


# $1 run id, $2 node, $3 the workload's exit code. Run with the run's marks removed from its
# environment (env -u), so that nothing it forks looks like the run's. Its ancestors are left
# alone: on a `local` node the spawn's own waiting shell carries the run's marks.
_END_OF_NODE = (
    """\
rid=$1; node=$2; rc=$3
keep=""; p=$$
while [ "${p:-1}" -gt 1 ]; do
  p=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null); keep="$keep ${p:-}"
done
"""
    + _MINE
    + _STOP_MINE
    + """\
stop_mine
exit "$rc"
"""
)
# The node's start command. $1 the guard's command line (words quoted by shell.join), $2 its
# log, $3 the workload's exit file, then the workload's argv. The guard is forked first
# (setsid -f: a session of its own, so a stop of the workload's group leaves it to the run-id
# stop), then the workload runs: no moment runs unguarded, and the start costs one command on
# the node instead of two. When the workload ends, its exit code goes to the exit file at once
# (an adopter reading the node meanwhile sees the code, never a node whose workload is gone),
# then the node's other processes of the run (guard, sampler, anything the workload left) are
# stopped before the code is reported: a succeeded run needs no stop command. `exec` in the
# guard's shell: no shell with the run's id and no role stays behind.
GUARDED_SCRIPT = f"""\
[ -L "$2" ] && {{ echo "$2 is a symbolic link" >&2; exit 126; }}
setsid -f sh -c "exec $1" >>"$2" 2>&1 </dev/null ||
  {{ echo "the node guard did not start (setsid -f needs util-linux 2.31+)" >&2; exit 126; }}
exitf=$3
shift 3
"$@"
rc=$?
t=$(mktemp -- "$exitf.XXXXXX") && echo "$rc" >"$t" && mv -f -- "$t" "$exitf"
exec env -u ORCHESTRATOR_RUN_ID -u ORCHESTRATOR_NODE -u ORCHESTRATOR_ROLE \\
  sh -c {shlex.quote(_END_OF_NODE)} sh "$ORCHESTRATOR_RUN_ID" "$ORCHESTRATOR_NODE" "$rc"
"""


def guarded_argv(plan: Plan, node_plan: NodePlan, grace_s: int) -> list[str]:
    """The node's workload command, with the node's guard started just before it."""
    guard = with_env(
        guard_argv(plan, node_plan, grace_s),
        run_env(plan.job.run_id, node_plan.node.name, "guard"),
    )
    log = f"{node_plan.run_dir}/{GUARD_LOG}"
    return [
        "sh", "-c", GUARDED_SCRIPT, "guarded", join(guard), log, exit_file(node_plan),
        *node_plan.argv,
    ]  # fmt: skip


def with_guards(plan: Plan, grace_s: int) -> Plan:
    """The plan whose node commands start their guards first (for the Watch that starts them)."""
    nodes = tuple(replace(np_, argv=tuple(guarded_argv(plan, np_, grace_s))) for np_ in plan.nodes)
    return replace(plan, nodes=nodes)


class Heartbeat:
    """Touches every node's heartbeat file every `every_s` while the run is followed. A node
    that does not answer is the watch's business; the guard's grace covers a few misses."""

    def __init__(self, session: NodeSession, plan: Plan, every_s: float) -> None:
        self.session, self.every_s = session, every_s
        self.paths = {np_.node.name: heartbeat_path(np_) for np_ in plan.nodes}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.done.wait(self.every_s):

            def one(t: Transport) -> None:
                t.run(["touch", "-c", "--", self.paths[t.node.name]], timeout=30, check=False)

            self.session.fan_out_results(one, timeout=30, what="heartbeat")


@dataclass(frozen=True)
class NodeState:
    """How the run stands on one node, as `STATE_SCRIPT` saw it."""

    exit_code: int | None  # the workload's exit code once it ended
    alive: bool  # some process of the run still runs there
    abandoned_at: int | None  # epoch seconds when the guard ended the run, if it did
    log_size: int  # the log's size when it was read: the next offset
    log: str  # the log's text from the offset asked for

    @property
    def ended(self) -> bool:
        return self.exit_code is not None or not self.alive


def parse_state(output: str) -> NodeState:
    head, _, log = output.partition("\n")
    words = head.split()
    code = None
    if words[:1] == ["exit"]:
        code = int(words[1]) if words[1:2] and _is_int(words[1]) else -1
        words = words[2:]
    else:
        words = words[1:]
    size = int(words[0]) if words[:1] and _is_int(words[0]) else 0
    abandoned = None
    if "abandoned" in words:
        after = words[words.index("abandoned") + 1 :]
        abandoned = int(after[0]) if after and _is_int(after[0]) else 0
    alive = head.startswith("alive")
    return NodeState(code, alive, abandoned, size, log)


def _is_int(word: str) -> bool:
    return word.lstrip("-").isdigit()


def node_state(transport: Transport, node_plan: NodePlan, run_id: str, offset: int) -> NodeState:
    """One round trip: feed the heartbeat, read the run's state and the log from `offset`."""
    argv = ["sh", "-c", STATE_SCRIPT, "state", node_plan.run_dir, exit_file(node_plan)]
    argv += [run_id, node_plan.node.name, node_plan.log_path, str(offset)]
    return parse_state(transport.run(argv, timeout=60).stdout)
