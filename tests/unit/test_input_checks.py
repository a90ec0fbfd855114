"""Mistakes caught before anything starts, the same way in `submit` and `campaign submit` (its
dry run included): keys another option owns, bounds, aliases, topology against the nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

CLUSTER = """
[cluster]
name = "two"
[[nodes]]
name = "a"
address = "127.0.0.2"
accelerators = 1
[[nodes]]
name = "b"
address = "127.0.0.3"
accelerators = 1
"""


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    return tmp_path


def _campaign(lab: Path, body: str) -> str:
    path = lab / "c.toml"
    path.write_text(body)
    return str(path)


def test_set_precision_is_refused_naming_the_option(run_cli, lab):
    result = run_cli(
        "--cluster", lab / "cluster.toml", "submit", "1x1", "--set", "precision=amp", "--dry-run"
    )
    assert result.exit_code == 2
    assert result.err == (
        "error: --set precision=amp: precision is not a hyper-parameter to --set (set it with "
        "--precision (a campaign file: precisions = [...]))\n"
    )


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (
            "target_map=2",
            "error: target_map=2.0 is above the maximum 1 (mAP is a fraction from 0 to 1, "
            "e.g. target_map=0.36)\n",
        ),
        (
            "min_size=96",
            "error: min_size=96 is larger than max_size=48 (make min_size <= max_size, e.g. "
            "--set min_size=64 --set max_size=96)\n",
        ),
    ],
)
def test_values_out_of_their_natural_range_are_refused_with_a_remedy_that_exists(
    run_cli, lab, item, line
):
    extra = ["--set", "max_size=48"] if item.startswith("min_size") else []
    result = run_cli(
        "--cluster", lab / "cluster.toml", "submit", "1x1", "--set", item, *extra, "--dry-run"
    )
    assert (result.exit_code, result.err) == (2, line)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            "epochs = 0",
            "run 1 (1x1 fp32, set 'default', cluster 'two'): epochs=0 is below the minimum 1",
        ),
        ("precision = 'amp'", "precision is not a hyper-parameter to --set"),
        ("target_map = 1.5", "target_map=1.5 is above the maximum 1"),
    ],
)
def test_campaign_dry_run_checks_every_hyper_parameter(run_cli, lab, body, fragment):
    file = _campaign(lab, f'[campaign]\ntopologies = ["1x1"]\n[campaign.set]\n{body}\n')
    result = run_cli("--cluster", lab / "cluster.toml", "campaign", "submit", file, "--dry-run")
    assert result.exit_code == 2
    assert result.err.startswith(f"error: {file}: ")
    assert fragment in result.err
    assert result.out == ""


def test_campaign_dry_run_checks_the_topology_against_the_nodes(run_cli, lab):
    file = _campaign(lab, '[campaign]\ntopologies = ["2x1", "3x1"]\n')
    result = run_cli("--cluster", lab / "cluster.toml", "campaign", "submit", file, "--dry-run")
    assert result.exit_code == 2
    assert result.err == (
        f"error: {file}: run 2 (3x1 fp32, set 'default', cluster 'two'): topology 3x1 needs 3 "
        f"nodes but cluster 'two' has 2 (add nodes to {lab / 'cluster.toml'} or ask for fewer)\n"
    )


def test_a_campaign_file_accepts_the_bs_alias_as_submit_does(run_cli, lab):
    file = _campaign(lab, '[campaign]\ntopologies = ["1x1"]\n[sets.small]\nbs = 1\n')
    result = run_cli("--cluster", lab / "cluster.toml", "campaign", "submit", file, "--dry-run")
    assert result.exit_code == 0, result.err
    assert result.out.splitlines()[-1].split()[-1] == "batch_size=1"


def test_without_a_cluster_file_a_multi_node_topology_says_how_to_describe_nodes(run_cli):
    result = run_cli("submit", "2x1", "--dry-run")
    assert result.exit_code == 2
    assert result.err == (
        "error: topology 2x1 needs 2 nodes but cluster 'local' has 1 (describe the nodes in a "
        "cluster file (docs/cluster-file.md) and pass --cluster FILE, or ask for fewer)\n"
    )


def test_cpu_node_check_counts_cores_and_processes_in_the_singular_when_one() -> None:
    from orchestrator.nodeside.node_probe import cpu_detail

    assert cpu_detail(1, 1) == "no accelerator; 1 CPU core for 1 process"
    assert cpu_detail(16, 2) == "no accelerator; 16 CPU cores for 2 processes"


def test_a_dry_run_says_its_run_id_is_a_placeholder_and_stores_nothing(run_cli, lab):
    result = run_cli("--cluster", lab / "cluster.toml", "submit", "1x1", "--dry-run")
    assert result.exit_code == 0, result.err
    run_id = result.out.split()[1].rstrip(":")  # "run 20261207-...: faster_rcnn ..."
    assert result.err == (
        f"dry run: nothing was started or stored; run id {run_id} is a placeholder "
        "(each submit picks its own)\n"
    )
    assert not (Path.cwd() / "orchestrator.db").exists()


def test_detached_runs_on_ssh_are_counted_as_queued_and_the_hint_names_the_worker(run_cli, lab):
    db = f"sqlite:///{lab / 'q.db'}"
    camp = _campaign(lab, '[campaign]\nname = "n"\ntopologies = ["1x1"]\nrepeats = 2\n')
    cfg = lab / "cluster.toml"
    queued = run_cli("--cluster", cfg, "--db", db, "campaign", "submit", camp)
    assert queued.exit_code == 0, queued.err
    first = queued.out.splitlines()[0]
    assert first.endswith(": 2 run(s) queued"), first
    hint = f"run `orchestrator --cluster {cfg} --db {db} worker` where the nodes are reachable"
    assert hint in queued.err
    detached = run_cli("--cluster", cfg, "--db", db, "submit", "1x1", "--detach")
    assert detached.exit_code == 0, detached.err
    assert hint in detached.err
