"""Campaign files (orchestrator/campaign.py): defaults, durations, sets and their merge, cluster
paths, and each mistake's exact one-line error."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.campaign import (
    check_runs,
    duration,
    expand,
    load_campaign,
    parse_campaign,
    render_expansion,
)
from orchestrator.errors import ConfigError
from orchestrator.specs import ClusterSpec, NodeSpec, Topology
from orchestrator.states import BackendName
from tests.support.ascii_locale import ascii_locale

BASE = {"topologies": ["1x1"]}


def _error(data: dict[str, Any], source: str = "c.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_campaign(data, source)
    return caught.value.one_line()


def test_defaults_of_a_minimal_campaign() -> None:
    spec = parse_campaign({"campaign": BASE}, "dir/nightly.toml")
    assert (spec.name, spec.clusters, spec.topologies, spec.precisions) == (
        "nightly",
        (None,),
        (Topology(1, 1),),
        ("fp32",),
    )
    assert (spec.sets, spec.repeats, spec.timeout_s, spec.no_progress_timeout_s) == (
        (("default", ()),),
        1,
        None,
        1800.0,
    )
    assert (spec.nodes, spec.source, spec.repeat_rule) == (None, "dir/nightly.toml", None)


def test_every_setting_is_read() -> None:
    spec = parse_campaign(
        {
            "campaign": {
                "name": "n",
                "clusters": ["a.toml", "/abs/b.toml"],
                "topologies": "2x8",
                "precisions": ["amp", "fp16"],
                "repeats": 1000,
                "timeout": "2h",
                "no_progress_timeout": "none",
                "nodes": "n1",
                "set": {"max_iters": 200, "eval": False, "lr": 0.1},
            },
            "sets": {"base": {}, "big": {"bs": 16, "lr": 0.16}},
        },
        "camp/c.toml",
    )
    assert spec.name == "n" and spec.clusters == ("camp/a.toml", "/abs/b.toml")
    assert spec.topologies == (Topology(2, 8),) and spec.precisions == ("amp", "fp16")
    assert (spec.repeats, spec.timeout_s, spec.no_progress_timeout_s) == (1000, 7200.0, None)
    assert spec.nodes == ("n1",)
    assert spec.sets == (
        ("base", (("max_iters", "200"), ("eval", "false"), ("lr", "0.1"))),
        ("big", (("max_iters", "200"), ("eval", "false"), ("lr", "0.16"), ("batch_size", "16"))),
    )


def test_cluster_paths_are_relative_to_the_campaign_file_unless_absolute_or_embedded(
    monkeypatch,
) -> None:
    monkeypatch.setenv("HOME", "/home/u")
    clusters = {"campaign": {**BASE, "clusters": ["a.toml", "~/b.toml", "/c.toml"]}}
    assert parse_campaign(clusters, "x/c.toml").clusters == (
        "x/a.toml",
        "/home/u/b.toml",
        "/c.toml",
    )
    assert parse_campaign(clusters, "<stdin>").clusters == ("a.toml", "/home/u/b.toml", "/c.toml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("none", None),
        (0, None),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        (" 45 m ", 2700.0),
        ("2h", 7200.0),
        ("1.5d", 129600.0),
    ],
)
def test_durations_in_seconds_minutes_hours_days(value: Any, seconds: float | None) -> None:
    assert duration(value, "c.toml", "campaign.timeout") == seconds


@pytest.mark.parametrize("value", ["2w", "h", "-1h", True, -5])
def test_bad_durations_name_the_key(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        duration(value, "c.toml", "campaign.timeout")
    assert caught.value.one_line() == (
        f"c.toml: campaign.timeout {value!r} is not a duration (write e.g. 90s, 45m or 2h)"
    )


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            {"campaign": BASE, "extra": {}},
            "c.toml: extra is not a campaign table (use [campaign] and [sets.NAME])",
        ),
        ({"campaign": 3}, "c.toml has no [campaign] table (start the file with [campaign])"),
        (
            {"campaign": {**BASE, "colour": 1}},
            "c.toml: campaign.colour is not a campaign setting (known: clusters, name, no_progress_timeout, "
            "nodes, precisions, repeat, repeats, set, timeout, topologies)",
        ),
        (
            {"campaign": {**BASE, "name": 3}},
            'c.toml: campaign.name must be a string (e.g. name = "nightly")',
        ),
        (
            {"campaign": {}},
            'c.toml: campaign.topologies is missing (e.g. topologies = ["1x1", "2x8"])',
        ),
        (
            {"campaign": {"topologies": []}},
            'c.toml: campaign.topologies must be a non-empty list of strings (e.g. ["1x1"])',
        ),
        (
            {"campaign": {"topologies": [1]}},
            'c.toml: campaign.topologies must be a non-empty list of strings (e.g. ["1x1"])',
        ),
        (
            {"campaign": {"topologies": "1x1", "clusters": 5}},
            'c.toml: campaign.clusters must be a non-empty list of strings (e.g. ["1x1"])',
        ),
        (
            {"campaign": {"topologies": ["2y8"]}},
            "c.toml: campaign.topologies: topology '2y8' is not of the form NxM (write nodes x "
            "processes per node, e.g. 1x1, 1x8 or 2x8)",
        ),
        (
            {"campaign": {**BASE, "precisions": ["fp32", "bf16"]}},
            "c.toml: campaign.precisions has 'bf16' (use fp32, amp, fp16)",
        ),
        (
            {"campaign": {**BASE, "repeats": 0}},
            "c.toml: campaign.repeats 0 is not 1..1000 (e.g. repeats = 3)",
        ),
        (
            {"campaign": {**BASE, "repeats": 1001}},
            "c.toml: campaign.repeats 1001 is not 1..1000 (e.g. repeats = 3)",
        ),
        (
            {"campaign": {**BASE, "repeats": True}},
            "c.toml: campaign.repeats True is not 1..1000 (e.g. repeats = 3)",
        ),
        (
            {"campaign": {**BASE, "repeats": "3"}},
            "c.toml: campaign.repeats the string '3' is not 1..1000 (e.g. repeats = 3)",
        ),
        (
            {"campaign": {**BASE, "set": [1]}},
            "c.toml: campaign.set must be a table of key = value (e.g. bs = 16)",
        ),
        (
            {"campaign": {**BASE, "set": {"lr": None}}},
            "c.toml: campaign.set.lr must be a number or a string (e.g. lr = 0.16)",
        ),
        (
            {"campaign": BASE, "sets": {"big": {"lr": [1]}}},
            "c.toml: sets.big.lr must be a number or a string (e.g. lr = 0.16)",
        ),
        (
            {"campaign": BASE, "sets": {"big": {"lr": {"x": 1}}}},
            "c.toml: sets.big.lr must be a number or a string (e.g. lr = 0.16)",
        ),
        (
            {"campaign": BASE, "sets": 3},
            "c.toml: sets must be tables [sets.NAME] (e.g. [sets.base])",
        ),
        (
            {"campaign": {**BASE, "set": {"lr": "0.1\n#SBATCH --uid=0"}}},
            "c.toml: campaign.set.lr holds the control character '\\n' (write it on one line)",
        ),
        (  # in a key too: the key reaches the command line as well
            {"campaign": BASE, "sets": {"big": {"b\x1bs": 1}}},
            "c.toml: sets.big.b\x1bs holds the control character '\\x1b' (write it on one line)",
        ),
        (
            {"campaign": {**BASE, "repeat": {"until_ci_pct": 2, "min": 3, "max": 5}, "repeats": 2}},
            "c.toml: campaign.repeat and campaign.repeats are both given (keep one: a count or a "
            "rule)",
        ),
        (
            {"campaign": {**BASE, "repeat": 3}},
            "c.toml: campaign.repeat must be a table (write repeat = {until_ci_pct = 2, min = 3, "
            'max = 10, metric = "p_core"})',
        ),
        (
            {"campaign": {**BASE, "timeout": "soon"}},
            "c.toml: campaign.timeout 'soon' is not a duration (write e.g. 90s, 45m or 2h)",
        ),
        (
            {"campaign": {**BASE, "no_progress_timeout": "soon"}},
            "c.toml: campaign.no_progress_timeout 'soon' is not a duration (write e.g. 90s, 45m "
            "or 2h)",
        ),
        (
            {"campaign": {"topologies": ["1x1"] * 11, "repeats": 1000}},
            "c.toml expands to 11000 runs (more than 10000) (split the campaign)",
        ),
    ],
)
def test_each_campaign_mistake_is_one_exact_line(data: dict[str, Any], line: str) -> None:
    assert _error(data) == line


def test_exactly_the_maximum_number_of_runs_is_accepted() -> None:
    spec = parse_campaign({"campaign": {"topologies": ["1x1"] * 10, "repeats": 1000}}, "c.toml")
    assert len(expand(spec)) == 10_000
    assert expand(spec)[-1].index == 10_000 and expand(spec)[-1].repeat == 1000


def test_a_campaign_file_is_read_as_utf_8_whatever_the_locale(tmp_path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[campaign]\nname = "Größe"\ntopologies = ["1x1"]\n', "utf-8")
    with ascii_locale():
        assert load_campaign(str(file)).name == "Größe"


def test_campaign_files_that_cannot_be_read_say_so(tmp_path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_campaign(str(tmp_path / "none.toml"))
    assert missing.value.one_line() == (
        f"campaign file {tmp_path / 'none.toml'} does not exist (check the path)"
    )
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff = 1")
    with pytest.raises(ConfigError) as unreadable:
        load_campaign(str(bad))
    assert unreadable.value.message.startswith(f"cannot read campaign file {bad}: ")
    assert unreadable.value.remedy == "check the path"
    broken = tmp_path / "broken.toml"
    broken.write_text("[campaign\n")
    with pytest.raises(ConfigError) as syntax:
        load_campaign(str(broken))
    assert syntax.value.message.startswith(f"{broken}: not valid TOML (")
    assert syntax.value.remedy == "fix the syntax"
    good = tmp_path / "good.toml"
    good.write_text('[campaign]\ntopologies = ["1x2"]\n')
    assert load_campaign(str(good)).source == str(good)


def test_the_dry_run_lists_each_run_with_its_set_and_timeouts() -> None:
    spec = parse_campaign(
        {
            "campaign": {
                "name": "n",
                "topologies": ["1x1"],
                "repeats": 2,
                "timeout": 5400,
                "no_progress_timeout": 90,
                "nodes": ["a", "b"],
            },
            "sets": {"big": {"bs": 16}},
        },
        "c.toml",
    )
    text = render_expansion(spec, expand(spec), "lab.toml")
    lines = text.splitlines()
    assert lines[0] == "campaign 'n' from c.toml: 2 run(s)"
    assert lines[1] == "  timeout 90m, no-progress timeout 90s, nodes a,b"
    assert lines[3].split() == ["#", "cluster", "topology", "precision", "set", "repeat", "hparams"]
    assert lines[4].split() == ["1", "lab.toml", "1x1", "fp32", "big", "1/2", "batch_size=16"]
    assert lines[5].split() == ["2", "lab.toml", "1x1", "fp32", "big", "2/2", "batch_size=16"]
    plain = parse_campaign({"campaign": {**BASE, "timeout": 7200, "no_progress_timeout": 61}}, "c")
    text = render_expansion(plain, expand(plain), "x")
    assert text.splitlines()[1] == "  timeout 2h, no-progress timeout 61s"
    assert text.splitlines()[4].split()[-1] == "/" and text.endswith("\n")


def test_round_durations_are_shown_in_the_largest_unit_and_none_as_none() -> None:
    for timeout, shown in ((3600, "1h"), (60, "1m"), (59, "59s"), (5400, "90m"), (90.5, "90.5s")):
        spec = parse_campaign({"campaign": {**BASE, "timeout": timeout}}, "c")
        assert render_expansion(spec, [], "x").splitlines()[1].split(",")[0] == f"  timeout {shown}"
    spec = parse_campaign({"campaign": {**BASE, "no_progress_timeout": "none"}}, "c")
    assert render_expansion(spec, [], "x").splitlines()[1] == (
        "  timeout none, no-progress timeout none"
    )


def test_a_number_is_a_duration_in_seconds_as_it_is() -> None:
    assert duration(1e-07, "c", "k") == 1e-07 and duration(0.5, "c", "k") == 0.5


def test_set_values_keep_their_case_and_bools_are_lower_case() -> None:
    spec = parse_campaign({"campaign": {**BASE, "set": {"tag": "Big-A", "eval": True}}}, "c")
    assert spec.sets == (("default", (("tag", "Big-A"), ("eval", "true"))),)


@pytest.mark.parametrize("key", ["precisions", "nodes"])
def test_list_settings_that_are_not_lists_name_the_file_and_key(key: str) -> None:
    assert _error({"campaign": {**BASE, key: 3}}) == (
        f'c.toml: campaign.{key} must be a non-empty list of strings (e.g. ["1x1"])'
    )


def test_a_named_set_that_is_not_a_table_names_its_key() -> None:
    assert _error({"campaign": BASE, "sets": {"big": 3}}) == (
        "c.toml: sets.big must be a table of key = value (e.g. bs = 16)"
    )


def _lab(nodes: int, backend: BackendName = "ssh") -> ClusterSpec:
    members = tuple(NodeSpec(f"n{i}", f"10.0.0.{i}", accelerators=1) for i in range(1, nodes + 1))
    return ClusterSpec("lab", "cpu", members, backend=backend, source="lab.toml")


def _check(
    campaign: dict[str, Any], cluster: ClusterSpec, sets: dict[str, Any] | None = None
) -> str:
    """check_runs over the campaign's expansion: '' when every run passes, else the one line."""
    spec = parse_campaign({"campaign": campaign, **({"sets": sets} if sets else {})}, "c.toml")
    try:
        check_runs(spec, expand(spec), {None: cluster})
    except ConfigError as exc:
        return exc.one_line()
    return ""


