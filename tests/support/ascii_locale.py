"""A process-wide C (ASCII) character locale for one block: what a file opened without an
encoding is decoded as on a lab machine with LANG=C. The files the orchestrator reads are
UTF-8 whatever the locale."""

from __future__ import annotations

import locale
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ascii_locale() -> Iterator[None]:
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
