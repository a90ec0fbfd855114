"""Cluster files (orchestrator/config.py): every value's default, node defaults and [ssh]
inheritance, and each mistake's exact one-line error (file, key, problem, remedy)."""

from __future__ import annotations

import getpass
import os
from typing import Any

import pytest

from orchestrator.config import load_cluster, parse_cluster
from orchestrator.errors import ConfigError
from tests.support.ascii_locale import ascii_locale

NODE = {"name": "a", "address": "h"}


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(data, "lab.toml")
    return caught.value.one_line()


def _with(**tables: Any) -> dict[str, Any]:
    return {"nodes": [NODE], **tables}


def test_defaults_of_a_minimal_cluster_file() -> None:
    spec = parse_cluster({"nodes": [NODE]}, "dir/lab.toml")
    assert (spec.name, spec.vendor, spec.runtime, spec.backend, spec.master_port) == (
        "lab",
        "cpu",
        "host",
        "ssh",
        29500,
    )
    assert (spec.store_url, spec.image, spec.slurm, spec.source) == (
        None,
        None,
        None,
        "dir/lab.toml",
    )
    ssh = spec.ssh
    assert (ssh.known_hosts, ssh.accept_new_host_keys, ssh.jump_host) == ((), False, None)
    assert (ssh.connect_timeout_s, ssh.command_timeout_s, ssh.keepalive_s) == (10.0, 120.0, 15)
    case = spec.case
    assert (case.data_dir, case.backbone_weights, case.config_name, case.hparams) == (
        "./data/coco-synth",
        "none",
        None,
        {},
    )
    (node,) = spec.nodes
    assert (node.name, node.address, node.port, node.user, node.key_file) == (
        "a",
        "h",
        22,
        None,
        None,
    )
    assert (node.accelerators, node.ib_hcas, node.socket_ifname) == (1, (), None)
    # The login user's own folder, never one shared name every user of the node could plant.
    workdir = f"/var/tmp/orchestrator-{getpass.getuser()}"
    assert (node.python, node.workdir, node.docker_host) == ("python3", workdir, None)


def test_default_workdir_is_the_login_users_own() -> None:
    spec = parse_cluster(
        {
            "cluster": {"name": "lab", "vendor": "cpu"},
            "ssh": {"user": "alice"},
            "nodes": [{"name": "a", "address": "h"}, {"name": "b", "address": "h", "user": "bob"}],
        },
        "lab.toml",
    )
    assert [n.workdir for n in spec.nodes] == [
        "/var/tmp/orchestrator-alice",
        "/var/tmp/orchestrator-bob",
    ]


def test_every_setting_is_read_and_trimmed() -> None:
    spec = parse_cluster(
        {
            "cluster": {
                "name": " lab-x ",
                "vendor": "nvidia",
                "runtime": "docker",
                "master_port": 1024,
            },
            "store": {"url": "sqlite:///r.db"},
            "ssh": {
                "user": "bench",
                "port": 2222,
                "key_file": "~/.ssh/k",
                "known_hosts": "~/kh",
                "accept_new_host_keys": True,
                "jump_host": "gw",
                "connect_timeout_s": 3,
                "command_timeout_s": 7.5,
                "keepalive_s": 0,
            },
            "case": {
                "data_dir": "/coco",
                "backbone_weights": "/w.pth",
                "config": "nvidia",
                "hparams": {"bs": 16, "lr": 0.1},
            },
            "node_defaults": {"accelerators": 8, "ib_hcas": ["mlx5_0"], "workdir": "/raid"},
            "nodes": [
                {**NODE, "socket_ifname": "ib0", "python": "/opt/py", "docker_host": "unix:///d"},
                {"name": "b", "address": "g", "port": 22, "user": "root", "accelerators": 4},
            ],
        },
        "lab.toml",
    )
    assert (spec.name, spec.vendor, spec.runtime, spec.master_port) == (
        "lab-x",
        "nvidia",
        "docker",
        1024,
    )
    assert spec.store_url == "sqlite:///r.db"
    home = os.path.expanduser("~")
    assert spec.ssh.known_hosts == (f"{home}/kh",) and spec.ssh.accept_new_host_keys is True
    assert (spec.ssh.jump_host, spec.ssh.connect_timeout_s, spec.ssh.command_timeout_s) == (
        "gw",
        3.0,
        7.5,
    )
    assert spec.ssh.keepalive_s == 0
    assert (spec.case.data_dir, spec.case.backbone_weights, spec.case.config_name) == (
        "/coco",
        "/w.pth",
        "nvidia",
    )
    assert spec.case.hparams == {"bs": "16", "lr": "0.1"}
    a, b = spec.nodes
    assert (a.port, a.user, a.key_file, a.accelerators, a.ib_hcas) == (
        2222,
        "bench",
        f"{home}/.ssh/k",
        8,
        ("mlx5_0",),
    )
    assert (a.socket_ifname, a.python, a.workdir, a.docker_host) == (
        "ib0",
        "/opt/py",
        "/raid",
        "unix:///d",
    )
    assert (b.port, b.user, b.accelerators, b.workdir) == (22, "root", 4, "/raid")


