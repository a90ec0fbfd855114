"""`orchestrator db copy`: a whole store into another, SQLite to PostgreSQL or back.

Every table of the history is copied in the order its foreign keys need (campaigns, images and
their wheels, runs, then what belongs to runs), in chunks, all in one transaction on the target:
a copy that fails leaves the target as it was. Rows the target already holds (same primary key)
are left as they are, so running the copy again adds only what is new. Rank files and manifests
(the `RawDoc` columns) travel as their text, byte for byte. Node leases and Slurm follow rows are
not copied: they belong to live processes of the source store.

The target must exist at this orchestrator's schema revision (`db upgrade`); a SQLite target
that does not exist yet is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Connection,
    Table,
    Text,
    bindparam,
    cast,
    func,
    insert,
    select,
    text,
    type_coerce,
)
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import StoreError
from orchestrator.states import ACTIVE_STATUSES
from orchestrator.store import derived
from orchestrator.store.bulk import chunks
from orchestrator.store.engine import make_engine, parse_url, redact_url
from orchestrator.store.migrate import (
    check_revision,
    current_revision,
    head_revision,
    revision_of,
    upgrade_store,
)
from orchestrator.store.models import Base, RawDoc, Run

# Transient rows of live processes (leases): never copied. Configuration summaries are not
# copied either: the target's are recomputed from all its runs, the copied and its own.
NOT_COPIED = ("node_leases", "slurm_follows", "config_summaries")
CHUNK = 2000  # rows per insert


@dataclass(frozen=True)
class TableCopy:
    table: str
    source_rows: int
    copied: int  # rows the target lacked
    kept: int  # rows the target already had (same primary key)


@dataclass(frozen=True)
class CopyReport:
    source: str  # redacted
    target: str  # redacted
    tables: tuple[TableCopy, ...]
    live_runs: int  # queued or running in the source: their followers keep writing there


def copied_tables() -> list[Table]:
    """The store's tables in foreign-key order, leases left out."""
    return [t for t in Base.metadata.sorted_tables if t.name not in NOT_COPIED]


def copy_store(source_url: str, target_url: str) -> CopyReport:
    if _same_store(source_url, target_url):
        raise StoreError(
            f"source and target are the same store ({redact_url(source_url)})",
            "name another store with --to",
        )
    source = make_engine(parse_url(source_url))  # an existing store only
    target_parsed = parse_url(target_url)
    new_file = (
        target_parsed.get_backend_name() == "sqlite"
        and not Path(str(target_parsed.database)).exists()
    )
    if new_file or current_revision(target_url) is None:
        upgrade_store(target_url)  # a new or empty target gets this orchestrator's schema
    target = make_engine(target_parsed)
    try:
        with source.connect() as src, target.connect() as dst, dst.begin():
            check_revision(src, source_url)
            _check_target(dst, target_url)
            tables = tuple(_copy_table(src, dst, table) for table in copied_tables())
            _advance_sequences(dst)
            derived.rebuild(dst)  # this version's definitions, whatever the source's
            live = src.execute(
                select(func.count()).where(Run.status.in_(ACTIVE_STATUSES))
            ).scalar_one()
        return CopyReport(redact_url(source_url), redact_url(target_url), tables, int(live))
    except SQLAlchemyError as exc:
        raise StoreError(
            f"copy to {redact_url(target_url)} failed: {' '.join(str(exc).split())[:300]}",
            "nothing was written to the target; check both URLs and the target role's rights",
        ) from None
    finally:
        source.dispose()
        target.dispose()


def _check_target(dst: Connection, target_url: str) -> None:
    revision = revision_of(dst)
    if revision != head_revision():
        raise StoreError(
            f"the target store at {redact_url(target_url)} is at revision {revision}, this "
            f"orchestrator needs {head_revision()}",
            f"run: orchestrator --db {redact_url(target_url)} db upgrade",
        )


def _same_store(a: str, b: str) -> bool:
    pa, pb = parse_url(a), parse_url(b)
    if pa.get_backend_name() == "sqlite" and pb.get_backend_name() == "sqlite":
        return Path(str(pa.database)).resolve() == Path(str(pb.database)).resolve()
    return pa.render_as_string(hide_password=True) == pb.render_as_string(hide_password=True)


def _copy_table(src: Connection, dst: Connection, table: Table) -> TableCopy:
    key = list(table.primary_key.columns)
    present = {tuple(row) for row in dst.execute(select(*key))}
    columns = [_read_column(c) for c in table.columns]
    statement = insert(table).values(
        {c.name: _write_param(c, dst.dialect.name) for c in table.columns}
    )
    total = copied = 0
    for chunk in chunks(src.execute(select(*columns).order_by(*key)).mappings(), CHUNK):
        total += len(chunk)
        fresh = [dict(row) for row in chunk if tuple(row[c.name] for c in key) not in present]
        if fresh:
            dst.execute(statement, fresh)
            copied += len(fresh)
    return TableCopy(table.name, total, copied, total - copied)


def _is_raw(column: Column[Any]) -> bool:
    return column.type is RawDoc


def _read_column(column: Column[Any]) -> ColumnElement[Any]:
    """A RawDoc column as its stored text (byte for byte), any other as its Python value."""
    return cast(column, Text).label(column.name) if _is_raw(column) else column


def _write_param(column: Column[Any], dialect: str) -> ColumnElement[Any]:
    """A RawDoc column's text goes in as it was: cast to json on PostgreSQL (which keeps the
    text), as it is on SQLite (whose JSON is text, and whose CAST AS JSON would be numeric)."""
    if not _is_raw(column):
        return bindparam(column.name, type_=column.type)
    param = type_coerce(bindparam(column.name, type_=Text), Text)
    return cast(param, JSON) if dialect == "postgresql" else param


def _advance_sequences(conn: Connection) -> None:
    """PostgreSQL: ids copied explicitly do not move their sequences; move them past the max."""
    if conn.dialect.name != "postgresql":
        return
    for table in copied_tables():
        for column in table.primary_key.columns:
            if column.autoincrement is True:
                top = conn.execute(select(func.max(column))).scalar()
                if top is not None:
                    conn.execute(
                        text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
                        {"t": table.name, "c": column.name, "v": int(top)},
                    )
