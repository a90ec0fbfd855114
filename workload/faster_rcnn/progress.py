"""JSON-line events on stdout for the launcher's live progress (rank 0 only); everything else
goes to stderr. One object per line, flushed, never NaN."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Dict, TextIO

from . import result_format


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Events:
    def __init__(self, enabled: bool, stream: TextIO = sys.stdout) -> None:
        self.enabled = enabled
        self.stream = stream

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        # "event" first: the launcher recognises event lines by the prefix {"event"; "at"
        # (Unix time) lets `orchestrator attach` replay the log stamped as it happened
        fields.setdefault("at", round(time.time(), 3))
        doc: Dict[str, Any] = dict([("event", event)] + sorted(_clean(fields).items()))
        self._write(json.dumps(doc))

    def progress(self, **fields: Any) -> None:
        if self.enabled:
            fields.setdefault("at", round(time.time(), 3))
            self._write(result_format.progress_line(**_clean(fields)))


def log(message: str) -> None:
    """Human-readable text: stderr, so stdout stays parseable."""
    sys.stderr.write("[faster_rcnn] " + message + "\n")
    sys.stderr.flush()
