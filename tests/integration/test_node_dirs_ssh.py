"""Issue 22's planted workload, for real: an unprivileged user (`nobody`) on a loopback sshd node
plants `<workdir>/workload/<hash>/` with a `.complete` and its own `__main__.py`, as the finding
did; the next `submit` (as root over SSH) must not run it. Also: a private workdir is made 0700
so that it cannot be planted into, a changed staged copy is staged again (content hash, not the
`.complete` alone), and an SFTP write never goes through a link placed at its temporary name."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.backends.ssh.launch import stage
from orchestrator.errors import NodeError
from orchestrator.plan import build_plan, make_job
from orchestrator.specs import ClusterSpec, Topology
from orchestrator.transport import NodeSession, connect, ssh
from orchestrator.workload_source import WORKLOAD_ROOT, workload_hash
from tests.support.cluster_fixtures import run_cli, set_args, write_cluster_file

pytestmark = [pytest.mark.sshd, pytest.mark.torch]

NOBODY = pwd.getpwnam("nobody")
# What the planted module does when it runs: leave a marker where only root may write.
PLANTED = "open({marker!r}, 'w').write('ran as uid %d' % __import__('os').getuid())\n"


@pytest.fixture
def sticky_tmp() -> Iterator[Path]:
    """A world-writable sticky folder like /tmp that `nobody` can reach (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="orch-sticky-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script, "sh", *args],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )


# $1 the workload folder a dry run names, $2 the planted module's source: the finding's plant.
PLANT = (
    'mkdir -p "$1/workload/faster_rcnn" && printf %s "$2" > "$1/workload/faster_rcnn/__main__.py"'
    ' && touch "$1/.complete" && chmod -R a+rwX "$1"'
)


def _workload_dir(cfg: Path, cwd: Path) -> str:
    """Where submit stages the workload: `--dry-run` prints it (the attacker's way too)."""
    proc = run_cli(["--cluster", str(cfg), "submit", "1x1", "--dry-run"], cwd)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"stage:\s+workload source -> (\S+)", proc.stdout)
    assert found, proc.stdout
    return found.group(1)


def test_a_workload_planted_by_another_user_never_runs(sshd_nodes, tiny_coco, tmp_path, sticky_tmp):
    cluster = sshd_nodes(3)
    node = cluster.nodes[0]
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        [node],
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=sticky_tmp,
    )
    workdir = sticky_tmp / node.name
    marker = tmp_path / "pwned"
    planted = as_nobody(PLANT, _workload_dir(cfg, tmp_path), PLANTED.format(marker=str(marker)))
    assert planted.returncode == 0, planted.stderr
    assert workdir.stat().st_uid == NOBODY.pw_uid

    db = tmp_path / "results.db"
    proc = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "1x1", *set_args()], tmp_path
    )

    assert not marker.exists(), "the planted workload ran"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (error,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert "preflight failed on 1 of 1 node(s), nothing was started" in error
    assert (
        f"{node.name}: workdir: {workdir} belongs to uid {NOBODY.pw_uid}, not to you (uid 0): "
        "remove it, or set the folder to one only you can write"
    ) in error
    assert not (workdir / "runs").exists(), "something was staged into the planted folder"

    doctor = run_cli(["--cluster", str(cfg), "doctor"], tmp_path)
    assert doctor.returncode != 0 and f"belongs to uid {NOBODY.pw_uid}" in doctor.stdout
    assert not marker.exists()


def test_a_workdir_made_by_preflight_cannot_be_planted_into(
    sshd_nodes, tiny_coco, tmp_path, sticky_tmp
):
    cluster = sshd_nodes(3)
    node = cluster.nodes[0]
    cfg = write_cluster_file(
        tmp_path / "cluster.toml", [node], cluster.ssh, data_dir=tiny_coco, workdir_root=sticky_tmp
    )
    workload_dir = _workload_dir(cfg, tmp_path)
    doctor = run_cli(["--cluster", str(cfg), "doctor"], tmp_path)
    assert "workdir" in doctor.stdout, doctor.stdout + doctor.stderr
    workdir = sticky_tmp / node.name
    st = workdir.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 0)

    planted = as_nobody(PLANT, workload_dir, PLANTED.format(marker=str(tmp_path / "pwned")))
    assert planted.returncode != 0 and "Permission denied" in planted.stderr
    assert not Path(workload_dir).exists()
    # Nor can they move the folder out of the way: /tmp-like folders are sticky.
    moved = as_nobody('mv -- "$1" "$1.gone"', str(workdir))
    assert moved.returncode != 0 and workdir.is_dir()


def test_a_staged_copy_that_no_longer_matches_its_hash_is_staged_again(sshd_nodes, tmp_path):
    cluster = sshd_nodes(3)
    node = replace(cluster.nodes[0], workdir=str(tmp_path / "work"))
    spec = ClusterSpec("test", "cpu", (node,), ssh=cluster.ssh)
    job = make_job(spec, Topology(1, 1), (node,), run_id="20261207-000000-abcdef")
    plan = build_plan(job, workload_hash=workload_hash())
    workload_dir = Path(plan.nodes[0].workload_dir or "")
    main = workload_dir / "workload" / "faster_rcnn" / "__main__.py"
    source = (WORKLOAD_ROOT / "faster_rcnn" / "__main__.py").read_bytes()
    with NodeSession([node], cluster.ssh) as session:
        stage(session, plan, 60)
        assert main.read_bytes() == source
        assert "  workload/faster_rcnn/__main__.py\n" in (workload_dir / ".complete").read_text()
        main.write_text("print('changed since it was staged')\n")
        stage(session, plan, 60)  # the .complete is still there; the content is not
    assert main.read_bytes() == source


def test_an_sftp_write_never_goes_through_a_link_at_its_temporary_name(
    sshd_nodes, tmp_path, monkeypatch
):
    cluster = sshd_nodes(3)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    source = tmp_path / "source"
    source.write_text("evil\n")
    planted = tmp_path / ".target.planted"
    monkeypatch.setattr(ssh, "_temp_name", lambda remote: str(planted))
    with connect(cluster.nodes[0], cluster.ssh) as transport:
        planted.symlink_to(victim)
        with pytest.raises(NodeError, match="writing .*target"):
            transport.write_text(str(tmp_path / "target"), "evil\n")
        planted.unlink(missing_ok=True)  # the failed write removes what was at its name
        planted.symlink_to(victim)
        with pytest.raises(NodeError, match="copying .*source"):
            transport.put_file(source, str(tmp_path / "target"))
    assert victim.read_text() == "keep\n"
    assert not (tmp_path / "target").exists()
