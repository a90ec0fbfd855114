"""docs/cluster-file.md against the one table reader: every key the reader accepts is documented
(and nothing else), and each documented default is the one the reader applies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import tomllib

from orchestrator import config, image_settings
from orchestrator.config import parse_cluster
from orchestrator.health_settings import HEALTH_KEYS
from orchestrator.readings_settings import ENERGY_KEYS, STRAGGLER_KEYS
from orchestrator.slurm_settings import SLURM_KEYS, parse_slurm_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster-file.md"
_ROW = re.compile(r"^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|")


def _sections() -> dict[str, dict[str, str]]:
    """{'[cluster]': {key: default cell}, ...} from the doc's tables."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = {}
        elif current and (match := _ROW.match(line)):
            sections[current][match.group(1)] = match.group(2).strip()
    return sections


READERS = {
    "[cluster]": config._CLUSTER_KEYS,
    "[store]": config._STORE_KEYS,
    "[ssh]": config._SSH_KEYS,
    "[case]": config._CASE_KEYS,
    "[[nodes]]": config._NODE_KEYS,
    "[image]": image_settings.IMAGE_KEYS,
    "[slurm]": SLURM_KEYS,
    "[health]": HEALTH_KEYS,
    "[stragglers]": STRAGGLER_KEYS,
    "[energy]": ENERGY_KEYS,
}


@pytest.mark.parametrize("table", sorted(READERS))
def test_every_key_the_reader_accepts_is_documented_and_nothing_else(table):
    assert set(_sections()[table]) == set(READERS[table])


def test_every_top_level_table_has_a_section():
    documented = {name.strip("[]") for name in _sections() if name.startswith("[")}
    assert documented == config._TOP_KEYS


def test_node_defaults_take_every_node_key_but_name_and_address():
    assert config._NODE_DEFAULT_KEYS == config._NODE_KEYS - {"name", "address"}


MINIMAL = {"nodes": [{"name": "a", "address": "10.0.0.1"}]}


def _parsed() -> dict[str, dict[str, Any]]:
    spec = parse_cluster(MINIMAL, "lab.toml")
    node, ssh, case = spec.nodes[0], spec.ssh, spec.case
    slurm = parse_slurm_table({}, "lab.toml")
    health = spec.health
    return {
        "[cluster]": {
            "vendor": spec.vendor,
            "runtime": spec.runtime,
            "backend": spec.backend,
            "master_port": spec.master_port,
            "follower_grace_s": spec.follower_grace_s,
        },
        "[ssh]": {
            "port": node.port,
            "known_hosts": list(ssh.known_hosts),
            "accept_new_host_keys": ssh.accept_new_host_keys,
            "connect_timeout_s": ssh.connect_timeout_s,
            "command_timeout_s": ssh.command_timeout_s,
            "keepalive_s": ssh.keepalive_s,
        },
        "[case]": {
            "data_dir": case.data_dir,
            "backbone_weights": case.backbone_weights,
            "hparams": case.hparams,
        },
        "[[nodes]]": {
            "accelerators": node.accelerators,
            "ib_hcas": list(node.ib_hcas),
            "python": node.python,
            "workdir": node.workdir,
        },
        "[image]": {
            "build_host": image_settings.parse_image_table({}, "lab.toml").build_host,
            "distribution": image_settings.parse_image_table({}, "lab.toml").distribution,
        },
        "[slurm]": {
            "sbatch_options": list(slurm.sbatch_options),
            "pyxis": slurm.pyxis,
            "container_mounts": list(slurm.container_mounts),
            "shared_dir": slurm.shared_dir,
            "python": slurm.python,
            "poll_interval_s": slurm.poll_interval_s,
        },
        "[health]": {
            "before_run": health.before_run,
            "compute_fraction": health.compute_fraction,
            "busbw_fraction": health.busbw_fraction,
            "pair_fraction": health.pair_fraction,
            "time_budget_s": health.time_budget_s,
            "compute_s": health.compute_s,
            "sizes_mib": list(health.sizes_mib),
            "iters": health.iters,
            "pairs": health.pairs,
            "history": health.history,
            "quarantine_expiry_s": health.quarantine_expiry_s,
            "exempt": list(health.exempt),
        },
        "[stragglers]": {"slower_fraction": spec.readings.slower_fraction},
        "[energy]": {"bmc_power": spec.readings.bmc_power},
    }


def _literal(cell: str) -> tuple[bool, Any]:
    """A default cell that is a TOML value in backticks, parsed; else (False, None)."""
    match = re.fullmatch(r"`(.+)`", cell)
    if not match:
        return False, None
    try:
        return True, tomllib.loads(f"v = {match.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def test_each_documented_default_is_the_one_the_reader_applies():
    sections, parsed = _sections(), _parsed()
    checked = 0
    for table, keys in sections.items():
        for key, cell in keys.items():
            is_value, value = _literal(cell)
            if not is_value:
                continue
            assert key in parsed.get(table, {}), f"{table} {key}: add it to _parsed()"
            assert parsed[table][key] == value, f"{table} {key}: doc says {cell}"
            checked += 1
        for key, cell in keys.items():
            if cell == "—":  # no value: the reader leaves it unset
                assert key not in parsed.get(table, {}) or parsed[table][key] in (None, ())
    assert checked >= 22


def test_the_derived_defaults_are_the_ones_the_doc_describes():
    import getpass

    from orchestrator.slurm_settings import parse_slurm_table

    sections = _sections()
    assert sections["[[nodes]]"]["workdir"].startswith("`/var/tmp/orchestrator-<user>`")
    node = parse_cluster(MINIMAL, "lab.toml").nodes[0]
    assert node.workdir == f"/var/tmp/orchestrator-{getpass.getuser()}"
    assert sections["[slurm]"]["shared_dir"] == "`~/.cache/orchestrator/slurm`"
    assert parse_slurm_table({}, "lab.toml").shared_dir == str(
        Path.home() / ".cache" / "orchestrator" / "slurm"
    )
