"""Golden text files under tests/golden/: compared, and rewritten only with UPDATE_GOLDEN=1.

`.ci/run` fails when tests/golden/ differs from the commit after the tests, so a rewrite that
slipped into a CI run (or a test that writes without being asked) cannot pass unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def updating() -> bool:
    """True only for UPDATE_GOLDEN=1 (not for any other non-empty value such as 0)."""
    return os.environ.get("UPDATE_GOLDEN") == "1"


def check_golden(path: Path, text: str) -> None:
    """`text` equals the golden file at `path`; with UPDATE_GOLDEN=1 the file is rewritten first."""
    if updating():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"differs from {path} (UPDATE_GOLDEN=1 rewrites it)"
