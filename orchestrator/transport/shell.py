"""Command lines for a node's POSIX login shell, built from argv lists. Pure: no I/O.

Every user-supplied word is quoted with `shlex.quote`; argv[0] is always quoted so that it is
never taken as a reserved word, an alias or a variable assignment. Environment variables go
through `env K=V ... argv` (sshd refuses most `setenv` requests). Fixed scripts below receive
their data as positional parameters ("$1", "$@"), so the data is quoted exactly once.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

#: First line a `run` command writes to stderr: its pid (== its process group under sshd),
#: so that a command that times out can be killed. Removed from the result's stderr.
PID_MARKER = "orchestrator-pid "
#: Control lines of a spawned job on stderr: its process group first, its exit code last.
PGID_MARKER = "orchestrator-pgid "
EXIT_MARKER = "orchestrator-exit "

# A spawned job: the wrapper is a new session leader (setsid), so its pid is the process
# group id; it reports it on stderr first, and the job's exit code on stderr last. The job's
# output goes through `tee -p`, appended to the log and streamed back; -p keeps tee writing
# the log when the controller's connection (its stdout) is gone, so the job never depends on
# the controller. tee ignores TERM/INT so the job's last words still reach the log while the
# group is being terminated, and ends when the job and its children close the pipe. The job
# runs in the foreground of a pipeline (a background job would start with SIGINT ignored);
# its parent catches TERM/INT so it can still report the exit code, and caught signals are
# reset for the job itself. The exit code is also written to LOG.exit (atomically, before it
# is reported), so that a controller that lost the stream (killed, adopted by another) can
# still learn how the job ended: through a file mktemp creates (O_EXCL, a name nobody can
# guess), renamed over LOG.exit (a rename replaces a link there, never follows it).
SPAWN_SCRIPT = """\
log=$1; dir=$2; shift 2
[ -L "$log" ] && { echo "$log is a symbolic link" >&2; exit 126; }
: >>"$log" || exit 126
echo "orchestrator-pgid $$" >&2
trap : TERM INT HUP
exec 3>&2
{
  trap : TERM INT HUP
  (
    if [ -n "$dir" ]; then cd -- "$dir" || exit; fi
    exec "$@"
  ) </dev/null 2>&1
  rc=$?
  t=$(mktemp -- "$log.exit.XXXXXX") && echo "$rc" >"$t" && mv -f -- "$t" "$log.exit"
  echo "orchestrator-exit $rc" >&3
} | (trap '' TERM INT HUP; exec tee -p -a -- "$log")
"""

# Local commands run through the same tiny script, so that a missing program (127) or
# directory behaves as over SSH.
LOCAL_EXEC_SCRIPT = 'if [ -n "$1" ]; then cd -- "$1" || exit; fi; shift; exec "$@"'
# A local spawn: the same, but the parent stays to write the exit code to LOG.exit as
# SPAWN_SCRIPT does (it catches TERM/INT/HUP so that a group kill still leaves the file).
LOCAL_SPAWN_SCRIPT = """\
log=$1; dir=$2; shift 2
trap : TERM INT HUP
(
  trap - TERM INT HUP
  if [ -n "$dir" ]; then cd -- "$dir" || exit; fi
  exec "$@"
) </dev/null
rc=$?
t=$(mktemp -- "$log.exit.XXXXXX") && echo "$rc" >"$t" && mv -f -- "$t" "$log.exit"
exit "$rc"
"""
#: Where a spawned job's exit code lands on the node, next to its log.
EXIT_FILE_SUFFIX = ".exit"

# $1 signal number, $2 process group. Success if sent, or if the group is already gone.
SIGNAL_GROUP_SCRIPT = 'kill -"$1" -"$2" 2>/dev/null || ! kill -0 -"$2" 2>/dev/null'

# $1 process group, $2 grace period in steps of 0.05 s: TERM, wait, KILL, wait until gone.
# "Gone" ignores zombies: a killed process whose parent died waits for init to reap it, and
# some inits (containers, sandboxes) take a while. The /proc scan runs only when kill -0 says
# the group still has members.
KILL_GROUP_SCRIPT = """\
pg=$1; steps=$2
live() {
  kill -0 -"$pg" 2>/dev/null || return 1
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$f" || continue
    set -- ${line##*) }
    if [ "$3" = "$pg" ] && [ "$1" != Z ]; then return 0; fi
  done
  return 1
}
kill -15 -"$pg" 2>/dev/null || exit 0
i=0
while live; do
  if [ "$i" -ge "$steps" ]; then
    kill -9 -"$pg" 2>/dev/null
    j=0
    while live; do
      j=$((j + 1))
      if [ "$j" -gt 200 ]; then echo "process group $pg survived SIGKILL" >&2; exit 1; fi
      sleep 0.05
    done
    exit 0
  fi
  i=$((i + 1))
  sleep 0.05
done
"""
KILL_STEP_S = 0.05

# Kills a `run` command that timed out: its process group, or the pid alone if it has none.
KILL_PID_SCRIPT = 'kill -9 -"$1" 2>/dev/null || kill -9 "$1" 2>/dev/null; exit 0'


def join(argv: Sequence[str]) -> str:
    """argv as one shell-quoted line (for messages and remote command lines)."""
    return shlex.join(argv)


def quote_command_name(word: str) -> str:
    """argv[0], always single-quoted."""
    return "'" + word.replace("'", "'\"'\"'") + "'"


def with_env(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """argv prefixed by `env K=V ...` when env is given."""
    if not env:
        return list(argv)
    if "=" in argv[0] or argv[0].startswith("-"):
        # env(1) would take it for a variable or an option.
        raise ValueError(f"command {argv[0]!r} cannot be run with env variables; use its path")
    return ["env", *(f"{name}={value}" for name, value in env.items()), *argv]


def command_line(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
) -> str:
    """`[cd -- DIR || exit; ](exec [env K=V ...] argv); exit $?`, every word quoted.

    `exec` runs argv[0] as a program, never a shell builtin (dash's builtin echo would
    interpret backslashes); the subshell keeps the login shell waiting, so that a command
    killed by signal N still yields exit status 128 + N instead of no status at all.
    """
    words = with_env(argv, env)
    body = " ".join([quote_command_name(words[0]), *map(shlex.quote, words[1:])])
    prefix = f"cd -- {shlex.quote(cwd)} || exit; " if cwd else ""
    return f"{prefix}(exec {body}); exit $?"


def run_line(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
) -> str:
    """The remote command line of `Transport.run`: report the pid, then run the command."""
    return f'echo "{PID_MARKER}$$" >&2; {command_line(argv, env, cwd)}'


def spawn_line(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None, log_path: str
) -> str:
    """The remote command line of `Transport.spawn`: the wrapper script in a new session."""
    words = with_env(argv, env)
    # -w: setsid's parent waits for the wrapper and reaps it at once.
    wrapper = ["setsid", "-w", "sh", "-c", SPAWN_SCRIPT, "sh", log_path, cwd or "", *words]
    return "exec " + join(wrapper)


def local_spawn_argv(argv: Sequence[str], cwd: str | None, log_path: str) -> list[str]:
    """argv for a local spawned job: LOCAL_SPAWN_SCRIPT, which records the exit code."""
    return ["sh", "-c", LOCAL_SPAWN_SCRIPT, "sh", log_path, cwd or "", *argv]


def local_exec_argv(argv: Sequence[str], cwd: str | None) -> list[str]:
    """argv for a local subprocess: through `sh` for the same cwd/not-found behaviour."""
    return ["sh", "-c", LOCAL_EXEC_SCRIPT, "sh", cwd or "", *argv]


def parse_marker(line: str, marker: str) -> int | None:
    """The number on a control line (`orchestrator-pid 123`), or None for any other line."""
    if not line.startswith(marker):
        return None
    rest = line[len(marker) :].strip()
    return int(rest) if rest.isdigit() else None
