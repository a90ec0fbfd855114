"""scripts/check_import_cycles.py, which CI runs: the package has no import cycle and no room
imports one it must not; a planted cycle (also one hidden in a function) or a planted import of
one backend by the other is reported by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "scripts" / "check_import_cycles.py"


def _check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), str(package)], capture_output=True, text=True, check=False
    )


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / next(iter(files)).split("/")[0]


def test_the_orchestrator_package_has_no_cycle_and_no_forbidden_import() -> None:
    result = _check(REPO / "orchestrator")
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("no import cycle and no forbidden import among ")


def test_a_cycle_through_a_function_local_import_is_reported(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def late():\n    from pkg.a import thing\n",
            "pkg/c.py": "import pkg.a\n",
        },
    )
    result = _check(package)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "import cycle: pkg.a -> pkg.b -> pkg.a",
        "1 import cycle(s), 0 forbidden import(s) in pkg/; see docs/design.md",
    ]


def test_imports_against_the_layers_are_forbidden(tmp_path: Path) -> None:
    """One backend importing the other, the store importing the CLI, the lifecycle importing a
    backend, a backend importing the queue, a node-side script importing the package and a leaf
    of the core importing anything: each named; the downward imports pass."""
    package = _package(
        tmp_path,
        {
            "orchestrator/__init__.py": "",
            "orchestrator/states.py": "from orchestrator import specs\n",
            "orchestrator/specs.py": "",
            "orchestrator/backends/__init__.py": "",
            "orchestrator/backends/ssh/__init__.py": "",
            "orchestrator/backends/ssh/submit.py": (
                "from orchestrator.backends.slurm import x\nfrom orchestrator.runs import life\n"
            ),
            "orchestrator/backends/slurm/__init__.py": "",
            "orchestrator/backends/slurm/x.py": "from orchestrator.queue import worker\n",
            "orchestrator/queue/__init__.py": "",
            "orchestrator/queue/worker.py": "import orchestrator.backends\n",
            "orchestrator/runs/__init__.py": "",
            "orchestrator/runs/life.py": "from orchestrator.store import db\nimport orchestrator.specs\n",
            "orchestrator/runs/bad.py": "from orchestrator.backends.ssh import submit\n",
            "orchestrator/store/__init__.py": "",
            "orchestrator/store/db.py": "from orchestrator.cli import main\n",
            "orchestrator/cli/__init__.py": "",
            "orchestrator/cli/main.py": "from orchestrator.queue import worker\n",
            "orchestrator/nodeside/__init__.py": "",
            "orchestrator/nodeside/probe.py": "from orchestrator import specs\n",
        },
    )
    result = _check(package)
    assert result.returncode == 1
    forbidden = [line.split(" (rule: ")[0] for line in result.stdout.splitlines()[:-1]]
    assert forbidden == [
        "forbidden import: orchestrator.backends.slurm.x -> orchestrator.queue",
        "forbidden import: orchestrator.backends.slurm.x -> orchestrator.queue.worker",
        "forbidden import: orchestrator.backends.ssh.submit -> orchestrator.backends.slurm",
        "forbidden import: orchestrator.backends.ssh.submit -> orchestrator.backends.slurm.x",
        "forbidden import: orchestrator.nodeside.probe -> orchestrator.specs",
        "forbidden import: orchestrator.runs.bad -> orchestrator.backends.ssh",
        "forbidden import: orchestrator.runs.bad -> orchestrator.backends.ssh.submit",
        "forbidden import: orchestrator.states -> orchestrator.specs",
        "forbidden import: orchestrator.store.db -> orchestrator.cli",
        "forbidden import: orchestrator.store.db -> orchestrator.cli.main",
    ]
    assert "(rule: backends.ssh imports only backends, runs, store, transport, images," in (
        result.stdout
    )
    assert "(rule: core imports nothing)" in result.stdout  # states.py: a leaf of the core
    assert "(rule: nodeside imports nothing)" in result.stdout
    last = result.stdout.splitlines()[-1]
    assert last == "0 import cycle(s), 10 forbidden import(s) in orchestrator/; see docs/design.md"
