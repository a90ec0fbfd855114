"""Node folders only their owner can write (issue 22): the private-folder rule the node probe and
Slurm's staging apply, the probe's workdir check, temporary files nobody can plant, and the
guard's exact matching of run ids. Real files, modes, owners and processes; runs as root (the
test suite does) so that it can hand folders to `nobody`."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.backends.ssh.guard import _MINE
from orchestrator.backends.ssh.preflight import PROBE_SOURCE, probe_node
from orchestrator.nodeside.node_probe import private_dir_problem
from orchestrator.specs import NodeSpec
from orchestrator.transport import shell
from orchestrator.transport.local import LocalTransport

NOBODY = pwd.getpwnam("nobody").pw_uid
NOBODY_GID = pwd.getpwnam("nobody").pw_gid


def _dir(path: Path, mode: int, owner: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner, owner)
    os.chmod(path, mode)
    return path


def test_a_missing_workdir_is_made_with_parents_for_its_owner_alone(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "work"
    assert private_dir_problem(str(target)) is None
    for folder in (tmp_path / "a", tmp_path / "a" / "b", target):
        st = folder.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, os.geteuid())


def test_the_default_workdir_works_for_a_user_who_is_not_root(tmp_path: Path) -> None:
    # A fresh node: /var/tmp (sticky, root's) and no folder of ours yet. The probe's own code,
    # run as `nobody` by the node's system Python, as preflight runs it.
    var_tmp = _dir(Path(tempfile.mkdtemp(prefix="orch-var-tmp-", dir="/tmp")), 0o1777)
    try:
        work = var_tmp / "orchestrator-nobody"
        driver = PROBE_SOURCE.replace('if __name__ == "__main__":', "if False:")
        driver += "\nprint(private_dir_problem(sys.argv[1]))\n"
        out = subprocess.run(
            ["/usr/bin/python3", "-c", driver, str(work)],
            user=NOBODY,
            group=NOBODY_GID,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == "None\n", out.stderr
        st = work.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, NOBODY)
        # root's view of nobody's folder: not root's, so root's preflight would refuse it.
        assert (private_dir_problem(str(work)) or "").startswith(f"{work} belongs to uid {NOBODY}")
    finally:
        shutil.rmtree(var_tmp)


def test_a_group_or_other_writable_workdir_is_refused_with_the_chmod_remedy(
    tmp_path: Path,
) -> None:
    work = _dir(tmp_path / "work", 0o770)
    problem = private_dir_problem(str(work))
    assert problem == f"{work} is writable by group or others (mode 770): chmod go-w {work}"
    os.chmod(work, 0o757)
    assert "(mode 757): chmod go-w" in (private_dir_problem(str(work)) or "")
    os.chmod(work, 0o755)
    assert private_dir_problem(str(work)) is None


def test_a_workdir_someone_else_made_first_is_refused(tmp_path: Path) -> None:
    # The attack: another user creates the folder before us, private to them or not.
    work = _dir(tmp_path / "work", 0o700, owner=NOBODY)
    problem = private_dir_problem(str(work)) or ""
    assert problem.startswith(f"{work} belongs to uid {NOBODY}, not to you (uid 0): remove it")
    assert "\n" not in problem


def test_a_folder_above_that_lets_others_rename_entries_is_refused(tmp_path: Path) -> None:
    shared = _dir(tmp_path / "shared", 0o777)
    work = _dir(shared / "work", 0o700)
    problem = private_dir_problem(str(work)) or ""
    assert problem.startswith(f"{shared} (above {work}) lets others rename what is in it")
    assert f"chmod go-w {shared}" in problem
    # Sticky and owned by root (as /tmp and /var/tmp are): others cannot touch our entry.
    os.chmod(shared, 0o1777)
    assert private_dir_problem(str(work)) is None
    # Sticky but owned by someone else: they may still rename what is in it.
    os.chown(shared, NOBODY, NOBODY)
    assert (private_dir_problem(str(work)) or "").startswith(f"{shared} (above {work})")


def test_a_symbolic_link_of_another_user_on_the_way_is_refused(tmp_path: Path) -> None:
    real = _dir(tmp_path / "real", 0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert private_dir_problem(str(link)) is None  # our own link to our own folder
    os.lchown(link, NOBODY, NOBODY)  # theirs: they could point it elsewhere at any time
    problem = private_dir_problem(str(link / "work")) or ""
    assert problem.startswith(f"{link} is a symbolic link owned by uid {NOBODY}: remove it")
    assert not (real / "work").exists() or (real / "work").stat().st_uid == 0


def test_the_probe_fails_a_foreign_workdir_and_skips_the_disk_check(tmp_path: Path) -> None:
    work = _dir(tmp_path / "work", 0o777, owner=NOBODY)
    args = {"workdir": str(work), "nproc": 1, "need_torch": False, "smi": None}
    report = probe_node(LocalTransport(NodeSpec("n1", "local")), sys.executable, args, 60)
    assert report.failures() == [
        f"workdir: {work} belongs to uid {NOBODY}, not to you (uid 0): remove it, or set the "
        "folder to one only you can write (e.g. under your home)"
    ]
    assert "disk" not in [c["name"] for c in report.checks]
    ok = probe_node(
        LocalTransport(NodeSpec("n1", "local")),
        sys.executable,
        {**args, "workdir": str(tmp_path / "mine")},
        60,
    )
    assert ok.ok and {"workdir", "disk"} <= {c["name"] for c in ok.checks}


def _spawn(log: Path, script: str) -> subprocess.CompletedProcess[str]:
    line = shell.spawn_line(["sh", "-c", script], None, str(log.parent), str(log))
    return subprocess.run(
        ["sh", "-c", line], capture_output=True, text=True, timeout=20, start_new_session=True
    )


def test_the_exit_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    log = tmp_path / "node.log"
    # The name the exit code used to pass through, planted as a link to the victim.
    (tmp_path / "node.log.exit.tmp").symlink_to(victim)
    result = _spawn(log, "exit 7")
    assert result.stderr.splitlines()[-1] == "orchestrator-exit 7"
    assert victim.read_text() == "keep\n"
    exit_file = tmp_path / "node.log.exit"
    assert exit_file.read_text() == "7\n" and not exit_file.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "node.log",
        "node.log.exit",
        "node.log.exit.tmp",
        "victim",
    ]  # no temporary file left behind


def test_a_log_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    log = tmp_path / "node.log"
    log.symlink_to(victim)
    result = _spawn(log, "echo written")
    assert result.returncode == 126 and "is a symbolic link" in result.stderr
    assert victim.read_text() == "keep\n"


def _sleeper(run_id: str, node: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ORCHESTRATOR_RUN_ID": run_id, "ORCHESTRATOR_NODE": node}
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


def _mine(run_id: str, node: str) -> list[int]:
    script = f"{_MINE}rid=$1; node=$2; mine"
    out = subprocess.run(
        ["sh", "-c", script, "sh", run_id, node], capture_output=True, text=True, timeout=20
    ).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize(("run_id", "node"), [("a.c", "n1"), ("abc", "n."), ("a.*", ".*")])
def test_the_guard_matches_run_ids_and_node_names_exactly(run_id: str, node: str) -> None:
    proc = _sleeper("abc", "n1")
    try:
        time.sleep(0.1)
        assert proc.pid not in _mine(run_id, node), "a pattern matched another run's process"
        assert proc.pid in _mine("abc", "n1")
    finally:
        proc.kill()
        proc.wait()


def test_stopping_run_a_dot_c_leaves_run_abc_running() -> None:
    from orchestrator.backends.ssh.launch import kill_run_processes

    proc = _sleeper("abc", "n1")
    here = LocalTransport(NodeSpec("n1", "local"))
    try:
        time.sleep(0.1)
        kill_run_processes(here, "a.c", grace_s=0.5)
        assert proc.poll() is None, "stopping run a.c killed run abc"
        kill_run_processes(here, "abc", grace_s=0.5)
        assert proc.wait(timeout=10) is not None
    finally:
        proc.kill()
        proc.wait()
