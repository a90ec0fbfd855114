"""Typed errors. Every error a user can cause carries a remedy; the CLI prints
`error: <message> (<remedy>)` on one line and exits with `exit_code`."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error the CLI reports without a traceback."""

    exit_code = 2

    def __init__(self, message: str, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def one_line(self) -> str:
        text = self.message if not self.remedy else f"{self.message} ({self.remedy})"
        return " ".join(text.split())


class ConfigError(OrchestratorError):
    """A cluster file, campaign file or command-line option is invalid."""


class TopologyError(ConfigError):
    """A topology string such as `2x8` is malformed or does not fit the cluster."""


class StoreError(OrchestratorError):
    """The results database cannot be opened, is out of date, or refused a statement."""


class SchemaOutOfDate(StoreError):
    """The database schema is older (or newer) than this version of the tool."""


class IngestError(OrchestratorError):
    """A run folder or one of its files is invalid; nothing was written."""


class QueryError(StoreError):
    """A user SQL query failed (syntax, or a write refused by the read-only session)."""


class NodeError(OrchestratorError):
    """One or more nodes failed an operation; `failures` maps node name to reason."""

    exit_code = 3

    def __init__(
        self, message: str, failures: dict[str, str] | None = None, remedy: str | None = None
    ):
        self.failures = dict(failures or {})
        if self.failures:
            detail = "; ".join(f"{node}: {why}" for node, why in sorted(self.failures.items()))
            message = f"{message}: {detail}"
        super().__init__(message, remedy)


class HostKeyError(NodeError):
    """A node's SSH host key is unknown or changed."""


class PreflightError(NodeError):
    """A node is not ready to run the job; nothing was started."""


class ImageError(OrchestratorError):
    """An image could not be rendered, built or distributed."""


class RunFailed(OrchestratorError):
    """The run started but did not succeed; its row records why."""

    exit_code = 1


class RunCancelled(RunFailed):
    """The run was cancelled by Ctrl-C, SIGTERM or `orchestrator cancel`: `exit_code` says
    which (orchestrator/runs/stopping.py; docs/output.md, "Exit codes")."""

    exit_code = 130

    def __init__(self, message: str, remedy: str | None = None, exit_code: int = 130) -> None:
        super().__init__(message, remedy)
        self.exit_code = exit_code
