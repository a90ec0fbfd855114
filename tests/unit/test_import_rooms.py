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


def test_one_backend_importing_the_other_is_forbidden(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "orchestrator/__init__.py": "",
            "orchestrator/backends/__init__.py": "",
            "orchestrator/backends/ssh/__init__.py": "",
            "orchestrator/backends/ssh/submit.py": "from orchestrator.backends.slurm import x\n",
            "orchestrator/backends/slurm/__init__.py": "",
            "orchestrator/backends/slurm/x.py": "",
            "orchestrator/store.py": "from orchestrator.cli import main\n",
            "orchestrator/cli.py": "",
        },
    )
    result = _check(package)
    assert result.returncode == 1
    forbidden = [line.split(" (rule: ")[0] for line in result.stdout.splitlines()[:-1]]
    assert forbidden == [
        "forbidden import: orchestrator.backends.ssh.submit -> orchestrator.backends.slurm",
        "forbidden import: orchestrator.backends.ssh.submit -> orchestrator.backends.slurm.x",
        "forbidden import: orchestrator.store -> orchestrator.cli",
    ]
    assert "(rule: orchestrator.backends.ssh imports none of orchestrator.backends.slurm," in (
        result.stdout
    )
    last = result.stdout.splitlines()[-1]
    assert last == "0 import cycle(s), 3 forbidden import(s) in orchestrator/; see docs/design.md"
