"""Start-up matches the work: `--help`, `submit --dry-run` and parsing a cluster file load
neither SQLAlchemy nor the store (nor, for a cluster file, the image machinery). Each case
runs in a fresh interpreter, as the command does, and reports what it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs the real CLI entry point in-process, then prints what it loaded as one JSON line.
PROBE = """
import json, sys
from orchestrator.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

CLUSTER_WITH_IMAGE = """\
[cluster]
name = "lab"
vendor = "cpu"
runtime = "docker"

[[nodes]]
name = "n1"
address = "10.0.0.1"

[image]
build_host = "n1"
distribution = "star"
"""

HEAVY = ("sqlalchemy", "alembic", "orchestrator.store")
# The variables the child keeps from this process's environment.
FRESH_SHELL = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TERM")


def _run(code: str, args: list[str], cwd: Path) -> tuple[dict[str, object], str]:
    """What the code printed last (JSON), and everything else it wrote (stdout, stderr)."""
    # A fresh shell's environment: no ORCHESTRATOR_* settings and nothing a test harness set
    # for its own process (mutmut's MUTANT_UNDER_TEST would have the child look for mutmut's
    # settings in tmp_path).
    env = {k: v for k, v in os.environ.items() if k in FRESH_SHELL}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    *printed, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join([*printed, proc.stderr])


def _heavy(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_help_loads_no_store(tmp_path: Path) -> None:
    result, printed = _run(PROBE, ["--help"], tmp_path)
    assert result["code"] == 0
    assert "submit" in printed and "Benchmark AI accelerators" in printed
    assert _heavy(result["modules"]) == []


def test_submit_dry_run_with_an_image_table_loads_no_store(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text(CLUSTER_WITH_IMAGE)
    result, printed = _run(PROBE, ["--cluster", "lab.toml", "submit", "1x1", "--dry-run"], tmp_path)
    assert result["code"] == 0
    assert "dry run: nothing was started or stored" in printed
    assert "docker" in printed  # the docker runtime's plan, with the image's tag
    assert _heavy(result["modules"]) == []
    assert not (tmp_path / "orchestrator.db").exists()


def test_parsing_a_cluster_file_loads_no_image_code(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text(CLUSTER_WITH_IMAGE)
    code = """
import json, sys
from orchestrator.config import load_cluster
spec = load_cluster("lab.toml")
print(json.dumps({"image": [spec.image.build_host, spec.image.distribution],
                  "type": type(spec.image).__module__, "modules": sorted(sys.modules)}))
"""
    result, _ = _run(code, [], tmp_path)
    assert result["image"] == ["n1", "star"]
    assert result["type"] == "orchestrator.image_settings"
    modules = result["modules"]
    assert isinstance(modules, list)
    assert [
        m for m in modules if m.startswith(("orchestrator.images", "orchestrator.transport"))
    ] == []
    assert _heavy(modules) == []


def test_commands_that_open_a_current_store_do_not_load_alembic(tmp_path: Path) -> None:
    """Every command that reads or writes results checks the store's revision; that check
    reads alembic_version and the migration files' names, so only `db` commands that migrate
    load Alembic (a tenth of a second of every submit's start-up before)."""
    from orchestrator.store import upgrade_store

    db = tmp_path / "results.db"
    upgrade_store(f"sqlite:///{db}")
    result, printed = _run(PROBE, ["--db", f"sqlite:///{db}", "runs", "list"], tmp_path)
    assert result["code"] == 0, printed
    assert "no runs" in printed.lower()
    modules = result["modules"]
    assert isinstance(modules, list)
    assert "orchestrator.store" in modules  # the store was opened ...
    assert [m for m in modules if m == "alembic" or m.startswith("alembic.")] == []  # ... lightly
