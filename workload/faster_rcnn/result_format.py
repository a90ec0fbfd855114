"""The per-rank result file: one JSON document per rank, schema `orchestrator.rank-result` v2.

This module is the single definition of the format; it reads versions 1 and 2 and writes 2. The
workload writes it; the control plane (`orchestrator ingest`) validates it with `validate()` from
this same module. It must stay pure Python 3.8 with no third-party imports: it runs inside vendor
images and on the laptop alike.
Documented with an example in docs/rank-result.md.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Tuple

SCHEMA_NAME = "orchestrator.rank-result"
SCHEMA_VERSION = 2  # what the workload writes
# Version 2 added timings.import_s and the epochs' data_s, complete and skipped_steps, and moved
# the DataLoader's start-up inside train_no_eval_s (and the first iteration's data_s).
READABLE_VERSIONS = (1, 2)
FILE_PATTERN = "rank-{rank:05d}.json"
PRECISIONS = ("fp32", "amp", "fp16")
STATUSES = ("ok", "failed")

# field -> (types, required). Types: "int", "float" (int accepted), "str", "bool", "dict", "list",
# with "?" suffix meaning null is allowed.
_SECTIONS: Dict[str, Dict[str, str]] = {
    "identity": {
        "rank": "int",
        "local_rank": "int",
        "node_rank": "int",
        "world_size": "int",
        "local_world_size": "int",
        "nnodes": "int",
        "host": "str",
        "pid": "int",
    },
    "config": {
        "case": "str",
        "config_name": "str?",
        "precision": "str",
        "batch_size": "int",
        "lr": "float",
        "epochs": "int",
        "max_iters": "int?",
        "target_map": "float?",
        "eval": "bool",
        "eval_max_images": "int?",
        "workers": "int",
        "seed": "int",
        "backend": "str",
        "device": "str",
        "hparams": "dict",
    },
    "software": {
        "python": "str",
        "torch": "str",
        "torchvision": "str",
        "pycocotools": "str?",
    },
    "device": {
        "type": "str",
        "name": "str",
        "count": "int",
        "total_mem_bytes": "int?",
    },
    "timings": {
        "start_unix": "float",
        "end_unix": "float",
        "e2e_s": "float",
        "init_s": "float",
        "train_s": "float",
        "train_no_eval_s": "float",
        "core_s": "float",
        "eval_s": "float",
    },
    "samples": {
        "rank_images": "int",
        "global_images": "int",
        "rank_iterations": "int",
        "epochs_completed": "int",
    },
    "throughput": {
        "p_whole": "float?",
        "p_train": "float?",
        "p_core": "float?",
    },
    "memory": {
        "peak_allocated_bytes": "int?",
        "peak_reserved_bytes": "int?",
        "total_bytes": "int?",
    },
}
_EVAL_FIELDS = {"map": "float?", "map50": "float?", "map75": "float?", "images": "int"}
_EPOCH_FIELDS = {
    "epoch": "int",
    "iterations": "int",
    "images": "int",
    "loss": "float?",
    "lr": "float",
    "train_s": "float",
    "core_s": "float",
    "eval_s": "float?",
    "map": "float?",
}
_ERROR_FIELDS = {"type": "str", "message": "str", "traceback": "str?"}
# Fields a version-2 document must also have.
_V2_SECTIONS: Dict[str, Dict[str, str]] = {"timings": {"import_s": "float"}}
_V2_EPOCH_FIELDS = {"data_s": "float", "complete": "bool", "skipped_steps": "int"}


def _fields_of(version: int) -> Tuple[Dict[str, Dict[str, str]], Dict[str, str]]:
    """The section fields and the epoch fields a document of `version` must have."""
    if version < 2:
        return _SECTIONS, _EPOCH_FIELDS
    sections = {
        name: dict(fields, **_V2_SECTIONS.get(name, {})) for name, fields in _SECTIONS.items()
    }
    return sections, dict(_EPOCH_FIELDS, **_V2_EPOCH_FIELDS)


class ResultFormatError(ValueError):
    """A rank result document does not match the schema; `field` is a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_type(path: str, value: Any, kind: str) -> None:
    nullable = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if nullable:
            return
        raise ResultFormatError(path, f"is missing or null, expected {base}")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "dict": isinstance(value, dict),
        "list": isinstance(value, list),
    }[base]
    if not ok:
        raise ResultFormatError(path, f"expected {base}, got {type(value).__name__}")
    if base == "float" and not math.isfinite(float(value)):
        raise ResultFormatError(path, "must be a finite number")


