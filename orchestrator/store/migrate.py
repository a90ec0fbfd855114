"""Alembic, driven from code: the only way the store's schema is created or changed."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import SchemaOutOfDate, StoreError
from orchestrator.resources import migrations_dir
from orchestrator.store.engine import make_engine, parse_url, redact_url

if TYPE_CHECKING:  # Alembic is imported only by what migrates or walks the revisions
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = migrations_dir()  # orchestrator/_data/migrations when installed from a wheel
UPGRADE_REMEDY = "run: orchestrator db upgrade"


@dataclass(frozen=True)
class Migration:
    """What `db upgrade` / `db downgrade` did."""

    url: str  # redacted
    before: str | None
    after: str | None


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise StoreError(
            f"the migrations folder {MIGRATIONS_DIR} is missing",
            "reinstall orchestrator: pip install . from its repository (pip install -e . to develop)",
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


# migrations/versions/NNNN_what.py holds revision "NNNN", each down from the one before
_VERSION_FILE = re.compile(r"^(\d{4})_\w+\.py$")


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision, from the migration files' names: every command that opens a store
    checks it, and reading the names costs nothing where loading Alembic's script directory
    (every migration imported) costs a tenth of a second. tests/unit pin it to Alembic's head."""
    versions = MIGRATIONS_DIR / "versions"
    found = [m.group(1) for p in versions.glob("*.py") if (m := _VERSION_FILE.match(p.name))]
    if not found:
        alembic_config()  # says which folder is missing, with its remedy
        raise StoreError(f"no migrations in {versions}", "reinstall orchestrator")
    return max(found)


def known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def revision_of(connection: Connection) -> str | None:
    """The store's revision (alembic_version's row), None for a store without one."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:  # a branched history: this orchestrator never makes one
        raise StoreError(
            f"the store has {len(rows)} revisions at once ({', '.join(sorted(rows))})",
            "run: orchestrator db current, and repair alembic_version by hand",
        )
    return rows[0] if rows else None


def check_revision(connection: Connection, url: str) -> None:
    """Raise SchemaOutOfDate unless the database is exactly at this orchestrator's head."""
    current = revision_of(connection)
    needed = head_revision()
    if current == needed:
        return
    where = f"results store at {redact_url(url)}"
    if current is not None and current not in known_revisions():
        raise SchemaOutOfDate(
            f"{where} is at revision {current}, which this orchestrator does not know "
            f"(it needs {needed})",
            "a newer orchestrator upgraded it: install that version",
        )
    raise SchemaOutOfDate(
        f"{where} is at revision {current or 'none (empty)'}, this orchestrator needs {needed}",
        UPGRADE_REMEDY,
    )


def _run(url: str, action: str, revision: str) -> Migration:
    parsed = parse_url(url)
    # Only an upgrade may make a store: `db downgrade` of a missing SQLite file refuses.
    engine: Engine = make_engine(parsed, create=action == "upgrade")
    shown = redact_url(url)
    try:
        # One outer transaction for the whole step: on Postgres and (thanks to the engine's
        # explicit BEGIN) on SQLite, a failing migration leaves the schema as it was.
        with engine.connect() as connection, connection.begin():
            from alembic import command
            from alembic.util.exc import CommandError

            before = revision_of(connection)
            config = alembic_config(connection)
            try:
                if action == "upgrade":
                    command.upgrade(config, revision)
                else:
                    command.downgrade(config, revision)
            except CommandError as exc:
                raise StoreError(
                    f"cannot {action} results store at {shown} to {revision!r}: {exc}",
                    "see `orchestrator db current`; revisions are listed in migrations/versions/",
                ) from None
            after = revision_of(connection)
            if action == "upgrade" and after == head_revision():
                from orchestrator.store.derived import rebuild_if_stale

                # rows derived with another version's definitions: again, with this one's
                rebuild_if_stale(connection)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"{action} of results store at {shown} failed: {_first_line(exc)}",
            "nothing was changed; check the URL, the server and the role's rights",
        ) from None
    finally:
        engine.dispose()
    return Migration(url=shown, before=before, after=after)


def _first_line(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def upgrade_store(url: str, revision: str = "head") -> Migration:
    """Bring the schema up to `revision` (default: this orchestrator's head), in one transaction."""
    return _run(url, "upgrade", revision)


def downgrade_store(url: str, revision: str) -> Migration:
    """Take the schema down to `revision` ('base' drops every table)."""
    return _run(url, "downgrade", revision)


@dataclass(frozen=True)
class DowngradeImpact:
    """What `db downgrade` to a revision would undo, for the question it asks first."""

    url: str  # redacted
    current: str | None
    undone: tuple[str, ...]  # the revisions it takes back, newest first
    runs: int  # runs stored now (0 when there is no runs table)


def downgrade_impact(url: str, revision: str) -> DowngradeImpact:
    """Read-only: the store's revision, the revisions down to `revision`, and its run count."""
    current, runs = _read(url, lambda c: (revision_of(c), _count_runs(c)))
    return DowngradeImpact(redact_url(url), current, _revisions_between(current, revision), runs)


T = TypeVar("T")


def _read(url: str, read: Callable[[Connection], T]) -> T:
    """One read of an existing store (a missing SQLite file is an error, never created)."""
    engine = make_engine(parse_url(url))
    try:
        with engine.connect() as connection:
            return read(connection)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot read results store at {redact_url(url)}: {_first_line(exc)}",
            "check the URL, that the server runs, and the credentials",
        ) from None
    finally:
        engine.dispose()


def _revisions_between(current: str | None, target: str) -> tuple[str, ...]:
    """Revisions from `current` (included) down to `target` (excluded); linear history."""
    if current is None:
        return ()
    known = [rev.revision for rev in _script().walk_revisions()]  # newest first
    if target != "base" and target not in known:
        raise StoreError(
            f"{target!r} is not a revision of this orchestrator",
            f"use base or one of: {', '.join(reversed(known))}",
        )
    if current not in known:
        return ()  # a newer orchestrator's revision: alembic itself refuses the step
    below = known[known.index(current) :]
    if target == "base":
        return tuple(below)
    if target not in below:
        return ()  # above the current revision: alembic refuses the step itself
    return tuple(below[: below.index(target)])


def _count_runs(connection: Connection) -> int:
    if not inspect(connection).has_table("runs"):
        return 0
    return int(connection.execute(text("SELECT count(*) FROM runs")).scalar_one())


def current_revision(url: str) -> str | None:
    return _read(url, revision_of)
