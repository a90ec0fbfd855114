"""Names that become parts of paths on the control host.

Node names and run ids are joined into local paths (`<run>/logs/<node>.log`,
`runs/<run id>`): each must be one path part of a safe alphabet, never `..` and never a `/`.
"""

from __future__ import annotations

import re

# One path part: starts with a letter or digit (so never "." or ".."), then letters, digits,
# '.', '_' and '-'. Host names, Slurm node names and rank-00000.json all fit.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SAFE_NAME_WORDS = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_safe_name(name: object) -> bool:
    """True when `name` can be used as one part of a path: no '/', no '..', no control chars."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None