def test_check_runs_names_the_first_bad_run_after_runs_that_repeat_a_good_one() -> None:
    # runs 1-2: 1x1 (the second is the first again); run 3 is the first 3x1
    campaign = {"topologies": ["1x1", "3x1", "2x1"], "precisions": ["amp"], "repeats": 2}
    assert _check(campaign, _lab(2)) == (
        "c.toml: run 3 (3x1 amp, set 'default', cluster 'lab'): topology 3x1 needs 3 nodes but "
        "cluster 'lab' has 2 (add nodes to lab.toml or ask for fewer)"
    )
    assert _check({**campaign, "topologies": ["1x1", "2x1"]}, _lab(2)) == ""


def test_check_runs_checks_each_runs_sets_and_the_pinned_nodes() -> None:
    sets = {"ok": {"bs": 2}, "bad": {"lr": 0}}
    assert _check({"topologies": ["1x1"]}, _lab(1), sets) == (
        "c.toml: run 2 (1x1 fp32, set 'bad', cluster 'lab'): lr=0.0 must be positive (use e.g. "
        "lr=0.02)"
    )
    assert _check({"topologies": ["2x1"], "nodes": ["n2"]}, _lab(2)) == (
        "c.toml: run 1 (2x1 fp32, set 'default', cluster 'lab'): topology 2x1 needs 2 node(s) but "
        "--nodes names 1 (name exactly as many nodes as the topology's first number)"
    )
    assert _check({"topologies": ["1x1"], "nodes": ["n2"]}, _lab(2)) == ""


def test_check_runs_leaves_the_nodes_to_slurm_only_when_the_cluster_names_none() -> None:
    assert _check({"topologies": ["4x1"]}, _lab(0, backend="slurm")) == ""
    assert _check({"topologies": ["4x1"]}, _lab(2, backend="slurm")) == (
        "c.toml: run 1 (4x1 fp32, set 'default', cluster 'lab'): topology 4x1 needs 4 nodes but "
        "cluster 'lab' has 2 (add nodes to lab.toml or ask for fewer)"
    )
