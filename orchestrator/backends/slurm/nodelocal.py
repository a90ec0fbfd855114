"""The batch script's parts for a site without a shared file system (`[slurm] node_dir`): the
run folder lives at the same path on each node's own disk; the workload travels inside the
script and every node unpacks it; the probes' output comes back through the batch shell; at
the end the batch shell marks the job (Comment) and waits until the follower has fetched
every node's run folder (`srun --overlap`, see commands.fetch_folders), then removes them.
Pure text, like script.py."""

from __future__ import annotations

import shlex
import textwrap

READY = "orchestrator-fetch-ready"  # job Comment: the run folders may be fetched now
FETCHED = "orchestrator-fetched"  # job Comment: fetched, the batch shell may end
FETCH_WAIT_S = 600  # how long the batch shell waits for a follower to fetch
ARCHIVE_MARK = "ORCHESTRATOR_WORKLOAD"


def output_lines(job_output: str) -> list[str]:
    """The batch shell's own output, into the run folder once it exists. Slurm opens --output
    before the script runs, when no folder of ours exists yet on the node; a file at a
    guessable name in /tmp instead could be a link another user planted (Slurm would write
    through it as this user), so --output is /dev/null and the shell redirects itself."""
    return [
        "# the batch shell's own output, in the run folder (not at a guessable /tmp name)",
        f'exec >>"$RUN_DIR/{job_output}" 2>&1',
    ]


# $r must be a folder of this user's alone (made 0700 if missing, not a link, not writable by
# group or others) before anything in it is trusted: a `.complete` someone else planted there
# would run their code as this user. (The node probe checks the folders above it too, later.)
PRIVATE_ROOT = (
    'umask 077; mkdir -p -- "$r" && [ ! -L "$r" ] && [ -O "$r" ] '
    '&& [ -z "$(find "$r" -maxdepth 0 -perm /022)" ] || { echo "orchestrator: slurm.node_dir '
    '$r on $(hostname) is not a folder only you can write: remove it or change node_dir" >&2; '
    "exit 1; }"
)


def private_root_lines(node_dir: str) -> list[str]:
    """The batch shell's own check of node_dir on the first node, before it writes there."""
    return [
        "# node_dir: only this user may write there (or the workload could be swapped)",
        f"r={shlex.quote(node_dir)}; " + PRIVATE_ROOT,
    ]


def unpack_lines(archive_b64: str, workload_dir: str, step: list[str], node_dir: str) -> list[str]:
    """Write the embedded workload archive, then unpack it on every node (srun's stdin goes to
    every task with --input=all) and create the run folder there."""
    body = "\n".join(textwrap.wrap(archive_b64, 76))
    # Content-addressed like the shared copy: unpacked once per node (into a temporary folder,
    # then renamed: nodes that share a disk never see a half-written source).
    unpack = (
        f'r="$2"; {PRIVATE_ROOT}; '
        'mkdir -p "$1/ranks" "$1/logs" "$1/nodes" "$1/nccl" "${0%/*}" && if [ -e "$0/.complete" ]; '
        'then cat > /dev/null; else t=$(mktemp -d "$0.XXXXXX") && base64 -d | tar -xzf - -C "$t" '
        '&& touch "$t/.complete" && { mv -T "$t" "$0" 2> /dev/null || rm -rf "$t"; }; fi'
    )
    return [
        "# no shared file system: the workload travels inside this script; every node unpacks it",
        f"cat > \"$RUN_DIR/workload.b64\" <<'{ARCHIVE_MARK}'",
        body,
        ARCHIVE_MARK,
        shlex.join([*step, "--input=all", "bash", "-c", unpack, workload_dir])
        + ' "$RUN_DIR" '
        + shlex.quote(node_dir)
        + ' < "$RUN_DIR/workload.b64"',
    ]


def finish_lines(exit_file: str) -> list[str]:
    """The EXIT trap: the exit status into the run folder, mark the job ready, wait for the
    fetch, remove the run folder on every node."""
    return [
        "# at the end, however it ends: the exit status, then wait (up to "
        f"{FETCH_WAIT_S} s) until the",
        "# follower has fetched every node's run folder, then remove them",
        "finish() {",
        "  rc=$?",
        "  set +e",
        f'  echo "$rc" > "$RUN_DIR/{exit_file}"',
        f'  scontrol update JobId="$SLURM_JOB_ID" Comment={READY}',
        f"  for _ in $(seq {FETCH_WAIT_S}); do",
        f'    scontrol -o show job "$SLURM_JOB_ID" | grep -q "Comment={FETCHED}" && break',
        "    sleep 1",
        "  done",
        '  srun --ntasks-per-node=1 rm -rf "$RUN_DIR"',
        '  exit "$rc"',
        "}",
        "trap finish EXIT",
    ]


def probe_lines(step: list[str], python: str, probe: str, args: str, check: str) -> list[str]:
    """Each node probes itself into its own nodes/probe-<i>.json (fetched with the rest) and
    checks its own result; a failed check prints "preflight failed: ..." into the batch
    output. No --kill-on-bad-exit here: every node gets to say what it lacks."""
    per_node = 'p="$1/nodes/probe-$SLURM_NODEID.json"; "$0" "$2" "$3" > "$p" && "$0" "$4" "$p"'
    base = [s for s in step if s != "--kill-on-bad-exit=1"]
    return [
        shlex.join([*base, "bash", "-c", per_node, python])
        + ' "$RUN_DIR" '
        + shlex.join([probe, args, check])
    ]