def test_a_slurm_cluster_needs_no_node_list() -> None:
    spec = parse_cluster({"cluster": {"backend": "slurm"}}, "s.toml")
    assert spec.backend == "slurm" and spec.nodes == () and spec.slurm is not None


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            {"nodes": []},
            "lab.toml: nodes is missing or empty (add at least one [[nodes]] table with name and address)",
        ),
        (
            {"nodes": "a"},
            "lab.toml: nodes is missing or empty (add at least one [[nodes]] table with name and address)",
        ),
        ({"nodes": ["a"]}, "lab.toml: nodes[0] must be a table (write each node as [[nodes]])"),
        ({"nodes": [{"address": "h"}]}, 'lab.toml: nodes[0].name is missing (add name = "...")'),
        (
            {"nodes": [{**NODE, "name": " "}]},
            "lab.toml: nodes[0].name must be a non-empty string, got ' ' (e.g. name = \"...\")",
        ),
        (  # it names files and folders of the run folder
            {"nodes": [{**NODE, "name": "../x"}]},
            "lab.toml: nodes[0].name '../x' is not a safe name (1-128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit) (e.g. name = \"node-01\")",
        ),
        (
            {"nodes": [{**NODE, "user": 3}]},
            'lab.toml: nodes[0].user must be a non-empty string, got 3 (e.g. user = "...")',
        ),
        (
            {"nodes": [{**NODE, "accelerators": 0}]},
            "lab.toml: nodes[0].accelerators must be an integer between 1 and 1024, got 0 "
            "(e.g. accelerators = 1)",
        ),
        (
            {"nodes": [{**NODE, "accelerators": 1025}]},
            "lab.toml: nodes[0].accelerators must be an integer between 1 and 1024, got 1025 "
            "(e.g. accelerators = 1)",
        ),
        (
            {"nodes": [{**NODE, "accelerators": "1"}]},
            "lab.toml: nodes[0].accelerators must be an integer between 1 and 1024, "
            "got the string '1' (e.g. accelerators = 1)",
        ),
        (
            {"nodes": [{**NODE, "accelerators": True}]},
            "lab.toml: nodes[0].accelerators must be an integer between 1 and 1024, got True "
            "(e.g. accelerators = 1)",
        ),
        (
            {"nodes": [{**NODE, "port": 0}]},
            "lab.toml: nodes[0].port must be an integer between 1 and 65535, got 0 (e.g. port = 22)",
        ),
        (
            {"nodes": [{**NODE, "ib_hcas": [""]}]},
            "lab.toml: nodes[0].ib_hcas must be a list of strings, got [''] "
            '(e.g. ib_hcas = ["a", "b"])',
        ),
        (
            {"nodes": [{**NODE, "ib_hcas": 5}]},
            "lab.toml: nodes[0].ib_hcas must be a list of strings, got 5 "
            '(e.g. ib_hcas = ["a", "b"])',
        ),
        (
            {"nodes": [NODE, NODE]},
            "lab.toml: nodes[1].name 'a' is used twice (give every node its own name)",
        ),
        (
            {"nodes": [{**NODE, "color": "red"}]},
            "lab.toml: nodes[0].color is not a known key (known keys here: accelerators, address, "
            "docker_host, ib_hcas, key_file, name, port, python, socket_ifname, user, "
            "visible_devices, workdir)",
        ),
        (
            _with(node_defaults={"name": "x"}),
            "lab.toml: node_defaults.name is not a known key (known keys here: accelerators, "
            "docker_host, ib_hcas, key_file, port, python, socket_ifname, user, visible_devices, "
            "workdir)",
        ),
        (_with(ssh=[]), "lab.toml: ssh must be a table (write it as [ssh])"),
        (
            _with(ssh={"port": 0}),
            "lab.toml: ssh.port must be an integer between 1 and 65535, got 0 (e.g. port = 22)",
        ),
        (
            _with(ssh={"accept_new_host_keys": "yes"}),
            "lab.toml: ssh.accept_new_host_keys must be true or false, got the string 'yes' "
            "(e.g. accept_new_host_keys = false)",
        ),
        (
            _with(ssh={"connect_timeout_s": 0}),
            "lab.toml: ssh.connect_timeout_s must be a positive number, got 0 "
            "(e.g. connect_timeout_s = 10.0)",
        ),
        (
            _with(ssh={"command_timeout_s": "1m"}),
            "lab.toml: ssh.command_timeout_s must be a positive number, got the string '1m' "
            "(e.g. command_timeout_s = 120.0)",
        ),
        (
            _with(ssh={"connect_timeout_s": True}),
            "lab.toml: ssh.connect_timeout_s must be a positive number, got True "
            "(e.g. connect_timeout_s = 10.0)",
        ),
        (
            _with(ssh={"keepalive_s": 3601}),
            "lab.toml: ssh.keepalive_s must be an integer between 0 and 3600, got 3601 "
            "(e.g. keepalive_s = 15)",
        ),
        (
            _with(cluster={"backend": "k8s"}),
            "lab.toml: cluster.backend must be one of ssh, slurm, got 'k8s' (e.g. backend = \"ssh\")",
        ),
        (
            _with(cluster={"runtime": "podman"}),
            "lab.toml: cluster.runtime must be one of host, docker, got 'podman' "
            '(e.g. runtime = "host")',
        ),
        (
            _with(cluster={"master_port": 1023}),
            "lab.toml: cluster.master_port must be an integer between 1024 and 65535, got 1023 "
            "(e.g. master_port = 29500)",
        ),
        (
            _with(case={"hparams": 3}),
            "lab.toml: case.hparams must be a table (write it as [case.hparams] with key = value "
            "lines)",
        ),
        (
            _with(store={"url": ""}),
            "lab.toml: store.url must be a non-empty string, got '' (e.g. url = \"...\")",
        ),
    ],
)
def test_each_cluster_file_mistake_is_one_exact_line(data: dict[str, Any], line: str) -> None:
    assert _error(data) == line


