"""An SMI output the parser does not understand: the sampler keeps it raw (bounded) in
monitor.jsonl, and a run whose mem then falls back to the allocator says why (runs.warnings)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from orchestrator import monitor
from orchestrator.nodeside import monitor_probe
from orchestrator.store.models import Run
from tests.support.store_fixtures import RUN_1X1

TOOL_OUTPUT = Path(__file__).resolve().parents[1] / "fixtures" / "monitors"  # README.md there
# A table layout in place of mx-smi's GPU#N sections: nothing the parser reads.
UNRECOGNISED = (TOOL_OUTPUT / "mx-smi-show-memory-table.txt").read_text()
KNOWN = (TOOL_OUTPUT / "mx-smi-show-memory.txt").read_text()


def _tool(tmp_path: Path, name: str, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _sample(tmp_path: Path, bin_dir: Path, seconds: float = 0.9) -> list[dict[str, Any]]:
    """The real sampler for mx-smi, its loop at 0.2 s, for `seconds`."""
    out = tmp_path / "run" / monitor.MONITOR_FILE
    out.parent.mkdir(exist_ok=True)
    argv = monitor.sampler_argv(sys.executable, ["mx-smi"], str(out), 0.2)
    proc = subprocess.Popen(argv, env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    try:
        time.sleep(seconds)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_tool_rows_says_why_an_output_gave_no_reading(tmp_path: Path) -> None:
    unrecognised = tmp_path / "table.txt"
    unrecognised.write_text(UNRECOGNISED)
    known = tmp_path / "known.txt"
    known.write_text(KNOWN)
    rows = monitor_probe.tool_rows
    assert rows(["cat", str(unrecognised)], None, 5, "mx-smi-memory") == (
        None,
        UNRECOGNISED,
        "unparsed",
    )
    samples, raw, why = rows(["cat", str(known)], None, 5, "mx-smi-memory")
    assert len(samples or []) == 6 and (raw, why) == (None, None)
    assert rows(["cat", str(known)], None, 5, "csv") == (None, KNOWN, "no parser")
    assert rows(["sh", "-c", "echo no device; exit 3"], None, 5, "mx-smi-memory") == (
        None,
        "no device\n",
        "failed",
    )
    big = tmp_path / "big.txt"
    big.write_text("x" * (monitor_probe.RAW_MAX_CHARS + 500))
    _, raw, why = rows(["cat", str(big)], None, 5, "mx-smi-memory")
    assert why == "unparsed" and len(raw or "") == monitor_probe.RAW_MAX_CHARS  # bounded


def test_sampler_keeps_an_unrecognised_mx_smi_output_raw_once(tmp_path: Path) -> None:
    bin_dir = _tool(tmp_path, "mx-smi", f"cat <<'EOF'\n{UNRECOGNISED}EOF")
    docs = _sample(tmp_path, bin_dir)
    raw = [d for d in docs if d["metric"] == monitor.RAW_OUTPUT]
    assert len(raw) == 1  # once, though the tool was called every 0.2 s
    assert raw[0]["reason"] == "unparsed" and raw[0]["tool"] == "mx-smi"
    assert raw[0]["text"] == UNRECOGNISED
    assert not [d for d in docs if d["metric"].startswith("device_")]
    kept = monitor.raw_output((tmp_path / "run" / monitor.MONITOR_FILE).read_text())
    assert kept == monitor.RawOutput("mx-smi", "unparsed", UNRECOGNISED)


def test_a_run_whose_smi_output_was_not_understood_warns_that_mem_is_the_allocators(
    sqlite_store: Any, sqlite_url: str, run_copy: Any, run_cli: Any, tmp_path: Path
) -> None:
    # The monitor.jsonl the real sampler wrote from the recorded output, in a run folder.
    bin_dir = _tool(tmp_path, "mx-smi", f"cat <<'EOF'\n{UNRECOGNISED}EOF")
    _sample(tmp_path, bin_dir, 0.5)
    folder = run_copy(RUN_1X1)
    node = json.loads((folder / "manifest.json").read_text())["nodes"][0]["name"]
    (folder / "nodes" / node).mkdir(parents=True, exist_ok=True)
    (folder / "nodes" / node / monitor.MONITOR_FILE).write_text(
        (tmp_path / "run" / monitor.MONITOR_FILE).read_text()
    )
    sqlite_store.ingest([folder])
    with sqlite_store.reading() as conn:
        mem_source, warnings = conn.execute(
            select(Run.mem_source, Run.warnings).where(Run.run_id == RUN_1X1)
        ).one()
    expected = (
        f"mem is the allocator's peak, not the device's: mx-smi's output on node {node} was not "
        f"understood (kept raw in nodes/{node}/monitor.jsonl, metric monitor_raw; "
        "docs/monitors.md)"
    )
    assert (mem_source, warnings) == ("allocator", [expected])
    shown = run_cli("--db", sqlite_url, "runs", "show", RUN_1X1)
    assert shown.exit_code == 0, shown.err
    assert "was not understood" in shown.out.replace("\n", " ").replace("│", " ")
    report = run_cli("--db", sqlite_url, "report", "--run", RUN_1X1)
    assert report.exit_code == 0, report.err
    assert f"- {RUN_1X1}: {expected}" in report.out


def test_a_device_figure_or_a_tool_without_parser_gives_no_mem_warning() -> None:
    raw = {
        "n1": monitor.RawOutput("xpu-smi", "no parser", "..."),
        "n2": monitor.RawOutput("mx-smi", "unparsed", "..."),
    }
    assert monitor.smi_warnings(raw, "device") == []  # mem came from another node's samples
    assert [w.split(" on node ")[1][:2] for w in monitor.smi_warnings(raw, "allocator")] == ["n2"]
    failed = monitor.smi_warnings({"n1": monitor.RawOutput("mx-smi", "failed", "")}, "allocator")
    assert failed and "on node n1 failed" in failed[0]
