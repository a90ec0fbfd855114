"""The results store: one object the CLI and the execution layer hold for the store's lifetime."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from orchestrator import states
from orchestrator.clock import utcnow
from orchestrator.errors import IngestError, OrchestratorError, StoreError
from orchestrator.runfolder.folder import RunFolder, RunManifest, read_run_folder
from orchestrator.states import RunStatus
from orchestrator.store import ingest, rows, summaries
from orchestrator.store import status as run_status
from orchestrator.store.engine import READ_ONLY_OPTION, make_engine, parse_url, redact_url
from orchestrator.store.ingest import PUBLISH, RunSummary, WritePolicy
from orchestrator.store.migrate import check_revision, upgrade_store
from orchestrator.store.models import Image, ImageWheel, Run, RunNode


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


class Store:
    """Reads and writes the results database; every write is one transaction."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url  # redacted: safe to print

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction; database errors become StoreError with the URL redacted."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(
                f"results store at {self.url} refused the write: {_first_line(exc)}",
                "nothing was written; check the server and retry",
            ) from None

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(**{READ_ONLY_OPTION: True})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot read results store at {self.url}: {_first_line(exc)}",
                "check the server and retry",
            ) from None

    # -- the execution layer's calls ---------------------------------------------------------

    def create_run(self, manifest: RunManifest, status: RunStatus = "running") -> None:
        """The provisional row of a run being submitted, its nodes and first history entry."""
        now = utcnow()
        row = rows.run_row(manifest, now)
        row["status"] = _check_status(status)
        with self.transaction() as conn:
            if conn.scalar(select(Run.run_id).where(Run.run_id == manifest.run_id)) is not None:
                raise StoreError(
                    f"run {manifest.run_id} is already in results store at {self.url}",
                    "use a new run id",
                )
            run_status.insert_run(conn, row, None, now)
            conn.execute(
                insert(RunNode),
                [rows.node_row(manifest.run_id, n, None, None) for n in manifest.nodes],
            )

    def start_queued_run(self, manifest: RunManifest) -> None:
        """A queued run a worker has claimed (status already `running`, its leases held):
        the row gets what the plan decided (nodes, image, command) and its run_nodes."""
        values = rows.run_row(manifest, utcnow())
        for kept in (
            "run_id",
            "status",
            "submitted_at",
            "started_at",
            "created_at",
            "reason",
            "failure",
        ):
            values.pop(kept)
        with self.transaction() as conn:
            scopes = summaries.scopes_of(conn, [manifest.run_id])
            done = conn.execute(
                update(Run)
                .where(Run.run_id == manifest.run_id, Run.status == "running")
                .values(values)
            )
            # the plan may name the hardware: the run may count in another summary now
            summaries.refresh(conn, scopes | summaries.scopes_of(conn, [manifest.run_id]))
            if done.rowcount == 0:
                raise StoreError(
                    f"run {manifest.run_id} is no longer running in results store at {self.url}",
                    "it was cancelled or reconciled meanwhile; nothing was started",
                )
            conn.execute(delete(RunNode).where(RunNode.run_id == manifest.run_id))
            conn.execute(
                insert(RunNode),
                [rows.node_row(manifest.run_id, n, None, None) for n in manifest.nodes],
            )

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        reason: str | None = None,
        failure: dict[str, Any] | None = None,
    ) -> None:
        """Move a run to `status`; final statuses also stamp finished_at. Always adds history."""
        status = _check_status(status)
        reason = reason or (str(failure["reason"]) if failure and failure.get("reason") else None)
        with self.transaction() as conn:
            if not run_status.move(conn, run_id, status, reason=reason, failure=failure):
                raise StoreError(
                    f"no run {run_id} in results store at {self.url}", "check the run id"
                )

    def record_environment(
        self, run_id: str, node_name: str, node_rank: int, env: dict[str, Any]
    ) -> None:
        """Store the environment captured on one node of a run (replaces an earlier capture)."""
        values = {
            "node_name": node_name,
            "env": env,
            "captured_at": utcnow(),
            **rows.env_columns(env),
        }
        with self.transaction() as conn:
            done = conn.execute(
                update(RunNode)
                .where(RunNode.run_id == run_id, RunNode.node_rank == node_rank)
                .values(values)
            )
            if done.rowcount == 0:
                try:
                    conn.execute(
                        insert(RunNode), [{"run_id": run_id, "node_rank": node_rank, **values}]
                    )
                except IntegrityError:
                    raise StoreError(
                        f"no run {run_id} in results store at {self.url}", "create the run first"
                    ) from None
            if conn.scalar(select(Run.status).where(Run.run_id == run_id)) == "succeeded":
                # a late capture: its configuration's environment block changes
                summaries.refresh(conn, summaries.scopes_of(conn, [run_id]))

    def record_image(self, image: dict[str, Any]) -> None:
        """An image and its wheels, idempotent by image_id (a new tag for it replaces the old)."""
        try:
            image_id = str(image["image_id"])
            row = {
                "image_id": image_id,
                "tag": str(image["tag"]),
                "base": image.get("base"),
                "size_bytes": image.get("size_bytes"),
                "build_seconds": image.get("build_seconds"),
                "build_log_path": image.get("build_log_path"),
                "created_at": image.get("created_at"),
                "recorded_at": utcnow(),
            }
            wheels = [
                {"image_id": image_id, "filename": str(w["filename"]), "sha256": str(w["sha256"])}
                for w in image.get("wheels") or []
            ]
        except KeyError as exc:
            raise StoreError(f"image record lacks {exc}", "pass image_id and tag") from None
        with self.transaction() as conn:
            known = conn.scalar(select(Image.image_id).where(Image.image_id == image_id))
            if known is None:
                conn.execute(insert(Image), [row])
            else:
                del row["recorded_at"]
                conn.execute(update(Image).where(Image.image_id == image_id).values(row))
                conn.execute(delete(ImageWheel).where(ImageWheel.image_id == image_id))
            if wheels:
                conn.execute(insert(ImageWheel), wheels)

    def publish(self, run_dir: str | os.PathLike[str]) -> RunSummary:
        """Ingest one run folder (all or nothing); the final row replaces the provisional one."""
        return self.ingest([run_dir])[0]

    # -- ingest --------------------------------------------------------------------------------

    def ingest(
        self,
        run_dirs: Sequence[str | os.PathLike[str]],
        policy: WritePolicy = PUBLISH,
    ) -> list[RunSummary]:
        """Read and check every folder, then write them all in one transaction."""
        folders = [read_run_folder(Path(d)) for d in run_dirs]
        return self.write_folders(folders, policy)

    def ingest_each(
        self, run_dirs: Sequence[str | os.PathLike[str]], policy: WritePolicy
    ) -> list[RunSummary | OrchestratorError]:
        """Each folder on its own, in its own transaction: every good one is stored, each bad
        one gives its error (moving a history must not stop at the first bad folder)."""
        results: list[RunSummary | OrchestratorError] = []
        for run_dir in run_dirs:
            try:
                results.append(self.ingest([run_dir], policy)[0])
            except (IngestError, StoreError) as exc:
                results.append(exc)
        return results

    def write_folders(
        self, folders: Sequence[RunFolder], policy: WritePolicy = PUBLISH
    ) -> list[RunSummary]:
        """The bulk path: already-read folders, checked, then written in one transaction."""
        prepared = ingest.prepare(folders)
        with self.transaction() as conn:
            return ingest.write(conn, prepared, policy=policy)


def _check_status(status: str) -> RunStatus:
    try:
        return states.run_status(status)
    except ValueError:
        raise StoreError(
            f"unknown run status {status!r}", f"use one of {', '.join(states.RUN_STATUSES)}"
        ) from None


def open_store(url: str, create: bool = False) -> Store:
    """Connect and check the schema revision; `create=True` upgrades it first (embedded default)."""
    parsed = parse_url(url)
    shown = redact_url(url)
    if create:
        upgrade_store(url)
    engine = make_engine(parsed)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY_OPTION: True})
            check_revision(conn, url)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(
            f"cannot open results store at {shown}: {_first_line(exc)}",
            "check the URL, that the server runs, and the credentials",
        ) from None
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, shown)
