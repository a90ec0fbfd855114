"""A run's metrics from its rank files: the documented definitions (docs/schema.md, "Run metrics").

Pure functions, no database. Data-parallel training is synchronous: every step waits for the
slowest rank, so a run's time is the *maximum* over ranks and its image count is the *sum* of what
every rank trained. FlagPerf divides a global count by one process's time instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import IngestError
from orchestrator.monitor import device_memory_peaks
from orchestrator.runfolder.folder import RankFile, RunFolder
from orchestrator.runfolder.imported import ImportedResult
from orchestrator.states import MemSource
from workload.faster_rcnn.hparams import HPARAMS
from workload.faster_rcnn.result_format import file_name

GIB = 1 << 30
# Names shortened in the seed's fix_hp column and shown first, in this order; the rest sorted.
_SHORT_NAMES = {"batch_size": "bs"}
_SHORT_ORDER = ("bs", "lr")
# Null in the reference, derived by the workload from other inputs and recorded as used
# (trainable_backbone_layers: 3 with backbone weights, 5 from scratch): in fix_hp only when
# set explicitly (docs/schema.md, "fix_hp").
DERIVED_DEFAULTS = ("trainable_backbone_layers",)
_FIX = "fix or remove the file; docs/schema.md explains the checks"


@dataclass(frozen=True)
class RunMetrics:
    global_images: int
    e2e_time_s: float
    p_whole: float
    p_train: float
    p_core: float
    map: float | None
    mem_used_bytes: int | None
    mem_total_bytes: int | None
    epochs_completed: int | None  # None: an imported log does not say
    converged: bool
    mem_source: MemSource | None = None
    mem_devices: tuple[dict[str, Any], ...] = ()  # each device's peak from the monitors

    @property
    def mem_label(self) -> str | None:
        return mem_label(self.mem_used_bytes, self.mem_total_bytes)


def mem_label(used: int | None, total: int | None) -> str | None:
    """'37.1/64.0': device memory used / total in GiB, as in the seed's mem column."""
    if used is None:
        return None
    return f"{used / GIB:.1f}/{total / GIB:.1f}" if total else f"{used / GIB:.1f}"


def fix_hp(given: Mapping[str, str], resolved: Mapping[str, Any] | None = None) -> str:
    """The seed's fix_hp column: 'bs=16, lr=0.08', or '/' when the run used the defaults.

    `resolved` is what the workload ran with (rank 0's config.hparams): every value that differs
    from the workload's reference defaults is listed, whether it came from --set or from a
    vendor's config set (FlagPerf's per-topology overrides), except a derived default nobody
    set (DERIVED_DEFAULTS). Without it (a run that wrote no
    rank file), the --set values as given. Precision has its own column.
    """
    if resolved is not None:
        shown = {
            name: _show(value)
            for name, value in resolved.items()
            if name in HPARAMS
            and name != "precision"
            and value != HPARAMS[name][1]
            and (name not in DERIVED_DEFAULTS or name in given)
        }
    else:
        shown = {name: str(value) for name, value in given.items() if name != "precision"}
    if not shown:
        return "/"
    short = {_SHORT_NAMES.get(name, name): value for name, value in shown.items()}
    first = [name for name in _SHORT_ORDER if name in short]
    rest = sorted(name for name in short if name not in _SHORT_ORDER)
    return ", ".join(f"{name}={short[name]}" for name in first + rest)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def config_label(vendor: str, hardware_label: str | None, topology: str) -> str:
    return f"{hardware_label or vendor} {topology}"


def _fail(rank: RankFile, field: str, problem: str) -> IngestError:
    return IngestError(f"{rank.path}: field {field}: {problem}", _FIX)


def _slowest(ranks: Sequence[RankFile], field: str) -> float:
    rank = max(ranks, key=lambda r: r.doc["timings"][field])
    value = float(rank.doc["timings"][field])
    if value <= 0:
        raise _fail(
            rank, f"timings.{field}", "is 0 on every rank; a succeeded run must have trained"
        )
    return value


