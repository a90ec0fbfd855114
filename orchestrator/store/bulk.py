"""Fast inserts for the ingest path: the driver's own bulk call inside the caller's transaction.

SQLAlchemy's executemany spends most of its time building per-row parameter dicts; for tens of
thousands of rows a second we hand the driver plain tuples instead: sqlite3's executemany, and
PostgreSQL's COPY through psycopg. `insert_rows` still passes values through each column type's
own bind processor (UTC times, JSON), computed once per column, so the stored values are what a
Core insert would store; `insert_values` is for rows built as driver-ready tuples (rank results).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from operator import itemgetter
from typing import Any, TypeVar, cast

from sqlalchemy import Boolean, Connection, Float, Table
from sqlalchemy.exc import DBAPIError

from orchestrator.store.models import Base

T = TypeVar("T")
# Ids per IN (...) list: well below every backend's bound on one statement's parameters.
IDS_PER_STATEMENT = 500


def chunks(items: Iterable[T], size: int = IDS_PER_STATEMENT) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter), read lazily from any iterable."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _processors(
    conn: Connection, table: Table, columns: Sequence[str]
) -> list[Callable[[Any], Any] | None]:
    # Numbers and booleans reach both drivers as they are (SQLite's Float processor only
    # re-casts to float); every other type keeps its processor.
    dialect = conn.dialect
    return [
        None
        if isinstance(table.c[name].type, (Float, Boolean))
        else table.c[name].type._cached_bind_processor(dialect)
        for name in columns
    ]


def insert_rows(conn: Connection, model: type[Base], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert dict rows (all with the same keys) into the model's table in one driver call."""
    if not rows:
        return
    table = cast(Table, model.__table__)
    columns = list(rows[0])
    pick = itemgetter(*columns)
    values = [pick(row) for row in rows] if len(columns) > 1 else [(pick(row),) for row in rows]
    processed = [(i, p) for i, p in enumerate(_processors(conn, table, columns)) if p is not None]
    if processed:
        values = [_apply(row, processed) for row in values]
    _send(conn, table, columns, values)


def insert_values(
    conn: Connection, model: type[Base], columns: Sequence[str], values: list[tuple[Any, ...]]
) -> None:
    """Insert tuples of values that both drivers take as they are (str, int, float, bool, None;
    JSON as its text): no type processing at all."""
    if values:
        _send(conn, cast(Table, model.__table__), columns, values)


def _apply(
    row: tuple[Any, ...], processed: list[tuple[int, Callable[[Any], Any]]]
) -> tuple[Any, ...]:
    out = list(row)
    for i, process in processed:
        out[i] = process(out[i])
    return tuple(out)


def _send(
    conn: Connection, table: Table, columns: Sequence[str], values: list[tuple[Any, ...]]
) -> None:
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    target = quote(table.name)
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    if conn.dialect.name == "postgresql":
        statement = f"COPY {target} ({names}) FROM STDIN"
    else:
        statement = f"INSERT INTO {target} ({names}) VALUES ({', '.join('?' * len(columns))})"
    try:
        if conn.dialect.name == "postgresql":
            with cursor.copy(statement) as copy:
                for row in values:
                    copy.write_row(row)
        else:
            cursor.executemany(statement, values)
    except conn.dialect.loaded_dbapi.Error as exc:
        # Same exception family as any other statement: callers handle SQLAlchemyError.
        raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) from None
    finally:
        cursor.close()
