"""Collecting a run folder writes only inside the local run folder and copies only regular
files: a node whose SFTP server lies about its listing, a link planted in a run folder, a
Slurm allocation with a strange host name."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from orchestrator.backends.slurm import collect
from orchestrator.backends.slurm.script import NodeSlot
from orchestrator.pathnames import copy_regular, is_safe_name
from orchestrator.transport.ssh import SshTransport
from tests.unit.test_slurm_script import SITE, _plan


class LyingSftp:
    """An SFTP server that lists what it likes: each name -> (mode, content or listing)."""

    def __init__(self, tree: dict[str, tuple[int, object]]) -> None:
        self.tree = tree

    def listdir_attr(self, path: str) -> list[paramiko.SFTPAttributes]:
        listing = self.tree[path][1]
        assert isinstance(listing, list)
        attrs = []
        for name in listing:
            attr = paramiko.SFTPAttributes()
            attr.filename, attr.st_mode = name, self.tree[f"{path}/{name}"][0]
            attrs.append(attr)
        return attrs

    def get(self, remote: str, local: str) -> None:
        Path(local).write_bytes(self.tree[remote][1])  # type: ignore[arg-type]


REG, DIR, LNK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777


def test_names_a_lying_sftp_listing_gives_are_not_joined_into_local_paths(tmp_path: Path) -> None:
    sftp = LyingSftp(
        {
            "/run": (DIR, ["rank-00000.json", "../../escaped.txt", "..", "sub", "a\nb", "x"]),
            "/run/rank-00000.json": (REG, b"{}"),
            "/run/../../escaped.txt": (REG, b"owned"),
            "/run/..": (DIR, ["escaped.txt"]),
            "/run/../escaped.txt": (REG, b"owned"),
            "/run/sub": (DIR, ["rank-00001.json"]),
            "/run/sub/rank-00001.json": (REG, b"{}"),
            "/run/a\nb": (REG, b"x"),
            "/run/x": (LNK, b""),
        }
    )
    local = tmp_path / "a" / "b" / "collected"
    skipped: list[str] = []
    transport = object.__new__(SshTransport)  # only the listing walk, no connection
    transport._get_tree(sftp, "/run", local, "", skipped)  # type: ignore[arg-type]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["a/b/collected/rank-00000.json", "a/b/collected/sub/rank-00001.json"]
    assert [s.split(" (")[0] for s in skipped] == ["../../escaped.txt", "..", "a\nb", "x"]
    assert "is not a safe file name" in skipped[0] and "not a regular file" in skipped[3]


@pytest.mark.parametrize(
    "name, safe",
    [
        ("node-01", True),
        ("rank-00000.json", True),
        ("c500.lab_a", True),
        ("..", False),
        (".", False),
        ("../x", False),
        ("a/b", False),
        ("x\n", False),
        ("", False),
        ("-rf", False),
        ("a" * 129, False),
    ],
)
def test_safe_names(name: str, safe: bool) -> None:
    assert is_safe_name(name) is safe


def test_copy_regular_copies_files_and_refuses_links_fifos_and_escapes(tmp_path: Path) -> None:
    inside, outside = tmp_path / "job", tmp_path / "home"
    inside.mkdir()
    outside.mkdir()
    (outside / "id_ed25519").write_text("KEY")
    (inside / "ok.json").write_text("{}")
    os.chmod(inside / "ok.json", 0o640)
    (inside / "link.json").symlink_to(outside / "id_ed25519")
    (inside / "ranks").symlink_to(outside)  # a linked folder: the file below it is outside
    os.mkfifo(inside / "fifo")
    out = tmp_path / "out"
    out.mkdir()
    assert copy_regular(inside / "ok.json", out / "ok.json", inside=inside)
    assert (out / "ok.json").read_text() == "{}"
    assert stat.S_IMODE((out / "ok.json").stat().st_mode) == 0o640
    assert not copy_regular(inside / "link.json", out / "l", inside=inside)
    assert not copy_regular(inside / "ranks" / "id_ed25519", out / "k", inside=inside)
    assert not copy_regular(inside / "fifo", out / "f", inside=inside)
    assert sorted(p.name for p in out.iterdir()) == ["ok.json"]


def test_slurm_collect_leaves_out_links_and_says_so(tmp_path: Path) -> None:
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    shared = tmp_path / "shared"
    for sub in ("ranks", "logs", "nodes"):
        (shared / sub).mkdir(parents=True)
    (shared / "ranks" / "rank-00000.json").write_text('{"rank": 0}')
    (shared / "ranks" / "rank-00001.json").symlink_to(secret)
    (shared / "logs" / "node-0.log").write_text("log 0\n")
    (shared / "logs" / "node-1.log").symlink_to(secret)
    (shared / "slurm-job.out").symlink_to(secret)
    plan = replace(_plan(SITE, "2x1"), nodes=(NodeSlot("n1", "n1", 0), NodeSlot("n2", "n2", 1)))
    run_dir = tmp_path / "run"
    problem = collect.collect(plan, run_dir, None, shared)  # type: ignore[arg-type]
    copied = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert copied == ["logs/n1.log", "ranks/rank-00000.json"]
    assert problem == (
        "left out (not regular files in the job's folder): "
        "ranks/rank-00001.json, slurm-job.out, logs/node-1.log"
    )


def test_an_allocation_with_a_host_name_that_is_no_safe_path_part_names_no_slot(
    tmp_path: Path,
) -> None:
    plan = _plan(SITE, "2x1")
    (tmp_path / "nodelist").write_text("n1\nn2\n")
    assert [s.name for s in collect.allocated(plan, tmp_path)] == ["n1", "n2"]
    (tmp_path / "nodelist").write_text("n1\n../../x\n")
    assert collect.allocated(plan, tmp_path) == ()


def test_the_ssh_collection_fails_naming_a_link_it_left_out(tmp_path: Path) -> None:
    from orchestrator.backends.ssh.launch import collect
    from orchestrator.plan import build_plan, make_job
    from orchestrator.specs import CaseSettings, ClusterSpec, NodeSpec, SshSettings, Topology
    from orchestrator.transport.fanout import NodeSession

    node = NodeSpec("n1", "local", workdir=str(tmp_path / "node"))
    cluster = ClusterSpec(
        name="lab", vendor="cpu", nodes=(node,), case=CaseSettings(data_dir="/d"), source="x"
    )
    job = make_job(cluster, Topology.parse("1x1"), (node,), run_id="r1")
    plan = build_plan(job, workload_hash="0" * 16)
    (np_,) = plan.nodes
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    Path(np_.output_dir).mkdir(parents=True)
    Path(np_.output_dir, "rank-00000.json").write_text("{}")
    Path(np_.output_dir, "x").symlink_to(secret)
    Path(np_.log_path).write_text("log\n")
    local = tmp_path / "run"
    with NodeSession([node], SshSettings()) as session:
        problems = collect(session, plan, local, 30.0)
    assert sorted(p.name for p in (local / "ranks").iterdir()) == ["rank-00000.json"]
    assert (local / "logs" / "n1.log").read_text() == "log\n"
    assert list(problems) == ["n1"]
    assert "left out of ranks/: x (not a regular file" in problems["n1"]
    assert not Path(np_.run_dir).exists()  # the node's run folder is removed all the same
