"""The health checks' pure parts: the [health] table, busBW, the probe's pair list, judging
figures against their expected values, naming the node to blame, the gate's one line; and the
bad inputs of the commands (one line, non-zero exit, nothing written)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.config import parse_cluster
from orchestrator.errors import ConfigError
from orchestrator.health_settings import HealthSettings, parse_health_table
from orchestrator.runs.health import fabric_busbw, judge, refusal
from orchestrator.specs import NodeSpec
from workload.health_probe import bus_bandwidth, pair_list

NODES = ["node1", "node2", "node3", "node4"]


def _parse(table: dict) -> HealthSettings:
    return parse_health_table(table, "lab.toml", NODES)


def test_defaults_and_values_are_read() -> None:
    assert _parse({}) == HealthSettings()
    parsed = _parse(
        {
            "before_run": "always",
            "compute_fraction": 0.5,
            "sizes_mib": [4, 0.25],
            "iters": 2,
            "pairs": "all",
            "exempt": ["node2"],
            "expected_busbw_gbs": 48,
        }
    )
    assert parsed.before_run == "always" and parsed.compute_fraction == 0.5
    assert parsed.sizes_mib == (0.25, 4.0)  # sorted: the largest is the figure
    assert (parsed.iters, parsed.pairs, parsed.exempt) == (2, "all", ("node2",))
    assert parsed.expected_busbw_gbs == 48.0 and parsed.expected_compute_gflops is None


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"befor_run": "always"}, "lab.toml: health.befor_run is not a known key"),
        ({"before_run": "sometimes"}, "health.before_run must be one of multi-node, always"),
        ({"compute_fraction": 1.5}, "health.compute_fraction must be a fraction above 0"),
        ({"busbw_fraction": 0}, "health.busbw_fraction must be a fraction above 0"),
        ({"pair_fraction": True}, "health.pair_fraction must be a fraction above 0"),
        ({"time_budget_s": -1}, "health.time_budget_s must be a positive number"),
        ({"sizes_mib": []}, "health.sizes_mib must be a list of sizes in MiB"),
        ({"sizes_mib": [1, 8192]}, "health.sizes_mib must be a list of sizes in MiB"),
        ({"iters": 0}, "health.iters must be an integer between 1 and 1000"),
        ({"history": 2}, "health.history must be an integer between 3 and 1000"),
        ({"exempt": ["node9"]}, "health.exempt names node 'node9', which is not in the file"),
        ({"quarantine_expiry_s": "1h"}, "health.quarantine_expiry_s must be a positive number"),
    ],
)
def test_bad_health_tables_are_one_line_naming_the_key(table: dict, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(table)
    line = caught.value.one_line()
    assert words in line and "\n" not in line and caught.value.remedy


def test_the_cluster_file_carries_its_health_table() -> None:
    data = {"nodes": [{"name": "a", "address": "10.0.0.1"}], "health": {"before_run": "never"}}
    assert parse_cluster(data, "lab.toml").health.before_run == "never"
    with pytest.raises(ConfigError, match="health.exempt names node 'b'"):
        parse_cluster({**data, "health": {"exempt": ["b"]}}, "lab.toml")


@pytest.mark.parametrize(
    ("when", "nnodes", "gates"),
    [("multi-node", 1, False), ("multi-node", 2, True), ("always", 1, True), ("never", 4, False)],
)
def test_when_the_gate_runs(when: str, nnodes: int, gates: bool) -> None:
    assert _parse({"before_run": when}).gates(nnodes) is gates


def test_bus_bandwidth_is_nccl_tests_definition() -> None:
    alg, bus = bus_bandwidth(256 * 2**20, 0.01, 8)
    assert alg == pytest.approx(26.8435456)
    assert bus == pytest.approx(alg * 2 * 7 / 8)
    assert bus_bandwidth(10**9, 1.0, 2) == (1.0, 1.0)  # two ranks: busBW = algBW


def test_pairs_are_a_ring_or_all() -> None:
    assert pair_list(1, "ring") == []
    assert pair_list(2, "ring") == [(0, 1)]
    assert pair_list(4, "ring") == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert len(pair_list(4, "all")) == 6


def test_fabric_expectation_is_24_gbs_per_nic_of_the_poorest_node() -> None:
    two = NodeSpec(name="a", address="x", ib_hcas=("mlx5_0", "mlx5_1"))
    one = NodeSpec(name="b", address="y", ib_hcas=("mlx5_0",))
    assert fabric_busbw([two, two]) == 48.0
    assert fabric_busbw([two, one]) == 24.0
    assert fabric_busbw([two, NodeSpec(name="c", address="z")]) is None


def _doc(gflops: dict[str, float], pairs: dict[tuple[str, str], float], everyone: float) -> dict:
    return {
        "nodes": NODES,
        "took_s": 3.0,
        "compute": [{"node": n, "device": 0, "gflops": v} for n, v in gflops.items()],
        "allreduce": {"ranks": 4, "busbw_gbs": everyone},
        "intra": [],
        "pairs": [{"a": a, "b": b, "busbw_gbs": v} for (a, b), v in pairs.items()],
    }


RING_SLOW_3 = {
    ("node1", "node2"): 0.024,
    ("node2", "node3"): 0.005,
    ("node3", "node4"): 0.0049,
    ("node4", "node1"): 0.023,
}
EVEN = {"node1": 20.0, "node2": 21.0, "node3": 19.0, "node4": 20.5}
SPECS = [NodeSpec(name=n, address=n) for n in NODES]


def test_a_slow_link_fails_its_pairs_and_the_node_between_them_is_blamed() -> None:
    settings = _parse({"expected_busbw_gbs": 0.025})
    report = judge(_doc(EVEN, RING_SLOW_3, 0.005), settings, SPECS, {})
    verdicts = {(f.check, f.node, f.peer): f.verdict for f in report.figures}
    assert verdicts[("pair", "node1", "node2")] == "ok"
    assert verdicts[("pair", "node2", "node3")] == "fail"
    assert verdicts[("pair", "node1", "node4")] == "ok"  # stored sorted
    assert verdicts[("allreduce", None, None)] == "fail"
    assert all(f.verdict == "ok" for f in report.figures if f.check == "compute")
    assert report.blamed() == ("node3",) and not report.ok
    line = refusal(report, "4x1").one_line()
    assert line.startswith("health gate: node3 below threshold: ")
    assert "pair node3-node4 busBW 0.0049 GB/s, expected 0.025 (configured), threshold 70%" in line
    assert "\n" not in line and "before_run" in line


def test_the_threshold_is_a_fraction_of_the_expected_figure() -> None:
    at = {"expected_busbw_gbs": 0.025, "pair_fraction": 0.19}
    report = judge(_doc(EVEN, RING_SLOW_3, 0.02), _parse(at), SPECS, {})
    assert report.ok  # 0.0049 >= 0.19 * 0.025
    just_below = {**RING_SLOW_3, ("node3", "node4"): 0.19 * 0.025 - 1e-9}
    report = judge(_doc(EVEN, just_below, 0.02), _parse(at), SPECS, {})
    assert [f.peer for f in report.failing] == ["node4"]
    assert report.blamed() == ("node3", "node4")  # one slow pair: both ends


def test_without_an_expected_figure_the_peers_median_then_the_own_median_judge() -> None:
    starved = {**EVEN, "node2": 4.0}
    report = judge(_doc(starved, {}, 1.0), _parse({}), SPECS, {})
    compute = {f.node: f for f in report.figures if f.check == "compute"}
    assert compute["node2"].verdict == "fail" and compute["node2"].expected_from == "peers' median"
    assert compute["node2"].expected == pytest.approx(19.5)  # of 20, 4, 19, 20.5
    assert report.blamed() == ("node2",)
    everyone = next(f for f in report.figures if f.check == "allreduce")
    assert everyone.verdict == "unjudged" and everyone.expected is None  # no peers, no history
    history = {("compute", "node2", None, 0, None): [5.0, 4.5, 4.2, 30.0]}
    report = judge(_doc(starved, {}, 1.0), _parse({"history": 3}), SPECS, history)
    own = next(f for f in report.figures if f.node == "node2" and f.check == "compute")
    assert own.expected_from == "own median" and own.expected == 4.5 and own.verdict == "ok"
    assert not math.isnan(own.value)


def test_an_exempt_node_is_shown_failing_but_neither_refuses_nor_is_blamed() -> None:
    report = judge(_doc({**EVEN, "node2": 4.0}, {}, 1.0), _parse({"exempt": ["node2"]}), SPECS, {})
    node2 = next(f for f in report.figures if f.node == "node2")
    assert node2.verdict == "fail" and node2.exempt
    assert report.ok and report.blamed() == ()


def test_the_summary_names_the_lowest_figures() -> None:
    report = judge(_doc(EVEN, RING_SLOW_3, 0.005), _parse({"expected_busbw_gbs": 0.025}), SPECS, {})
    summary = report.summary()
    assert summary.startswith("FAIL node3; compute min 19 GFLOP/s (node3 device 0 compute)")
    assert "pair min 0.0049 GB/s (pair node3-node4 busBW)" in summary


def test_health_of_a_node_not_in_the_file_is_one_line(run_cli, tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[nodes]]\nname = "a"\naddress = "local"\n')
    db = tmp_path / "r.db"
    result = run_cli("--cluster", str(cfg), "--db", f"sqlite:///{db}", "nodes", "show", "zz")
    assert result.exit_code == 2
    assert result.err.startswith("error: no node named 'zz' in ") and result.err.count("\n") == 1
    result = run_cli("--cluster", str(cfg), "--db", f"sqlite:///{db}", "health", "2x1")
    assert result.exit_code == 2 and result.err.count("\n") == 1
    assert "needs 2 nodes but cluster" in result.err
    assert not db.exists()


def test_a_bad_health_table_stops_every_command_before_anything_is_written(
    run_cli, tmp_path: Path
) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[nodes]]\nname = "a"\naddress = "local"\n\n[health]\nbusbw_fraction = 2\n')
    db = tmp_path / "r.db"
    for args in (["health", "1x1"], ["submit", "1x1"], ["nodes", "release", "a"]):
        result = run_cli("--cluster", str(cfg), "--db", f"sqlite:///{db}", *args)
        assert result.exit_code == 2, args
        assert result.err.count("\n") == 1 and "health.busbw_fraction" in result.err
    assert not db.exists()