# What `_check_fields` is given for an object field the document does not have at all.
_ABSENT = object()


def _check_fields(prefix: str, obj: Any, fields: Dict[str, str]) -> None:
    if obj is _ABSENT:
        raise ResultFormatError(prefix, "is missing")
    if not isinstance(obj, dict):
        raise ResultFormatError(prefix, "expected an object")
    for name, kind in fields.items():
        path = f"{prefix}.{name}"
        if name not in obj and not kind.endswith("?"):
            raise ResultFormatError(path, "is missing")
        _check_type(path, obj.get(name), kind)


def validate(doc: Any) -> Dict[str, Any]:
    """Check `doc` against its schema version and return it; raise ResultFormatError naming the
    field."""
    if not isinstance(doc, dict):
        raise ResultFormatError("$", "expected a JSON object")
    if doc.get("schema") != SCHEMA_NAME:
        raise ResultFormatError("schema", f"expected {SCHEMA_NAME!r}")
    version = doc.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ResultFormatError(
            "schema_version",
            "unsupported version {!r}, this reader knows {}".format(
                version, ", ".join(str(v) for v in READABLE_VERSIONS)
            ),
        )
    sections, epoch_fields = _fields_of(int(version))
    _check_type("run_id", doc.get("run_id"), "str")
    status = doc.get("status")
    if status not in STATUSES:
        raise ResultFormatError("status", "expected one of {}".format(", ".join(STATUSES)))
    for section, fields in sections.items():
        _check_fields(section, doc.get(section, _ABSENT), fields)
    if doc["config"]["precision"] not in PRECISIONS:
        raise ResultFormatError(
            "config.precision", "expected one of {}".format(", ".join(PRECISIONS))
        )
    ident = doc["identity"]
    if not 0 <= ident["rank"] < ident["world_size"]:
        raise ResultFormatError("identity.rank", "must be in [0, world_size)")
    if not 0 <= ident["node_rank"] < ident["nnodes"]:
        raise ResultFormatError("identity.node_rank", "must be in [0, nnodes)")
    for name in ("p_whole", "p_train", "p_core"):
        value = doc["throughput"].get(name)
        if value is not None and value < 0:
            raise ResultFormatError("throughput." + name, "must not be negative")
    if doc.get("eval") is not None:
        _check_fields("eval", doc["eval"], _EVAL_FIELDS)
    epochs = doc.get("epochs")
    _check_type("epochs", epochs, "list")
    assert isinstance(epochs, list)
    for i, epoch in enumerate(epochs):
        _check_fields(f"epochs[{i}]", epoch, epoch_fields)
    _check_type("converged", doc.get("converged"), "bool")
    if status == "failed":
        _check_fields("error", doc.get("error", _ABSENT), _ERROR_FIELDS)
    elif doc.get("error") is not None:
        raise ResultFormatError("error", "must be null when status is 'ok'")
    return doc


def load(path: str) -> Dict[str, Any]:
    """Read and validate one rank file; errors name the file and the field."""
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
        except ValueError as exc:
            raise ResultFormatError("$", f"not valid JSON ({exc})") from None
    return validate(doc)


def dump(doc: Dict[str, Any], path: str) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    import os

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)


def empty_sections() -> Tuple[List[str], Dict[str, Dict[str, str]]]:
    """The section names and field kinds of the version written, for writers that build a
    document field by field."""
    sections, _ = _fields_of(SCHEMA_VERSION)
    return list(sections), {k: dict(v) for k, v in sections.items()}


def file_name(rank: int) -> str:
    return FILE_PATTERN.format(rank=rank)


def progress_line(**fields: Any) -> str:
    """One progress event for stdout: `{"event": "progress", ...}` as a single JSON line.

    "event" is the first key (the rest sorted): readers spot event lines by that prefix."""
    fields.pop("event", None)
    event = dict([("event", "progress")] + sorted(fields.items()))
    return json.dumps(event)


__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "READABLE_VERSIONS",
    "PRECISIONS",
    "ResultFormatError",
    "validate",
    "load",
    "dump",
    "file_name",
    "progress_line",
    "empty_sections",
]
