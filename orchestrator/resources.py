"""Where the data folders that ship with the code are: images/ (vendor profiles, Dockerfile
templates) and migrations/ (Alembic).

Both stay at the repository root in the source tree. A built wheel carries copies of them as
package data in orchestrator/_data/ (setup.py puts them there), so an installed orchestrator
(`pip install .`, `pipx install .`) finds them inside the package; a source checkout (editable
install, or PYTHONPATH pointing at the checkout) has no orchestrator/_data/ and finds them at the
root, beside orchestrator/.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_DATA = PACKAGE_DIR / "_data"  # only in an installed wheel
SOURCE_ROOT = PACKAGE_DIR.parent  # the checkout, when running from source
IMAGES_DIR_ENV = "ORCHESTRATOR_IMAGES_DIR"


def data_dir(name: str) -> Path:
    """orchestrator/_data/NAME of an installed wheel, else NAME at the checkout's root."""
    packaged = PACKAGED_DATA / name
    if packaged.is_dir():
        return packaged
    return SOURCE_ROOT / name


def migrations_dir() -> Path:
    """The Alembic scripts folder (env.py, versions/)."""
    return data_dir("migrations")


def images_dir() -> Path:
    """The vendor profiles folder (images/<vendor>/profile.toml), or $ORCHESTRATOR_IMAGES_DIR."""
    override = os.environ.get(IMAGES_DIR_ENV)
    if override:
        return Path(override)
    return data_dir("images")
