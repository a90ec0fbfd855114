"""The workload's source files as shipped to nodes (host runtime) or into images: one list,
one content hash, so a changed file is never silently stale on a node."""

from __future__ import annotations

import hashlib
from pathlib import Path

import workload

WORKLOAD_ROOT = Path(workload.__file__).resolve().parent  # .../workload
# Node-side scripts (standard library, Python 3.8) sent beside the workload: the preflight probe,
# the monitor's sampler and Slurm's gate over the probes (orchestrator/nodeside/).
NODESIDE = Path(__file__).resolve().parent / "nodeside"
NODE_PROBE_PATH = NODESIDE / "node_probe.py"
MONITOR_PROBE_PATH = NODESIDE / "monitor_probe.py"
PROBE_CHECK_PATH = NODESIDE / "probe_check.py"
_SUFFIXES = {".py", ".json", ".toml", ".txt"}


def workload_files() -> list[tuple[str, Path]]:
    """(path relative to the PYTHONPATH root, local file), sorted, caches excluded."""
    files = []
    for path in sorted(WORKLOAD_ROOT.rglob("*")):
        if path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts:
            files.append((str(path.relative_to(WORKLOAD_ROOT.parent)), path))
    return files


def workload_hash() -> str:
    digest = hashlib.sha256()
    for rel, path in workload_files():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]
