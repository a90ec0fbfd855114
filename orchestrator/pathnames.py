"""Names that become parts of paths on the control host, and copies that stay where they must.

Node names, run ids and the names a node lists for its files are joined into local paths
(`<run>/logs/<node>.log`, `<run>/ranks/<file>`): each must be one path part of a safe alphabet,
never `..` and never a `/`. A file is copied only when it is a regular file, opened without
following a symbolic link (a run folder holding `ranks/x -> ~/.ssh/id_ed25519` is not a way to
read the key).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

# One path part: starts with a letter or digit (so never "." or ".."), then letters, digits,
# '.', '_' and '-'. Host names, Slurm node names and rank-00000.json all fit.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SAFE_NAME_WORDS = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
# A run id names folders on the nodes and here (runs/<run id>) and Slurm jobs: the same
# alphabet, at most 64 characters (runs.run_id's width).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_safe_name(name: object) -> bool:
    """True when `name` can be used as one part of a path: no '/', no '..', no control chars."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def copy_regular(source: Path, target: Path, inside: Path | None = None) -> bool:
    """Copy `source` to `target` (atomically, with its mode) when it is a regular file that is
    not a symbolic link and, with `inside`, lies in that folder once every link above it is
    resolved. False (nothing written) otherwise."""
    if inside is not None and not source.parent.resolve().is_relative_to(inside.resolve()):
        return False
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a fifo or socket without writer
            return False
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return False
        tmp_fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(tmp_fd, "wb") as out:
                shutil.copyfileobj(handle, out)
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return True


NOT_REGULAR = "not a regular file (a symbolic link, a fifo, a device): not copied"


def left_out(name: str, why: str) -> str:
    """Why a listed entry was not copied: its name, else `why`."""
    return why if is_safe_name(name) else f"the name {name!r} is not a safe file name: not copied"
