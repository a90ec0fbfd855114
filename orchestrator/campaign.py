"""Campaign files (TOML) -> the list of runs they ask for. Pure: no store, no nodes.

    [campaign]
    name = "nightly"
    clusters = ["lab-a.toml", "lab-b.toml"]   # vendors are clusters; default: --cluster
    topologies = ["1x1", "1x8", "2x8"]
    precisions = ["fp32", "amp"]
    repeats = 3               # or a rule: repeat = {until_ci_pct = 2, min = 3, max = 10}
    timeout = "2h"
    no_progress_timeout = "30m"

    [campaign.set]            # hyper-parameters every run gets
    max_iters = 200

    [sets.base]               # named hyper-parameter sets: one run per set (default: one, empty)
    [sets.big-batch]
    bs = 16
    lr = 0.16

Expansion order (the order runs are queued): cluster, topology, precision, set, repeat.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import tomllib
from orchestrator.errors import ConfigError, TopologyError
from orchestrator.plan import HPARAM_ALIASES, check_hparams
from orchestrator.repeat_rule import RepeatRule, rule_from_table
from orchestrator.specs import ClusterSpec, Topology, pick_nodes
from orchestrator.tables import Dialect, Table, Words, control_character

PRECISIONS = ("fp32", "amp", "fp16")
MAX_RUNS = 10_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_CAMPAIGN_KEYS = {
    "name",
    "clusters",
    "topologies",
    "precisions",
    "repeats",
    "repeat",
    "timeout",
    "no_progress_timeout",
    "nodes",
    "set",
}
# How a campaign file words its mistakes; its lists may be a lone string but not empty.
_CAMPAIGN = Dialect(
    not_table=Words("{source} has no [{key}] table", "start the file with [{key}]"),
    unknown=Words("{source}: {key} is not a campaign setting", "known: {known}"),
    integer=Words("{source}: {key} {value} is not {low}..{high}", "e.g. {name} = {example}"),
    strings=Words("{source}: {key} must be a non-empty list of strings", 'e.g. ["1x1"]'),
    empty_list=False,
    empty_items=True,
)
_SET = Words("{source}: {key} must be a table of key = value", "e.g. bs = 16")


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    clusters: tuple[str | None, ...]  # cluster file paths; None: the one given with --cluster
    topologies: tuple[Topology, ...]
    precisions: tuple[str, ...]
    sets: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (name, ((key, value), ...))
    repeats: int
    timeout_s: float | None
    no_progress_timeout_s: float | None
    nodes: tuple[str, ...] | None  # pin every run to these nodes (rarely wanted)
    source: str
    # `repeat = {until_ci_pct = 2, min = 3, max = 10}`: up to max repeats are queued; a worker
    # cancels the rest once the rule holds (orchestrator/repeat_rule.py)
    repeat_rule: RepeatRule | None = None


@dataclass(frozen=True)
class CampaignRun:
    index: int  # 1-based position in the expansion
    cluster: str | None
    topology: Topology
    precision: str
    set_name: str
    sets: tuple[tuple[str, str], ...]
    repeat: int  # 1-based


def duration(value: object, source: str, key: str) -> float | None:
    if value is None or value in ("", "none", 0):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(
            f"{source}: {key} {value!r} is not a duration", "write e.g. 90s, 45m or 2h"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def _scalar_sets(table: Table) -> tuple[tuple[str, str], ...]:
    items = []
    for key, value in table.data.items():
        if isinstance(value, Mapping | list) or value is None:
            table.fail(key, "must be a number or a string", "e.g. lr = 0.16")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        found = control_character(f"{key}{text}")
        if found is not None:  # the values reach the workload's command line and scripts
            table.fail(key, f"holds the control character {found}", "write it on one line")
        items.append((HPARAM_ALIASES.get(str(key), str(key)), text))  # bs = 16, as --set bs=16
    return tuple(items)


def parse_campaign(data: Mapping[str, Any], source: str) -> CampaignSpec:
    """Check a parsed campaign file; every mistake is a ConfigError naming the key."""
    top = Table(data, source, _CAMPAIGN)
    top.known(
        {"campaign", "sets"},
        Words("{source}: {key} is not a campaign table", "use [campaign] and [sets.NAME]"),
    )
    table = top.table("campaign", _CAMPAIGN_KEYS, required=True)
    name = table.get("name") or Path(source).stem
    if not isinstance(name, str):
        table.fail("name", "must be a string", 'e.g. name = "nightly"')
    topo_texts = table.strings("topologies")
    if not topo_texts:
        table.fail("topologies", "is missing", 'e.g. topologies = ["1x1", "2x8"]')
    try:
        topologies = tuple(Topology.parse(t) for t in topo_texts)
    except TopologyError as exc:
        raise ConfigError(f"{source}: campaign.topologies: {exc.message}", exc.remedy) from None
    precisions = table.strings("precisions") or ("fp32",)
    for p in precisions:
        if p not in PRECISIONS:
            table.fail("precisions", f"has {p!r}", f"use {', '.join(PRECISIONS)}")
    repeats = table.integer("repeats", 1, low=1, high=1000, example=3)
    rule = None
    if table.get("repeat") is not None:
        if table.get("repeats") is not None:
            table.fail(
                "repeat", "and campaign.repeats are both given", "keep one: a count or a rule"
            )
        rule = rule_from_table(table.get("repeat"), source)
        repeats = rule.max
    clusters = table.strings("clusters")
    common = _scalar_sets(table.table("set", not_table=_SET))
    raw_sets = top.table(
        "sets", not_table=Words("{source}: {key} must be tables [sets.NAME]", "e.g. [sets.base]")
    )
    sets = tuple(
        (str(n), _merge(common, _scalar_sets(raw_sets.table(n, not_table=_SET))))
        for n in raw_sets.data
    ) or (("default", common),)
    spec = CampaignSpec(
        name=name,
        clusters=tuple(_relative_to(source, c) for c in clusters) if clusters else (None,),
        topologies=topologies,
        precisions=precisions,
        sets=sets,
        repeats=repeats,
        timeout_s=duration(table.get("timeout"), source, "campaign.timeout"),
        no_progress_timeout_s=duration(
            table.get("no_progress_timeout", "30m"), source, "campaign.no_progress_timeout"
        ),
        nodes=table.strings("nodes") or None,
        source=source,
        repeat_rule=rule,
    )
    count = len(spec.clusters) * len(topologies) * len(precisions) * len(sets) * repeats
    if count > MAX_RUNS:
        raise ConfigError(
            f"{source} expands to {count} runs (more than {MAX_RUNS})", "split the campaign"
        )
    return spec


def _merge(
    common: tuple[tuple[str, str], ...], own: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    merged = dict(common)
    merged.update(own)  # a set's own value wins over the campaign-wide one
    return tuple(merged.items())


def _relative_to(source: str, path: str) -> str:
    """Cluster files named in a campaign are relative to the campaign file."""
    p = Path(path).expanduser()
    if p.is_absolute() or source.startswith("<"):
        return str(p)
    return str(Path(source).parent / p)


def load_campaign(path: str) -> CampaignSpec:
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"campaign file {path} does not exist", "check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})", "fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read campaign file {path}: {exc}", "check the path") from None
    return parse_campaign(data, str(path))


def expand(spec: CampaignSpec) -> list[CampaignRun]:
    runs: list[CampaignRun] = []
    for cluster in spec.clusters:
        for topology in spec.topologies:
            for precision in spec.precisions:
                for set_name, sets in spec.sets:
                    for repeat in range(1, spec.repeats + 1):
                        runs.append(
                            CampaignRun(
                                len(runs) + 1, cluster, topology, precision, set_name, sets, repeat
                            )
                        )
    return runs


def check_runs(
    spec: CampaignSpec, runs: Sequence[CampaignRun], clusters: Mapping[str | None, ClusterSpec]
) -> None:
    """Every run checked as `submit` checks it (topology against the cluster's nodes, each
    hyper-parameter's key, type and range), before anything is queued or printed: the first
    bad run is a ConfigError naming the file, the run and what is wrong."""
    seen: set[tuple[str | None, str, str, tuple[tuple[str, str], ...]]] = set()
    for run in runs:
        key = (run.cluster, str(run.topology), run.precision, run.sets)
        if key in seen:
            continue
        seen.add(key)
        cluster = clusters[run.cluster]
        try:
            if cluster.nodes or cluster.backend != "slurm":  # else Slurm chooses the nodes
                pick_nodes(cluster, run.topology, list(spec.nodes) if spec.nodes else None)
            check_hparams(dict(run.sets), run.precision)
        except ConfigError as exc:
            where = (
                f"{spec.source}: run {run.index} ({run.topology} {run.precision}, set "
                f"{run.set_name!r}, cluster {cluster.name!r})"
            )
            raise ConfigError(f"{where}: {exc.message}", exc.remedy) from None


def render_expansion(spec: CampaignSpec, runs: Sequence[CampaignRun], default_cluster: str) -> str:
    """What `campaign submit --dry-run` prints: one line per run, in queue order."""
    lines = [
        f"campaign {spec.name!r} from {spec.source}: {len(runs)} run(s)",
        f"  timeout {_show(spec.timeout_s)}, no-progress timeout {_show(spec.no_progress_timeout_s)}"
        + (f", nodes {','.join(spec.nodes)}" if spec.nodes else ""),
        *(
            [f"  repeats {spec.repeat_rule.text()}; later repeats are cancelled once it holds"]
            if spec.repeat_rule
            else []
        ),
        "",
        f"{'#':>4}  {'cluster':<24} {'topology':<8} {'precision':<9} {'set':<14} {'repeat':<6} hparams",
    ]
    for run in runs:
        hp = ", ".join(f"{k}={v}" for k, v in run.sets) or "/"
        lines.append(
            f"{run.index:>4}  {run.cluster or default_cluster:<24} {str(run.topology):<8} "
            f"{run.precision:<9} {run.set_name:<14} {f'{run.repeat}/{spec.repeats}':<6} {hp}"
        )
    return "\n".join(lines) + "\n"


def _show(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
