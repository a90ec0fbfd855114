"""Reading MLLOG exports and running the `mlperf-logging` package's compliance checker on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.interchange import mllog


def records(lines: list[str]) -> list[dict[str, Any]]:
    assert all(line.startswith(":::MLLOG {") for line in lines)
    return [json.loads(line[len(mllog.PREFIX) :]) for line in lines]


def run_checker(log: Path) -> subprocess.CompletedProcess[str]:
    """The package's own command line with our rule file (its log goes next to the file)."""
    argv = [sys.executable, *mllog.checker_command(str(log))[1:]]
    argv[-1:-1] = ["--log_output", str(log.with_suffix(".checker.log"))]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=log.parent)
