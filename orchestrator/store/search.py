"""The runs page's text search (text anywhere in the run id or the failure reason) through a
trigram index (migrations 0009, 0010): SQLite's FTS5 table runs_search (tokenize 'trigram', kept
by triggers on runs), PostgreSQL's pg_trgm GIN indexes on lower(runs.run_id) and
lower(runs.reason).

Without an index to use, the search is the plain `LIKE '%text%'` over the runs, which reads the
whole table: text shorter than a trigram (3 characters), and a PostgreSQL store where pg_trgm
could not be created (docs/web.md). Both ignore case: SQLite's FTS5 trigram tokenizer and LIKE
do; on PostgreSQL both sides are lower-cased (the expression the indexes hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    MetaData,
    Select,
    String,
    Subquery,
    Table,
    Text,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
)

from orchestrator.store.models import Run

TRIGRAM = 3
# SQLite's FTS5 table (not in Base.metadata: only the migration makes it).
RUNS_SEARCH = Table("runs_search", MetaData(), Column("run_id", String), Column("reason", Text))
# What the migration makes, for the schema checks (tests) to leave out of model comparisons.
SQLITE_SEARCH_TABLES = frozenset(
    f"runs_search{suffix}" for suffix in ("", "_config", "_content", "_data", "_docsize", "_idx")
)
PG_SEARCH_INDEXES = frozenset({"ix_runs_search_run_id", "ix_runs_search_reason"})
_CACHED = "orchestrator.runs_search"
# A search matching at most this many runs passes their ids from one read of the index on to
# the page's statements; a wider one (a word in most reasons) joins the index in each.
FOUND_IDS_CAP = 1000


def indexed(conn: Connection) -> bool:
    """Whether this store has the search index (once per pooled connection)."""
    info = conn.connection.info
    if _CACHED not in info:
        if conn.dialect.name == "sqlite":
            query = "SELECT count(*) FROM sqlite_master WHERE name = 'runs_search'"
        else:
            query = "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_runs_search_reason'"
        info[_CACHED] = bool(conn.scalar(text(query)))
    return bool(info[_CACHED])


def _plain(words: str) -> ColumnElement[bool]:
    return or_(
        func.lower(Run.run_id).contains(words.lower(), autoescape=True),
        func.lower(Run.reason).contains(words.lower(), autoescape=True),
    )


def index_serves(conn: Connection, words: str) -> bool:
    """Whether the search goes through SQLite's FTS5 table (pg_trgm's GIN indexes serve
    LIKE '%...%' as it is), which found_ids, index_matches and walks are about."""
    return len(words) >= TRIGRAM and conn.dialect.name == "sqlite" and indexed(conn)


def _match(words: str) -> ColumnElement[bool]:
    phrase = '"' + words.replace('"', '""') + '"'  # one FTS5 phrase: the text as a substring
    return literal_column("runs_search").op("MATCH")(bindparam("search", phrase, unique=True))


@dataclass(frozen=True)
class TextMatch:
    """How one request finds the runs whose id or failure reason holds `words`."""

    words: str
    ids: list[str] | None = None  # read once from the index: few runs match (found_ids)
    walk: bool = False  # many match: test each run's own text in the sort's order (walks)


def found_ids(conn: Connection, words: str) -> list[str] | None:
    """SQLite: the ids of the runs whose text holds `words`, read from the FTS5 table once, when
    at most FOUND_IDS_CAP match; None where the index does not serve or more match. A page
    that counts and lists the matches then reads the index once, not per statement: a phrase's
    common trigrams (`ben` of every `bench-...` id) have lists that grow with the history."""
    if not index_serves(conn, words):
        return None
    ids = list(conn.scalars(_index_rows(words, FOUND_IDS_CAP + 1)))
    return ids if len(ids) <= FOUND_IDS_CAP else None


def index_matches(conn: Connection, words: str, limit: int) -> Subquery | None:
    """SQLite: up to `limit` FTS5 rows whose text holds `words`, as a subquery to count; None
    where the index does not serve."""
    if not index_serves(conn, words):
        return None
    return _index_rows(words, limit).subquery()


def _index_rows(words: str, limit: int) -> Select[Any]:
    return select(RUNS_SEARCH.c.run_id).where(_match(words)).limit(limit)


def walks(matches: int, wanted: int, history: int) -> bool:
    """Where the FTS5 table serves: whether a page of a wide search should walk the sort's
    index testing each run's text (about wanted x history / matches runs read, `wanted`: the
    page's last row) rather than join every match from the FTS5 table and sort them
    (`matches` lookups: 200 ms for a text in all of 100,000 runs). The walk wins when
    matches^2 > wanted x history; with matches clustered far back in the order it reads more,
    never more than the history."""
    return matches * matches > wanted * history


def searched(conn: Connection, query: Select[Any], match: TextMatch) -> Select[Any]:
    """`query` (over runs) narrowed to runs whose id or failure reason holds the words: by the
    ids read once, or by each run's text (a walk), where the request chose so; else by the
    trigram index where it serves. SQLite: a join with the FTS5 table, which SQLite's planner
    reads first (the same filter as `run_id IN (SELECT ...)` makes it walk the sort's index over
    the whole history, testing each run)."""
    if match.ids is not None:
        return query.where(Run.run_id.in_(match.ids))
    if match.walk or not index_serves(conn, match.words):
        return query.where(_plain(match.words))
    join = RUNS_SEARCH.c.run_id == Run.run_id
    return query.join(RUNS_SEARCH, join).where(_match(match.words))
