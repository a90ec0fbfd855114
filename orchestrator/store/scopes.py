"""What a write touched, for the derived rows it must recompute (store/summaries.py,
store/verdicts.py): the configurations of the runs it wrote or removed, read before and after
the write, and per configuration the earliest finish among them (a run's verdicts depend on the
runs before it, so a change moves the verdicts of the runs after it) and their ids."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select

from orchestrator.store.bulk import chunks
from orchestrator.store.models import Run


@dataclass(frozen=True, order=True)
class Scope:
    """What one refresh recomputes: a configuration on every hardware label it ran on."""

    vendor: str
    topology: str
    precision: str
    config_label: str
    fix_hp: str


def scope_filter(table: Any, scope: Scope) -> Any:
    """The rows of `table` (runs, or a table keyed like them) in this scope; vendor, topology,
    precision first: the prefix of ix_runs_config_time."""
    c = table.__table__.c
    return and_(
        c.vendor == scope.vendor,
        c.topology == scope.topology,
        c.precision == scope.precision,
        c.config_label == scope.config_label,
        c.fix_hp == scope.fix_hp,
    )


@dataclass(frozen=True)
class Span:
    """The touched runs of one scope: the earliest finish among them (None: none had
    finished) and their ids."""

    since: datetime | None
    run_ids: frozenset[str]

    def __or__(self, other: Span) -> Span:
        times = [t for t in (self.since, other.since) if t is not None]
        return Span(min(times, default=None), self.run_ids | other.run_ids)


@dataclass(frozen=True)
class Touched:
    """Scopes a write changed, with their spans; `a | b` joins what two reads found."""

    spans: Mapping[Scope, Span]

    @property
    def scopes(self) -> list[Scope]:
        return sorted(self.spans)

    def __or__(self, other: Touched) -> Touched:
        joined = dict(self.spans)
        for scope, span in other.spans.items():
            joined[scope] = joined[scope] | span if scope in joined else span
        return Touched(joined)


def touched(conn: Connection, run_ids: Iterable[str]) -> Touched:
    """The scopes these runs count in now, with their spans (runs not stored are left out)."""
    spans: dict[Scope, Span] = {}
    columns = (Run.vendor, Run.topology, Run.precision, Run.config_label, Run.fix_hp)
    for chunk in chunks(run_ids):
        query = select(*columns, Run.finished_at, Run.run_id).where(Run.run_id.in_(chunk))
        for *key, finished_at, run_id in conn.execute(query):
            scope, span = Scope(*key), Span(finished_at, frozenset([run_id]))
            spans[scope] = spans[scope] | span if scope in spans else span
    return Touched(spans)
