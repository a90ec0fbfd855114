"""Slurm's folders on this machine (issue 22): shared_dir and the node_dir sites' script folder
must be the user's alone before anything is staged there, and nothing at a guessable name is
written through. Real folders, owners and modes (the suite runs as root)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from orchestrator.backends.slurm import doctor
from orchestrator.backends.slurm.plan import make_slurm_plan
from orchestrator.backends.slurm.stage import stage
from orchestrator.errors import ConfigError
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.slurm_settings import SlurmSettings, parse_slurm_table
from orchestrator.specs import CaseSettings, ClusterSpec, Topology
from orchestrator.workload_source import WORKLOAD_ROOT

NOBODY = pwd.getpwnam("nobody").pw_uid
RUN_ID = "20261207-000000-abcdef"


def _plan(settings: SlurmSettings):
    cluster = ClusterSpec(
        "lab", "cpu", (), backend="slurm", case=CaseSettings(data_dir="/data"), slurm=settings
    )
    return make_slurm_plan(cluster, SubmitRequest(topology=Topology(1, 1)), run_id=RUN_ID)


def test_the_defaults_are_the_users_own_folders_under_home() -> None:
    home = os.path.expanduser("~")
    settings = parse_slurm_table({}, "c.toml")
    assert settings.shared_dir == f"{home}/.cache/orchestrator/slurm"
    assert settings.script_dir == f"{home}/.cache/orchestrator/slurm-scripts"
    assert parse_slurm_table({"shared_dir": "~/x/"}, "c.toml").shared_dir == f"{home}/x"


def test_a_group_writable_shared_dir_is_refused_in_one_line_and_nothing_staged(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o770)
    os.chmod(shared, 0o770)
    with pytest.raises(ConfigError) as err:
        stage(_plan(SlurmSettings(shared_dir=str(shared))))
    assert err.value.one_line() == (
        f"slurm.shared_dir is not private: {shared} is writable by group or others (mode 770): "
        f"chmod go-w {shared} (or change slurm.shared_dir)"
    )
    assert list(shared.iterdir()) == []


def test_a_shared_dir_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "workload").mkdir(parents=True)
    os.chown(shared, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"belongs to uid {NOBODY}, not to you"):
        stage(_plan(SlurmSettings(shared_dir=str(shared))))
    assert sorted(p.name for p in shared.iterdir()) == ["workload"]


def test_a_private_shared_dir_is_staged_and_a_changed_copy_staged_again(tmp_path: Path) -> None:
    shared = tmp_path / "a" / "shared"  # missing: made 0700 with its parent
    plan = _plan(SlurmSettings(shared_dir=str(shared)))
    stage(plan)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    script = Path(plan.script_path)
    assert script.read_text() == plan.script and stat.S_IMODE(script.stat().st_mode) == 0o600
    main = Path(plan.workload_dir) / "workload" / "faster_rcnn" / "__main__.py"
    main.write_text("print('changed')\n")  # the .complete stays; the content does not match
    stage(plan)
    assert main.read_bytes() == (WORKLOAD_ROOT / "faster_rcnn" / "__main__.py").read_bytes()


def test_node_dir_scripts_go_to_a_private_folder_never_through_a_planted_link(
    tmp_path: Path,
) -> None:
    scripts = tmp_path / "scripts"
    settings = SlurmSettings(node_dir="/local/orch", script_dir=str(scripts))
    plan = _plan(settings)
    assert plan.sbatch_argv[-1] == f"{scripts}/{RUN_ID}.sbatch" == plan.script_path
    scripts.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    Path(plan.script_path).symlink_to(victim)
    stage(plan)
    assert victim.read_text() == "keep\n"
    script = Path(plan.script_path)
    assert not script.is_symlink() and script.read_text() == plan.script
    assert [p.name for p in scripts.iterdir()] == [script.name]  # no temporary file left
    os.chmod(scripts, 0o777)
    with pytest.raises(ConfigError, match="the Slurm script folder is not private"):
        stage(plan)


def test_doctor_names_a_shared_dir_or_script_folder_others_can_write(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    name, ok, detail = doctor._shared_dir(str(open_dir))
    assert (name, ok) == ("shared_dir", False)
    assert detail.startswith(f"{open_dir} is writable by group or others (mode 777)")
    assert doctor._shared_dir(str(tmp_path / "mine"))[1] is True
    name, ok, detail = doctor._script_dir(str(open_dir))
    assert (name, ok) == ("script folder", False) and "chmod go-w" in detail
    assert doctor._script_dir(str(tmp_path / "s"))[1] is True
