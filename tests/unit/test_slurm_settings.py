"""The [slurm] table in a cluster file, --backend, and Slurm's answers parsed (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.backends.slurm import commands
from orchestrator.config import load_cluster, parse_cluster
from orchestrator.errors import ConfigError
from orchestrator.slurm_settings import SlurmSettings, parse_slurm_table

REPO = Path(__file__).resolve().parents[2]


def test_example_cluster_file_parses_into_slurm_settings() -> None:
    spec = load_cluster(str(REPO / "examples" / "cluster-slurm.toml"))
    assert spec.backend == "slurm" and spec.nodes == ()
    assert isinstance(spec.slurm, SlurmSettings)
    assert spec.slurm.partition and spec.slurm.gres == "gpu"


def test_slurm_backend_needs_no_node_list_but_ssh_still_does() -> None:
    spec = parse_cluster({"cluster": {"backend": "slurm"}}, "lab.toml")
    assert spec.slurm == SlurmSettings()
    with pytest.raises(ConfigError, match="nodes is missing"):
        parse_cluster({"cluster": {"backend": "ssh"}}, "lab.toml")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"partion": "gpu"}, "slurm.partion is not a known key"),
        ({"time_limit": "two hours"}, "slurm.time_limit 'two hours' is not a Slurm time"),
        ({"gres": "gpu 8"}, "is not a GRES name"),
        ({"shared_dir": "shared"}, "slurm.shared_dir 'shared' is not absolute"),
        ({"node_dir": "scratch"}, "slurm.node_dir 'scratch' is not absolute"),
        ({"sbatch_options": ["exclusive"]}, "is not an option"),
        ({"sbatch_options": "--exclusive"}, "must be a list of strings"),
        ({"pyxis": True}, "slurm.container_image is missing while pyxis = true"),
        ({"pyxis": "yes"}, "must be true or false"),
        ({"poll_interval_s": 0}, "must be a positive number"),
    ],
)
def test_bad_slurm_table_names_the_key_and_the_fix(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_slurm_table(table, "lab.toml")
    assert message in info.value.message and info.value.remedy
    assert info.value.message.startswith("lab.toml: slurm.")


def test_time_limits_in_slurm_formats_are_accepted() -> None:
    for value in ("90", "02:00:00", "1-00:00:00", "1-12", "UNLIMITED"):
        assert parse_slurm_table({"time_limit": value}, "x").time_limit == value


def test_scontrol_one_line_record_is_parsed() -> None:
    line = (
        "JobId=42 JobName=orchestrator-r1 UserId=root(0) JobState=PENDING Reason=BeginTime "
        "Dependency=(null) ExitCode=0:0 NodeList=(null) Command=/x/job.sbatch"
    )
    fields = commands.parse_scontrol(line)
    assert fields["JobState"] == "PENDING" and fields["Reason"] == "BeginTime"
    assert fields["ExitCode"] == "0:0"


def test_final_states_include_every_way_a_job_ends() -> None:
    for state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
        assert commands.JobState("1", state).final
    for state in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
        assert not commands.JobState("1", state).final


def test_missing_slurm_commands_give_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(commands.SlurmError, match="sbatch not found") as info:
        commands.sbatch("/tmp/job.sbatch")
    assert "login node" in (info.value.remedy or "")


def test_backend_option_overrides_the_cluster_file_and_dry_run_prints_the_script(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        '[cluster]\nname = "lab"\n[slurm]\npartition = "gpu"\nshared_dir = "/shared/o"\n'
        '[[nodes]]\nname = "a"\naddress = "10.0.0.1"\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--cluster", str(cfg), "submit", "2x4"]
        + ["--backend", "slurm", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --nodes=2" in res.stdout and "#SBATCH --partition=gpu" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1].startswith("sbatch --parsable /shared/o/runs/")
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "runs").exists()


def test_unwritable_shared_dir_is_a_typed_error_naming_the_key(tmp_path: Path) -> None:
    from orchestrator.backends.slurm.script import build_slurm_plan
    from orchestrator.backends.slurm.stage import stage
    from orchestrator.plan import make_job
    from orchestrator.specs import ClusterSpec, Topology

    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = SlurmSettings(shared_dir=str(blocker / "shared"))
    cluster = ClusterSpec(name="c", vendor="cpu", nodes=(), backend="slurm", slurm=settings)
    job = make_job(cluster, Topology.parse("1x1"), (), run_id="r1")
    with pytest.raises(ConfigError, match="slurm.shared_dir"):
        stage(build_slurm_plan(job, settings, workload_hash="h"))


def test_a_detached_slurm_run_that_cannot_be_staged_records_nothing(tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    text = (repo / "examples" / "cluster-slurm.toml").read_text()
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(text.replace('"/shared/orchestrator"', f'"{blocker}/orchestrator"'))
    db = tmp_path / "r.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "--cluster",
            str(cluster),
            "--db",
            f"sqlite:///{db}",
            "submit",
            "1x1",
            "--detach",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "slurm.shared_dir is not private: cannot create" in proc.stderr
    assert "Not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_node_dir_means_no_shared_file_system() -> None:
    settings = parse_slurm_table({"node_dir": "/local/orch/"}, "c.toml")
    assert settings.fetch and settings.node_dir == "/local/orch" and settings.root == "/local/orch"
    shared = parse_slurm_table({}, "c.toml")
    assert not shared.fetch and shared.root == shared.shared_dir
