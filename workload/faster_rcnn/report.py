"""The rank file: built section by section as the run goes, so that a failure at any point still
writes a complete, valid document with status "failed" and the error. No torch import here."""

from __future__ import annotations

import os
import platform
import socket
import time
import traceback
from typing import Any, Dict, List, Optional

from . import result_format
from .errors import WorkloadError

CASE = "faster_rcnn"


def package_version(name: str) -> Optional[str]:
    """Installed version without importing the package (works if its import is what failed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def software() -> Dict[str, Any]:
    import sys

    def loaded(name: str) -> Optional[str]:
        module = sys.modules.get(name)
        return getattr(module, "__version__", None) if module is not None else None

    return {
        "python": platform.python_version(),
        "torch": str(loaded("torch") or package_version("torch") or "unknown"),
        "torchvision": str(loaded("torchvision") or package_version("torchvision") or "unknown"),
        "pycocotools": package_version("pycocotools"),
    }


def error_record(exc: BaseException) -> Dict[str, Any]:
    """{type, message, traceback}. A DataLoader worker's error arrives wrapped, with the worker's
    traceback in its text; the message is then its last line."""
    if isinstance(exc, WorkloadError):
        message = exc.one_line()
        if message.startswith("Caught ") and "Traceback" in message:
            message = exc.message.strip().splitlines()[-1]
            message = message.split(": ", 1)[-1] if ": " in message else message
    else:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return {
        "type": type(exc).__name__,
        "message": " ".join(message.split()) or type(exc).__name__,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


class RankReport:
    """What is known about this rank so far; `document()` turns it into a schema-v1 file."""

    def __init__(self, run_id: str, started_unix: float, started_perf: float) -> None:
        self.run_id = run_id
        self.started_unix = started_unix
        self.started_perf = started_perf
        self.identity: Dict[str, Any] = {
            "rank": 0,
            "local_rank": 0,
            "node_rank": 0,
            "world_size": 1,
            "local_world_size": 1,
            "nnodes": 1,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.config: Dict[str, Any] = {
            "case": CASE,
            "config_name": None,
            "precision": "fp32",
            "batch_size": 0,
            "lr": 0.0,
            "epochs": 0,
            "max_iters": None,
            "target_map": None,
            "eval": False,
            "eval_max_images": None,
            "workers": 0,
            "seed": 0,
            "backend": "none",
            "device": "unknown",
            "hparams": {},
        }
        self.device: Dict[str, Any] = {
            "type": "unknown",
            "name": "unknown",
            "count": 0,
            "total_mem_bytes": None,
        }
        self.timings: Dict[str, float] = {
            "import_s": 0.0,
            "init_s": 0.0,
            "train_s": 0.0,
            "train_no_eval_s": 0.0,
            "core_s": 0.0,
            "eval_s": 0.0,
        }
        self.samples: Dict[str, int] = {
            "rank_images": 0,
            "global_images": 0,
            "rank_iterations": 0,
            "epochs_completed": 0,
        }
        self.throughput: Dict[str, Optional[float]] = {
            "p_whole": None,
            "p_train": None,
            "p_core": None,
        }
        self.memory: Dict[str, Optional[int]] = {
            "peak_allocated_bytes": None,
            "peak_reserved_bytes": None,
            "total_bytes": None,
        }
        self.eval: Optional[Dict[str, Any]] = None
        self.epochs: List[Dict[str, Any]] = []
        self.converged = False
        self.extra: Dict[str, Any] = {}  # optional top-level fields (e.g. "plan")
        self.training_started = False
        # the run's throughputs (global images / slowest rank), for the done event; not in the file
        self.run_throughput: Dict[str, Optional[float]] = {}

    def set_config(
        self, hparams: Dict[str, Any], config_name: Optional[str], env: Dict[str, str]
    ) -> None:
        self.config.update(
            {
                "config_name": config_name,
                "precision": hparams["precision"],
                "batch_size": hparams["batch_size"],
                "lr": hparams["lr"],
                "epochs": hparams["epochs"],
                "max_iters": hparams["max_iters"],
                "target_map": hparams["target_map"],
                "eval": hparams["eval"],
                "eval_max_images": hparams["eval_max_images"],
                "workers": hparams["workers"],
                "seed": hparams["seed"],
                "hparams": dict(hparams),
                "vendor_env": dict(env),
            }
        )

    def document(self, status: str, error: Optional[BaseException] = None) -> Dict[str, Any]:
        """The validated schema-v1 document; e2e time ends now."""
        e2e_s = max(0.0, time.perf_counter() - self.started_perf)
        timings = dict(self.timings)
        if not self.training_started:
            timings["init_s"] = e2e_s
        timings.update(
            {"start_unix": self.started_unix, "end_unix": self.started_unix + e2e_s, "e2e_s": e2e_s}
        )
        doc: Dict[str, Any] = {
            "schema": result_format.SCHEMA_NAME,
            "schema_version": result_format.SCHEMA_VERSION,
            "run_id": self.run_id,
            "status": status,
            "identity": dict(self.identity),
            "config": dict(self.config),
            "software": software(),
            "device": dict(self.device),
            "timings": timings,
            "samples": dict(self.samples),
            "throughput": dict(self.throughput),
            "memory": dict(self.memory),
            "eval": self.eval,
            "epochs": list(self.epochs),
            "converged": self.converged,
            "error": error_record(error) if error is not None else None,
        }
        doc.update(self.extra)
        return result_format.validate(doc)

    def write(self, output_dir: str, doc: Dict[str, Any]) -> str:
        """Write a document from `document()` as this rank's file; return its path."""
        path = os.path.join(output_dir, result_format.file_name(self.identity["rank"]))
        result_format.dump(doc, path)
        return path


def new_run_id() -> str:
    return "run-{}-{}".format(time.strftime("%Y%m%d-%H%M%S"), os.urandom(3).hex())
