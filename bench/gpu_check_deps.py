"""Makes the control plane importable on a bare GPU machine (python3 with torch and torchvision, no
package index): installs, from the carried wheelhouse's folder for this interpreter
(WHEELHOUSE/cp312, made by scripts/make-gpu-wheelhouse.sh), the wheels whose distribution this
interpreter lacks, into TARGET (put it on PYTHONPATH), with pip's --no-index --no-deps, or by
unpacking them when this Python has no pip. Then imports what bench/gpu_check.sh needs and prints
one verdict line. Standard library only. Used by bench/gpu_check.sh (docs/gpu.md).

    python bench/gpu_check_deps.py --wheelhouse wheelhouse --target WORKDIR/site
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List, Tuple

# What bench/gpu_check.sh runs needs: the CLI and store (orchestrator imports them), the SSH
# transport's module (imported by the CLI), the node probe's pycocotools check.
MODULES = ("sqlalchemy", "alembic", "mako", "paramiko", "click", "rich", "pycocotools", "torch")


def dist_name(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (PEP 503)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()


def missing_wheels(folder: Path) -> Tuple[List[Path], List[str]]:
    """(wheels whose distribution is not installed, names of those that are)."""
    missing, present = [], []
    for wheel in sorted(folder.glob("*.whl")):
        try:
            metadata.version(dist_name(wheel))
            present.append(dist_name(wheel))
        except metadata.PackageNotFoundError:
            missing.append(wheel)
    return missing, present


def unpack(wheels: List[Path], target: Path) -> None:
    """A wheel is a zip of the site-packages tree (plus NAME.data/ for scripts and headers)."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                parts = member.split("/")
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue  # scripts, headers, data: not needed to import
                    member_to = "/".join(parts[2:])
                else:
                    member_to = member
                dest = target / member_to
                if member.endswith("/"):
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(member))


def install(wheels: List[Path], target: Path) -> str:
    target.mkdir(parents=True, exist_ok=True)
    if not wheels:
        return "nothing to install"
    if importlib.util.find_spec("pip") is None:
        unpack(wheels, target)
        return f"unpacked {len(wheels)} wheel(s) (no pip)"
    # --isolated: no pip.conf or PIP_* variables may add an index or find-links
    argv = [sys.executable, "-m", "pip", "--isolated", "install", "--quiet", "--no-index"]
    argv += ["--no-deps", "--target", str(target), *map(str, wheels)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed: {done.stderr.strip().splitlines()[-1:]}")
    return f"pip installed {len(wheels)} wheel(s) with --no-index --no-deps"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheelhouse", required=True, help="folder holding cpXY/ folders")
    parser.add_argument("--target", required=True, help="where to install (put on PYTHONPATH)")
    args = parser.parse_args()
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    folder = Path(args.wheelhouse) / tag
    target = Path(args.target).resolve()
    sys.path.insert(0, str(target))  # a previous run's installs count as present
    importlib.invalidate_caches()
    if not folder.is_dir() or not any(folder.glob("*.whl")):
        print(
            f"FAIL: deps: no wheels in {folder} for Python {sys.version.split()[0]}: "
            f"run scripts/make-gpu-wheelhouse.sh --python-version "
            f"{sys.version_info[0]}.{sys.version_info[1]} and carry {args.wheelhouse}"
        )
        return 1
    missing, present = missing_wheels(folder)
    try:
        how = install(missing, target)
    except (OSError, RuntimeError, zipfile.BadZipFile) as exc:
        print(f"FAIL: deps: installing from {folder}: {exc}")
        return 1
    importlib.invalidate_caches()
    broken = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is the finding
            broken.append(f"{module} ({type(exc).__name__}: {exc})")
    names = ", ".join(dist_name(w) for w in missing) or "none"
    if broken:
        print(f"FAIL: deps: cannot import {'; '.join(broken)} (installed from {folder}: {names})")
        return 1
    print(
        f"PASS: deps: {how} from {folder} into {target} ({names}); {len(present)} already "
        f"present; {', '.join(MODULES)} import with Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