def check_complete(folder: RunFolder) -> None:
    """A succeeded run has every rank's file, and every rank says ok."""
    present = {r.rank for r in folder.ranks}
    world = folder.manifest.world_size
    missing = [r for r in range(world) if r not in present]
    if missing:
        shown = ", ".join(file_name(r) for r in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise IngestError(
            f"{folder.path}: ranks/{shown} missing: the manifest says status succeeded, which needs "
            f"all {world} rank files",
            "collect the missing files, or set the manifest's status to failed with a reason",
        )
    for rank in folder.ranks:
        if rank.doc["status"] != "ok":
            raise _fail(rank, "status", "is 'failed' but the manifest says the run succeeded")


def aggregate(folder: RunFolder) -> RunMetrics | None:
    """The run's metrics, or None unless it succeeded (failed runs keep their rank rows only).
    mem is the accelerator tool's device peak during training when the monitors have one, else
    the ranks' allocator peak; mem_source says which."""
    if folder.manifest.status != "succeeded":
        return None
    if folder.manifest.imported is not None:
        return imported_metrics(folder.manifest.imported)
    metrics = _from_ranks(folder)
    start, end = training_window(folder.ranks)
    used = {n.name: n.devices for n in folder.manifest.nodes if n.devices is not None}
    peaks = device_memory_peaks(folder.monitors, start, end, folder.manifest.nproc_per_node, used)
    if peaks:
        top = max(peaks, key=lambda p: p.used_bytes)
        return dataclasses.replace(
            metrics,
            mem_used_bytes=top.used_bytes,
            mem_total_bytes=top.total_bytes,
            mem_source="device",
            mem_devices=tuple(p.as_dict() for p in peaks),
        )
    if metrics.mem_used_bytes is not None:
        return dataclasses.replace(metrics, mem_source="allocator")
    return metrics


def training_window(ranks: Sequence[RankFile]) -> tuple[float, float]:
    """Unix times from the first rank's training start to the last rank's training end."""
    starts = [r.doc["timings"]["start_unix"] + r.doc["timings"]["init_s"] for r in ranks]
    ends = [s + r.doc["timings"]["train_s"] for s, r in zip(starts, ranks)]
    return (min(starts), max(ends)) if ranks else (0.0, 0.0)


def imported_metrics(imported: ImportedResult) -> RunMetrics:
    """An imported log's numbers, by the rules for ranks: e2e the longest node's, throughputs
    the slowest node's (each node's line divides the tool's global count by that node's time),
    mAP and images node 0's. No memory: the tool's logs do not measure it."""
    first = imported.nodes[0]
    return RunMetrics(
        global_images=first.trained_images,
        e2e_time_s=max(n.e2e_s for n in imported.nodes),
        p_whole=min(n.p_whole for n in imported.nodes),
        p_train=min(n.p_train for n in imported.nodes),
        p_core=min(n.p_core for n in imported.nodes),
        map=first.map,
        mem_used_bytes=None,
        mem_total_bytes=None,
        epochs_completed=None,
        converged=first.converged,
    )


# Each time contains the next (docs/schema.md): compute within training without eval, that
# within training, that within the whole run. Clocks differ a little between the measurements.
NESTED_TIMES = ("core_s", "train_no_eval_s", "train_s", "e2e_s")
_CLOCK_SLACK = (1.01, 0.05)  # relative, seconds


def check_timings(rank: RankFile) -> None:
    """Refuse times that cannot be: one part longer than the whole it is part of."""
    timings = rank.doc["timings"]
    for inner, outer in zip(NESTED_TIMES, NESTED_TIMES[1:]):
        part, whole = float(timings[inner]), float(timings[outer])
        if part > whole * _CLOCK_SLACK[0] + _CLOCK_SLACK[1]:
            raise _fail(
                rank,
                f"timings.{inner}",
                f"{part:g} s is longer than timings.{outer} {whole:g} s, which contains it",
            )


def _from_ranks(folder: RunFolder) -> RunMetrics:
    check_complete(folder)
    ranks = sorted(folder.ranks, key=lambda r: r.rank)
    for rank in ranks:
        check_timings(rank)
    global_images = sum(int(r.doc["samples"]["rank_images"]) for r in ranks)
    for rank in ranks:
        claimed = rank.doc["samples"]["global_images"]
        if claimed != global_images:
            raise _fail(
                rank,
                "samples.global_images",
                f"says {claimed} but the ranks' samples.rank_images add up to {global_images}",
            )
    first = ranks[0].doc
    used, total = _memory(ranks)
    return RunMetrics(
        global_images=global_images,
        e2e_time_s=max(float(r.doc["timings"]["e2e_s"]) for r in ranks),
        p_whole=global_images / _slowest(ranks, "train_s"),
        p_train=global_images / _slowest(ranks, "train_no_eval_s"),
        p_core=global_images / _slowest(ranks, "core_s"),
        map=(first.get("eval") or {}).get("map"),
        mem_used_bytes=used,
        mem_total_bytes=total,
        epochs_completed=int(first["samples"]["epochs_completed"]),
        converged=bool(first["converged"]),
    )


def _memory(ranks: Sequence[RankFile]) -> tuple[int | None, int | None]:
    """Peak reserved device memory of the hungriest rank, and that device's total."""
    measured = [r for r in ranks if r.doc["memory"].get("peak_reserved_bytes") is not None]
    if not measured:
        return None, None
    top = max(measured, key=lambda r: r.doc["memory"]["peak_reserved_bytes"])
    total = top.doc["memory"].get("total_bytes") or top.doc["device"].get("total_mem_bytes")
    return int(top.doc["memory"]["peak_reserved_bytes"]), (int(total) if total else None)