@pytest.mark.parametrize(("value", "devices"), [([0, 3], (0, 3)), ([2], (2,))])
def test_a_nodes_visible_devices_are_read_in_their_order(value: list[int], devices) -> None:
    spec = parse_cluster(_with(nodes=[{**NODE, "visible_devices": value}]), "lab.toml")
    assert spec.nodes[0].visible_devices == devices
    assert parse_cluster(_with(), "lab.toml").nodes[0].visible_devices is None


@pytest.mark.parametrize("value", ["2,3", [], [1, 1], [-1], [True], [1.5], [0, "1"]])
def test_visible_devices_that_are_not_distinct_indices_are_refused(value: Any) -> None:
    assert _error(_with(nodes=[{**NODE, "visible_devices": value}])) == (
        f"lab.toml: nodes[0].visible_devices must be a non-empty list of distinct device "
        f"indices, got {value!r} (e.g. visible_devices = [2, 3] (nvidia-smi's / mx-smi's "
        "numbering))"
    )


def test_the_bounds_themselves_are_accepted() -> None:
    spec = parse_cluster(
        {
            "cluster": {"master_port": 65535},
            "ssh": {"port": 65535, "keepalive_s": 3600, "connect_timeout_s": 0.5},
            "nodes": [{**NODE, "accelerators": 1024, "port": 1}],
        },
        "lab.toml",
    )
    assert spec.master_port == 65535 and spec.ssh.keepalive_s == 3600
    assert spec.ssh.connect_timeout_s == 0.5
    assert (spec.nodes[0].accelerators, spec.nodes[0].port) == (1024, 1)


def test_a_cluster_file_is_read_as_utf_8_whatever_the_locale(tmp_path) -> None:
    file = tmp_path / "lab.toml"
    file.write_text('[cluster]\nname = "Größe"\n\n[[nodes]]\nname = "a"\naddress = "h"\n', "utf-8")
    with ascii_locale():
        assert load_cluster(str(file)).name == "Größe"


