"""orchestrator: benchmark AI accelerators across a cluster and keep the results in SQL."""

__version__ = "0.1.0"
