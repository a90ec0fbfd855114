"""One build step beyond pyproject.toml: the wheel carries images/ and migrations/.

Both folders stay at the repository root (they are data, not modules). This build_py copies them
into the wheel as package data, orchestrator/_data/images/ and orchestrator/_data/migrations/,
where orchestrator.resources finds them once installed. An editable install copies nothing:
there orchestrator.resources finds them at the root of the checkout. MANIFEST.in puts them in the
sdist, so a wheel built from the sdist (python -m build) carries them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_FOLDERS = ("images", "migrations")
PACKAGED_DATA = Path("orchestrator", "_data")  # keep in step with orchestrator/resources.py


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in DATA_FOLDERS:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(f"{source} is missing: build from a full checkout")
            target = Path(self.build_lib) / PACKAGED_DATA / name
            shutil.rmtree(target, ignore_errors=True)  # no stale file of an earlier build
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})
