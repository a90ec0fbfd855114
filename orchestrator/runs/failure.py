"""How a run failed, in one record: the reason a person reads (which rank on which node, and
why), the exit code, and the tail of the log. Every backend diagnoses torchrun's output the
same way."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Failure:
    reason: str
    node: str | None = None
    rank: int | None = None
    exit_code: int | None = None
    log_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def by_signal(self) -> bool:
        """A rank killed by a signal ("killed by signal 9", torchrun's "Signal 9 (SIGKILL)
        received"): the cause of its peers' failures, not one of them."""
        return "signal" in self.reason.lower()


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)
_TRACEBACK = re.compile(r"traceback\s*:\s*(.+)")
# The workload's own one-line account of a failed rank (workload/faster_rcnn/runner.py).
_RANK_FAILED = re.compile(r"^\[faster_rcnn\] rank (\d+) failed: (.+)$")


def _traceback_cause(lines: list[str]) -> str:
    """The exception line that ends the first traceback after torchrun's root cause."""
    last = ""
    for line in lines:
        text = line.strip()
        if not text or text.startswith("===") or text.startswith("---"):
            if last:
                break
            continue
        last = text
    return last


def diagnose(node: str, exit_code: int | None, tail: list[str]) -> Failure:
    """Name the rank and cause: the workload's own message for the rank when it printed one,
    else the end of the traceback in torchrun's failure summary, else the last error line."""
    text = "\n".join(tail)
    rank = None
    cause = ""
    own = {int(m.group(1)): m.group(2).strip() for m in map(_RANK_FAILED.match, tail) if m}
    match = _ROOT_CAUSE.search(text)
    if match:
        rank = int(match.group(1))
        code = int(match.group(2))
        rest = text[match.end() :]
        tb = _TRACEBACK.search(rest)
        if rank in own:
            cause = own[rank]
        elif tb and tb.group(1).startswith("Traceback"):
            cause = _traceback_cause(rest[tb.end() :].splitlines())
        elif tb and not tb.group(1).startswith("To enable traceback"):
            cause = tb.group(1).strip()
        if code < 0 and not cause:
            cause = f"killed by signal {-code}"
    elif own:
        rank, cause = min(own.items())
    if not cause:
        errors = [ln for ln in tail if "Error" in ln or "error" in ln]
        cause = errors[-1].strip() if errors else ""
    who = f"rank {rank} on node {node}" if rank is not None else f"node {node}"
    reason = f"{who} failed (torchrun exit {exit_code})" + (f": {cause}" if cause else "")
    return Failure(
        reason=reason[:500], node=node, rank=rank, exit_code=exit_code, log_tail=text[-4000:]
    )