def test_cluster_files_that_cannot_be_read_say_so(tmp_path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_cluster(str(tmp_path / "none.toml"))
    assert missing.value.one_line() == (
        f"cluster file {tmp_path / 'none.toml'} does not exist "
        "(check --cluster / $ORCHESTRATOR_CLUSTER)"
    )
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe = 1")
    with pytest.raises(ConfigError) as unreadable:
        load_cluster(str(bad))
    assert unreadable.value.one_line().startswith(f"cannot read cluster file {bad}: ")
    assert unreadable.value.remedy == "check the path and permissions"
    broken = tmp_path / "broken.toml"
    broken.write_text("[nodes\n")
    with pytest.raises(ConfigError) as syntax:
        load_cluster(str(broken))
    assert syntax.value.message.startswith(f"{broken}: not valid TOML (")
    assert syntax.value.remedy == "fix the syntax at the position shown"


def test_without_a_file_the_local_cluster_toml_or_the_embedded_default_is_used(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default = load_cluster(None)
    assert default.name == "local" and default.nodes[0].address == "local"
    assert default.case.data_dir == str(tmp_path / "data" / "coco-synth")
    (tmp_path / "cluster.toml").write_text('[[nodes]]\nname = "x"\naddress = "h"\n')
    here = load_cluster(None)
    assert here.name == "cluster" and here.source == "cluster.toml"


def test_a_node_may_name_its_own_key_file() -> None:
    spec = parse_cluster(
        {
            "ssh": {"key_file": "/k/shared"},
            "nodes": [{**NODE, "key_file": "/k/own"}, {**NODE, "name": "b"}],
        },
        "lab.toml",
    )
    assert [n.key_file for n in spec.nodes] == ["/k/own", "/k/shared"]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            _with(bogus=1),
            "lab.toml: bogus is not a known key (known keys here: case, cluster, energy, health, image, "
            "node_defaults, nodes, slurm, ssh, store, stragglers)",
        ),
        (
            _with(case={"colour": 1}),
            "lab.toml: case.colour is not a known key (known keys here: backbone_weights, config, "
            "data_dir, hparams)",
        ),
        (_with(image=3), "lab.toml: image must be a table (write it as [image])"),
        (_with(slurm=3), "lab.toml: slurm must be a table (write it as [slurm])"),
        (_with(health=3), "lab.toml: health must be a table (write it as [health])"),
        (_with(stragglers=3), "lab.toml: stragglers must be a table (write it as [stragglers])"),
        (_with(energy={"x": 1}), "lab.toml: energy.x is not a known key (known keys: bmc_power)"),
        (
            _with(case={"hparams": {"lr": "0.1\t"}}),
            "lab.toml: case.hparams.lr holds the control character '\\t' (write it on one line, "
            "without newlines, tabs or other control characters)",
        ),
    ],
)
def test_tables_mistakes_name_the_file_and_table(data: dict[str, Any], line: str) -> None:
    assert _error(data) == line


def test_a_slurm_table_is_read_even_for_an_ssh_cluster() -> None:
    spec = parse_cluster(_with(slurm={"partition": "gpu"}), "lab.toml")
    assert spec.backend == "ssh" and spec.slurm is not None
    assert spec.slurm.partition == "gpu"  # type: ignore[attr-defined]


def test_the_embedded_default_is_this_machine_with_its_cpus(monkeypatch) -> None:
    import sys
    from pathlib import Path

    from orchestrator.config import embedded_default

    monkeypatch.setattr(os, "cpu_count", lambda: None)
    spec = embedded_default()
    (node,) = spec.nodes
    assert (node.name, node.address, node.accelerators) == ("localhost", "local", 1)
    assert node.python == sys.executable
    assert node.workdir == str(Path.home() / ".cache" / "orchestrator")
    assert (spec.name, spec.vendor, spec.source, spec.store_url) == (
        "local",
        "cpu",
        "<embedded default>",
        None,
    )
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert embedded_default().nodes[0].accelerators == 6


def test_follower_grace_defaults_to_180_s_and_refuses_less_than_6() -> None:
    assert parse_cluster(_with(), "lab.toml").follower_grace_s == 180.0
    assert parse_cluster(_with(cluster={"follower_grace_s": 6}), "lab.toml").follower_grace_s == 6.0
    assert _error(_with(cluster={"follower_grace_s": 5.5})) == (
        "lab.toml: cluster.follower_grace_s must be at least 6 seconds, got 5.5 "
        "(e.g. follower_grace_s = 180)"
    )
    assert _error(_with(cluster={"follower_grace_s": 0})) == (
        "lab.toml: cluster.follower_grace_s must be a positive number, got 0 "
        "(e.g. follower_grace_s = 180.0)"
    )


def test_unknown_keys_of_the_cluster_and_store_tables_are_refused() -> None:
    assert _error(_with(cluster={"colour": "red"})) == (
        "lab.toml: cluster.colour is not a known key (known keys here: backend, "
        "follower_grace_s, master_addr, master_port, name, runtime, vendor)"
    )
    assert _error(_with(store={"uri": "sqlite:///r.db"})) == (
        "lab.toml: store.uri is not a known key (known keys here: read_url, url)"
    )
