import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import load_cluster, parse_cluster, resolve_store_url
from orchestrator.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_cluster_file_parses():
    spec = load_cluster(str(REPO / "examples" / "cluster.toml"))
    assert spec.name == "lab-metax" and spec.vendor == "metax-c500" and spec.runtime == "docker"
    assert [n.name for n in spec.nodes] == ["c500-01", "c500-02"]
    node = spec.nodes[0]
    assert node.accelerators == 8 and node.ib_hcas == ("mlx5_0", "mlx5_1") and node.user == "root"
    assert node.key_file and not node.key_file.startswith("~")
    assert spec.case.hparams == {"workers": "4"}


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({}, "nodes is missing"),
        ({"nodes": [{"name": "a"}]}, "nodes[0].address is missing"),
        (
            {"nodes": [{"name": "a", "address": "h", "accelerators": "eight"}]},
            "nodes[0].accelerators",
        ),
        ({"nodes": [{"name": "a", "address": "h", "port": 70000}]}, "nodes[0].port"),
        (
            {"nodes": [{"name": "a", "address": "h"}], "ssh": {"acept_new_host_keys": True}},
            "ssh.acept_new_host_keys is not a known key",
        ),
        (
            {"nodes": [{"name": "a", "address": "h"}], "cluster": {"runtime": "podman"}},
            "cluster.runtime must be one of",
        ),
        ({"nodes": [{"name": "a", "address": "h"}, {"name": "a", "address": "g"}]}, "used twice"),
        ({"nodes": [{"name": "a", "address": "h"}], "bogus": 1}, "bogus is not a known key"),
    ],
)
def test_bad_cluster_files_name_file_and_key(data, fragment):
    with pytest.raises(ConfigError) as err:
        parse_cluster(data, "lab.toml")
    line = err.value.one_line()
    assert line.startswith("lab.toml: ") and fragment in line
    assert err.value.remedy


def test_store_url_precedence():
    spec = parse_cluster(
        {"nodes": [{"name": "a", "address": "h"}], "store": {"url": "sqlite:///x.db"}}, "f"
    )
    assert resolve_store_url("sqlite:///cli.db", spec) == "sqlite:///cli.db"
    assert resolve_store_url(None, spec) == "sqlite:///x.db"
    assert resolve_store_url(None, None) == f"sqlite:///{Path.cwd() / 'orchestrator.db'}"


def test_cli_bad_toml_is_one_line_error(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[cluster\nname=1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--cluster", str(bad), "cluster", "show"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "not valid TOML" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_cli_cluster_show_prints_nodes_and_hides_password(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        '[store]\nurl = "postgresql+psycopg://bench:s3cret@db/results"\n'
        'read_url = "postgresql+psycopg://reader@db/results?password=r3ader"\n'
        '[[nodes]]\nname = "n1"\naddress = "127.0.0.2"\naccelerators = 2\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--cluster", str(f), "cluster", "show"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "n1" in proc.stdout and "127.0.0.2" in proc.stdout
    assert "s3cret" not in proc.stdout and "r3ader" not in proc.stdout
    assert "postgresql+psycopg://bench:***@db/results" in proc.stdout
    assert "postgresql+psycopg://reader@db/results?password=***" in proc.stdout


def test_image_table_is_read_into_the_cluster():
    spec = parse_cluster(
        {
            "nodes": [{"name": "a", "address": "h"}],
            "image": {"wheels": ["/opt/wheels/metax"], "build_host": "a"},
        },
        "lab.toml",
    )
    assert spec.image is not None
    assert spec.image.wheels == ("/opt/wheels/metax",) and spec.image.build_host == "a"
