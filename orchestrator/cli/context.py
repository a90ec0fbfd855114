"""What every command shares: the cluster file and the store URL, loaded on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.specs import ClusterSpec


@dataclass
class AppContext:
    cluster_file: str | None = None
    db_url: str | None = None
    _cluster: ClusterSpec | None = field(default=None, repr=False)

    @property
    def cluster(self) -> ClusterSpec:
        if self._cluster is None:
            from orchestrator.config import load_cluster

            self._cluster = load_cluster(self.cluster_file)
        return self._cluster

    @property
    def store_url(self) -> str:
        from orchestrator.config import resolve_store_url

        return resolve_store_url(self.db_url, self.cluster)

    def open_store(self) -> Any:
        """The results store, checked to be at the current schema revision."""
        from orchestrator.store import open_store

        return open_store(self.store_url)
