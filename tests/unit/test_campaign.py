"""Campaign files -> expansion (golden text), their errors, and the queue's FIFO decisions."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.campaign import expand, load_campaign, parse_campaign, render_expansion
from orchestrator.errors import ConfigError
from orchestrator.schedule import QueuedRun, schedule
from orchestrator.specs import NodeSpec
from tests.support.golden import check_golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "campaign-example.txt"


def test_example_campaign_expands_to_the_golden_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    spec = load_campaign("examples/campaign.toml")
    text = render_expansion(spec, expand(spec), "<--cluster>")
    assert len(expand(spec)) == 3 * 2 * 2 * 2
    check_golden(GOLDEN, text)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"campaign": {"topologies": ["2y8"]}}, "campaign.topologies"),
        ({"campaign": {"topologies": ["1x1"], "precisions": ["fp64"]}}, "fp64"),
        ({"campaign": {"topologies": ["1x1"], "repeat": 2}}, "campaign.repeat"),
        ({"campaign": {"topologies": ["1x1"], "repeats": 0}}, "campaign.repeats"),
        ({"campaign": {}}, "campaign.topologies is missing"),
        ({"sets": {}}, "no [campaign] table"),
    ],
)
def test_campaign_mistakes_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_campaign(data, "c.toml")
    assert fragment in info.value.message


def _run(run_id: str, nnodes: int, names: list[str] | None = None) -> QueuedRun:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return QueuedRun(run_id, "c", nnodes, 1, {"node_names": names}, at)


def test_schedule_is_fifo_and_a_waiting_big_run_reserves_free_nodes() -> None:
    nodes = [NodeSpec(f"n{i}", "127.0.0.1") for i in (1, 2, 3)]
    queued = [_run("a", 2), _run("b", 1), _run("c", 1, ["n3"])]
    busy = {("c", "n1"): "run x"}
    decisions = schedule(queued, busy, lambda run: nodes)
    assert decisions[0].nodes == ("n2", "n3")
    assert decisions[1].nodes is None and "n1 (run x)" in decisions[1].reason
    assert decisions[2].nodes is None and "n3 (run a)" in decisions[2].reason

    busy = {("c", "n1"): "run x", ("c", "n2"): "run y"}
    decisions = schedule(queued, busy, lambda run: nodes)
    assert decisions[0].nodes is None  # a waits for two nodes and keeps n3 for itself
    assert decisions[1].nodes is None and "n3 (waiting run a)" in decisions[1].reason
