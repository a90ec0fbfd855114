"""The run folder: what a run leaves on disk, and its manifest (`orchestrator.run-manifest` v1).

    RUN_DIR/manifest.json               RunManifest: what was asked, where, how it ended
    RUN_DIR/ranks/rank-00000.json ...   one per rank, workload/faster_rcnn/result_format.py
    RUN_DIR/nodes/<node>/env.json       the environment captured on that node
    RUN_DIR/nodes/<node>/monitor.jsonl  monitor samples of that node (orchestrator/monitor.py)
    RUN_DIR/nodes/<node>/nccl.log       NCCL's INFO lines of that node's ranks (orchestrator/fabric.py)
    RUN_DIR/logs/<node>.log             the node's combined output

`read_run_folder()` reads and validates all of it without touching a database; every error is an
IngestError that names the file and the field. docs/run-folder.md documents the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.errors import IngestError, TopologyError
from orchestrator.fabric import MAX_LOG_CHARS, NCCL_LOG_FILE
from orchestrator.monitor import MONITOR_FILE, RawOutput, Sample, parse_samples, raw_output
from orchestrator.pathnames import RUN_ID_PATTERN
from orchestrator.redact import redact_text
from orchestrator.runfolder.imported import ImportedResult, imported_from_dict
from orchestrator.specs import Topology
from orchestrator.states import (
    BACKENDS,
    PRECISIONS,
    RUN_SOURCES,
    RUN_STATUSES,
    RUNTIMES,
    BackendName,
    Precision,
    RunSource,
    RunStatus,
    Runtime,
)
from workload.faster_rcnn import result_format

_Choice = TypeVar("_Choice", bound=str)
MANIFEST_SCHEMA = "orchestrator.run-manifest"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
RANKS_DIR = "ranks"
NODES_DIR = "nodes"
LOGS_DIR = "logs"
ENV_FILE = "env.json"

_RANK_FILE = re.compile(r"^rank-(\d{5})\.json$")
_FIX = "fix the file; docs/run-folder.md describes every field"

# Known keys of nodes/<node>/env.json and their JSON types; other keys are kept as they are.
ENV_FIELDS: dict[str, tuple[type, ...]] = {
    "os": (str,),
    "kernel": (str,),
    "cpu": (str,),
    "mem_total_bytes": (int,),
    "accelerator_model": (str,),
    "accelerator_count": (int,),
    "driver": (str,),
    "docker": (str,),
    "torch": (str,),
    "torchvision": (str,),
    "python": (str,),
    "ib": (list,),
}


@dataclass(frozen=True)
class NodeRef:
    name: str
    address: str
    node_rank: int
    ib_hcas: tuple[str, ...] = ()  # the cluster file's ib_hcas for the node (what NCCL should use)
    devices: tuple[int, ...] | None = None  # local rank i on device i of this list (SMI numbering)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "address": self.address}
        doc["node_rank"] = self.node_rank
        if self.ib_hcas:  # written only when named, so other manifests stay as they were
            doc["ib_hcas"] = list(self.ib_hcas)
        if self.devices is not None:
            doc["devices"] = list(self.devices)
        return doc


@dataclass(frozen=True)
class ImageRef:
    tag: str
    id: str | None = None


@dataclass(frozen=True)
class RunManifest:
    """manifest.json. Times are timezone-aware; `failure` is {node, rank, exit_code, reason,
    log_tail} or None; `hparams` are the --set values as strings."""

    run_id: str
    case: str
    vendor: str
    cluster: str
    backend: BackendName
    runtime: Runtime
    topology: str
    nnodes: int
    nproc_per_node: int
    precision: Precision
    submitted_by: str
    submitted_at: datetime
    status: RunStatus
    nodes: tuple[NodeRef, ...]
    hparams: dict[str, str] = field(default_factory=dict)
    config_name: str | None = None
    hardware_label: str | None = None  # the vendor profile's label, e.g. 'MetaX C500 64G'
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure: dict[str, Any] | None = None
    image: ImageRef | None = None
    campaign_id: str | None = None
    slurm_job_id: str | None = None
    command: str = ""
    orchestrator_version: str = ""
    # A run imported from another tool's logs (no rank files): the tool, and what its logs said.
    source: RunSource = "orchestrator"
    imported: ImportedResult | None = None
    # What the run read, as the nodes see it (the cluster file's [case], or submit --data-dir /
    # --backbone-weights); None in manifests written before they were recorded.
    data_dir: str | None = None
    backbone_weights: str | None = None
    # [stragglers] slower_fraction of the cluster file, when it is not the default (None): what
    # publishing flags a straggling rank by (store/stragglers.py).
    straggler_fraction: float | None = None

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def reason(self) -> str | None:
        return (
            str(self.failure.get("reason")) if self.failure and self.failure.get("reason") else None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "schema_version": MANIFEST_VERSION,
            "run_id": self.run_id,
            "case": self.case,
            "vendor": self.vendor,
            "hardware_label": self.hardware_label,
            "cluster": self.cluster,
            "backend": self.backend,
            "runtime": self.runtime,
            "topology": self.topology,
            "nnodes": self.nnodes,
            "nproc_per_node": self.nproc_per_node,
            "precision": self.precision,
            "hparams": dict(self.hparams),
            "config_name": self.config_name,
            "submitted_by": self.submitted_by,
            "submitted_at": _iso(self.submitted_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "status": self.status,
            "failure": self.failure,
            "nodes": [n.as_dict() for n in self.nodes],
            "image": None if self.image is None else {"tag": self.image.tag, "id": self.image.id},
            "campaign_id": self.campaign_id,
            "slurm_job_id": self.slurm_job_id,
            "command": redact_text(self.command),
            "orchestrator_version": self.orchestrator_version,
            # written only for imports, so a native run's manifest is as it always was
            **(
                {"source": self.source, "imported": self.imported.to_dict()}
                if self.imported is not None
                else {}
            ),
            "data_dir": self.data_dir,
            "backbone_weights": self.backbone_weights,
            # written only when set, so other manifests are as they always were
            **(
                {"straggler_fraction": self.straggler_fraction}
                if self.straggler_fraction is not None
                else {}
            ),
        }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the control plane works in UTC; say so in the file
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


class _Fields:
    """Reads one JSON object field by field; every problem names the file and the field."""

    def __init__(self, source: str, data: dict[str, Any], prefix: str = "") -> None:
        self.source, self.data, self.prefix = source, data, prefix

    def fail(self, name: str, problem: str) -> IngestError:
        return IngestError(f"{self.source}: field {self.prefix}{name}: {problem}", _FIX)

    def get(self, name: str, kinds: tuple[type, ...], required: bool = True) -> Any:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is missing")
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise self.fail(name, f"expected {wanted}, got {type(value).__name__}")
        return value

    def text(self, name: str, required: bool = True) -> Any:
        return self.get(name, (str,), required)

    def integer(self, name: str, low: int = 0) -> int:
        value = int(self.get(name, (int,)))
        if value < low:
            raise self.fail(name, f"must be at least {low}")
        return value

    def choice(self, name: str, choices: tuple[_Choice, ...]) -> _Choice:
        value = str(self.text(name))
        for choice in choices:  # the tuple's own item: its Literal type goes with it
            if value == choice:
                return choice
        raise self.fail(name, f"{value!r} is not one of {', '.join(choices)}")

    def time(self, name: str, required: bool = False) -> datetime | None:
        text = self.text(name, required)
        if text is None:
            return None
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise self.fail(name, f"{text!r} is not an ISO 8601 time") from None
        if value.tzinfo is None:
            raise self.fail(name, f"{text!r} has no time zone, write e.g. {text}+00:00")
        return value


def manifest_from_dict(data: Any, source: str) -> RunManifest:
    """Validate a parsed manifest.json; raise IngestError naming `source` and the field."""
    if not isinstance(data, dict):
        raise IngestError(f"{source}: expected a JSON object", _FIX)
    f = _Fields(source, data)
    if data.get("schema") != MANIFEST_SCHEMA:
        raise f.fail("schema", f"expected {MANIFEST_SCHEMA!r}")
    if data.get("schema_version") != MANIFEST_VERSION:
        raise f.fail(
            "schema_version",
            f"unsupported version {data.get('schema_version')!r}, this orchestrator reads "
            f"{MANIFEST_VERSION}",
        )
    run_id = str(f.text("run_id"))
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise f.fail("run_id", f"{run_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    topology_text = str(f.text("topology"))
    try:
        topology = Topology.parse(topology_text)
    except TopologyError:
        raise f.fail("topology", f"{topology_text!r} is not of the form NxM") from None
    nnodes, nproc = f.integer("nnodes", 1), f.integer("nproc_per_node", 1)
    if (nnodes, nproc) != (topology.nnodes, topology.nproc_per_node):
        raise f.fail(
            "topology", f"{topology_text!r} disagrees with nnodes={nnodes}, nproc_per_node={nproc}"
        )
    hparams = f.get("hparams", (dict,), required=False) or {}
    for key, value in hparams.items():
        if not isinstance(value, str):
            raise f.fail(
                f"hparams.{key}", f"expected str (as given by --set), got {type(value).__name__}"
            )
    nodes = _nodes(f, nnodes)
    image_data = f.get("image", (dict,), required=False)
    image = None
    if image_data is not None:
        image_fields = _Fields(source, image_data, "image.")
        image = ImageRef(
            tag=str(image_fields.text("tag")), id=image_fields.text("id", required=False)
        )
    failure = f.get("failure", (dict,), required=False)
    run_source = f.choice("source", RUN_SOURCES) if "source" in data else "orchestrator"
    imported = None
    if run_source != "orchestrator":
        imported = imported_from_dict(data.get("imported"), source, nnodes)
    elif data.get("imported") is not None:
        raise f.fail("imported", "is only for runs imported from another tool (source)")
    submitted_at = f.time("submitted_at", required=True)
    assert submitted_at is not None  # required=True raised otherwise
    return RunManifest(
        run_id=run_id,
        case=str(f.text("case")),
        vendor=str(f.text("vendor")),
        hardware_label=f.text("hardware_label", required=False),
        cluster=str(f.text("cluster")),
        backend=f.choice("backend", BACKENDS),
        runtime=f.choice("runtime", RUNTIMES),
        topology=str(topology),
        nnodes=nnodes,
        nproc_per_node=nproc,
        precision=f.choice("precision", PRECISIONS),
        hparams=dict(hparams),
        config_name=f.text("config_name", required=False),
        submitted_by=str(f.text("submitted_by")),
        submitted_at=submitted_at,
        started_at=f.time("started_at"),
        finished_at=f.time("finished_at"),
        status=f.choice("status", RUN_STATUSES),
        failure=dict(failure) if failure is not None else None,
        nodes=nodes,
        image=image,
        campaign_id=f.text("campaign_id", required=False),
        slurm_job_id=f.text("slurm_job_id", required=False),
        command=f.text("command", required=False) or "",
        orchestrator_version=f.text("orchestrator_version", required=False) or "",
        source=run_source,
        imported=imported,
        data_dir=f.text("data_dir", required=False),
        backbone_weights=f.text("backbone_weights", required=False),
        straggler_fraction=_fraction(f),
    )


def _fraction(f: _Fields) -> float | None:
    value = f.get("straggler_fraction", (int, float), required=False)
    if value is None:
        return None
    if isinstance(value, bool) or not 0 < float(value) <= 10:
        raise f.fail("straggler_fraction", f"{value!r} must be a number above 0, at most 10")
    return float(value)


def _nodes(f: _Fields, nnodes: int) -> tuple[NodeRef, ...]:
    items = f.get("nodes", (list,))
    if len(items) != nnodes:
        raise f.fail("nodes", f"lists {len(items)} node(s) but nnodes is {nnodes}")
    nodes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise f.fail(f"nodes[{i}]", "expected an object {name, address, node_rank}")
        node = _Fields(f.source, item, f"nodes[{i}].")
        hcas = node.get("ib_hcas", (list,), required=False) or []
        if not all(isinstance(h, str) for h in hcas):
            raise f.fail(f"nodes[{i}].ib_hcas", "expected a list of HCA names (strings)")
        nodes.append(
            NodeRef(
                str(node.text("name")),
                str(node.text("address")),
                node.integer("node_rank"),
                ib_hcas=tuple(hcas),
                devices=_devices(node),
            )
        )
    if sorted(n.node_rank for n in nodes) != list(range(nnodes)):
        raise f.fail("nodes", f"node_rank values must be 0..{nnodes - 1}, each once")
    if len({n.name for n in nodes}) != len(nodes):
        raise f.fail("nodes", "a node name appears twice")
    return tuple(sorted(nodes, key=lambda n: n.node_rank))


def _devices(node: _Fields) -> tuple[int, ...] | None:
    """nodes[i].devices: the devices the node's ranks used, in local-rank order (optional)."""
    items = node.get("devices", (list,), required=False)
    if items is None:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in items):
        raise node.fail("devices", "must be a list of device indices")
    return tuple(items)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (write null or a number)")


def _read_json(path: Path, shown: str) -> tuple[Any, str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise IngestError(
            f"{shown}: cannot read: {exc.strerror}", "check the file and its permissions"
        ) from None
    except UnicodeDecodeError:
        raise IngestError(f"{shown}: not UTF-8 text", _FIX) from None
    try:
        return json.loads(text, parse_constant=_reject_constant), text
    except ValueError as exc:
        raise IngestError(f"{shown}: not valid JSON ({exc})", _FIX) from None


def load_manifest(path: str | os.PathLike[str]) -> RunManifest:
    file = Path(path)
    data, _ = _read_json(file, str(file))
    return manifest_from_dict(data, str(file))


# A run folder holds logs, environments and the command line: the owner and the owner's group
# read it, nobody else (docs/security.md).
RUN_DIR_MODE = 0o750
MANIFEST_MODE = 0o640


def make_run_dir(path: Path, exist_ok: bool = False) -> None:
    """Create a run folder (its parents as usual) that other users cannot enter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=RUN_DIR_MODE)
    except FileExistsError:
        if not exist_ok:
            raise
        return  # an adopted run's folder, perhaps another user's: left as it is
    path.chmod(RUN_DIR_MODE)  # mkdir's mode is filtered by the umask


def write_manifest(path: str | os.PathLike[str], manifest: RunManifest) -> None:
    """Write atomically (temp file + rename): a reader never sees half a manifest."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MANIFEST_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, file)


@dataclass(frozen=True)
class RankFile:
    path: str  # as shown in messages
    rank: int
    doc: dict[str, Any]
    text: str  # the file as read, stored byte for byte


@dataclass(frozen=True)
class RunFolder:
    """A run folder, read and validated file by file (cross-rank checks are in store.metrics)."""

    path: str
    manifest: RunManifest
    manifest_text: str
    ranks: tuple[RankFile, ...]
    envs: dict[str, dict[str, Any]]  # node name -> env.json
    digest: str  # sha256 over every file read: same digest, same content
    env_texts: dict[str, str] = field(default_factory=dict)  # node name -> env.json as read
    monitors: dict[str, list[Sample]] = field(default_factory=dict)  # node -> monitor.jsonl
    monitor_raw: dict[str, RawOutput] = field(default_factory=dict)  # node -> SMI output kept raw
    nccl_logs: dict[str, str] = field(default_factory=dict)  # node -> nccl.log


def read_run_folder(path: str | os.PathLike[str]) -> RunFolder:
    root = Path(path)
    if not root.is_dir():
        raise IngestError(f"{root} is not a folder", "pass a run folder (it holds manifest.json)")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise IngestError(
            f"{manifest_path} is missing", "is this a run folder? see docs/run-folder.md"
        )
    data, manifest_text = _read_json(manifest_path, str(manifest_path))
    manifest = manifest_from_dict(data, str(manifest_path))
    digest = hashlib.sha256()
    digest.update(manifest_text.encode())
    ranks = []
    for file in sorted((root / RANKS_DIR).glob("rank-*.json")):
        rank = _read_rank(file, manifest)
        ranks.append(rank)
        digest.update(b"\0" + file.name.encode() + b"\0" + rank.text.encode())
    if ranks and manifest.imported is not None:
        raise IngestError(
            f"{root}/{RANKS_DIR}: a run imported from {manifest.source} has no rank files",
            "remove the folder's ranks/, or the manifest's source and imported",
        )
    envs, env_texts = {}, {}
    known = {n.name for n in manifest.nodes}
    nodes_dir = root / NODES_DIR
    for env_path in sorted(nodes_dir.glob(f"*/{ENV_FILE}")):
        name = env_path.parent.name
        if name not in known:
            raise IngestError(
                f"{env_path}: node {name!r} is not in {MANIFEST_FILE}'s nodes ({', '.join(sorted(known))})",
                "remove the folder or fix the manifest",
            )
        envs[name], env_texts[name] = _read_env(env_path)
        digest.update(b"\0" + name.encode() + b"\0" + env_texts[name].encode())
    monitors, monitor_raw = {}, {}
    for monitor_path in sorted(nodes_dir.glob(f"*/{MONITOR_FILE}")):
        name = _node_of(monitor_path, known)
        text = monitor_path.read_text(encoding="utf-8", errors="replace")
        monitors[name] = parse_samples(text, str(monitor_path))
        raw = raw_output(text)
        if raw is not None:
            monitor_raw[name] = raw
        digest.update(b"\0monitor\0" + name.encode() + b"\0" + text.encode())
    nccl_logs = {}
    for log_path in sorted(nodes_dir.glob(f"*/{NCCL_LOG_FILE}")):
        name = _node_of(log_path, known)
        with log_path.open(encoding="utf-8", errors="replace") as log:
            nccl_logs[name] = log.read(MAX_LOG_CHARS)
        digest.update(b"\0nccl\0" + name.encode() + b"\0" + nccl_logs[name].encode())
    return RunFolder(
        path=str(root),
        manifest=manifest,
        manifest_text=manifest_text,
        ranks=tuple(ranks),
        envs=envs,
        digest=digest.hexdigest(),
        env_texts=env_texts,
        monitors=monitors,
        monitor_raw=monitor_raw,
        nccl_logs=nccl_logs,
    )


def join_nccl_logs(files: list[Path], node_dir: Path) -> None:
    """Write a node's per-process NCCL_DEBUG_FILE files as nodes/<node>/nccl.log, one process
    after the other (each file's lines stay together), at most MAX_LOG_CHARS of them."""
    if not files:
        return
    node_dir.mkdir(parents=True, exist_ok=True)
    left = MAX_LOG_CHARS
    with (node_dir / NCCL_LOG_FILE).open("w", encoding="utf-8") as out:
        for file in sorted(files):
            text = file.read_text(encoding="utf-8", errors="replace")[:left]
            out.write(text if not text or text.endswith("\n") else text + "\n")
            left -= len(text)
            if left <= 0:
                break


def _node_of(path: Path, known: set[str]) -> str:
    """The node of nodes/<node>/FILE, which the manifest must list."""
    name = path.parent.name
    if name not in known:
        raise IngestError(
            f"{path}: node {name!r} is not in {MANIFEST_FILE}'s nodes",
            "remove the folder or fix the manifest",
        )
    return name


def _read_rank(file: Path, manifest: RunManifest) -> RankFile:
    match = _RANK_FILE.match(file.name)
    if not match:
        raise IngestError(f"{file}: not a rank file name", "rank files are named rank-00000.json")
    doc, text = _read_json(file, str(file))
    try:
        result_format.validate(doc)
    except result_format.ResultFormatError as exc:
        raise IngestError(f"{file}: field {exc.field}: {exc.message}", _FIX) from None
    rank = int(match.group(1))
    checks = (
        ("run_id", doc["run_id"], manifest.run_id),
        ("identity.rank", doc["identity"]["rank"], rank),
        ("identity.world_size", doc["identity"]["world_size"], manifest.world_size),
        ("identity.nnodes", doc["identity"]["nnodes"], manifest.nnodes),
        ("config.precision", doc["config"]["precision"], manifest.precision),
    )
    for name, found, expected in checks:
        if found != expected:
            raise IngestError(
                f"{file}: field {name}: is {found!r} but the run folder says {expected!r}",
                "the file belongs to another run or rank; remove it or fix the folder",
            )
    epochs = [e["epoch"] for e in doc["epochs"]]
    if len(set(epochs)) != len(epochs):
        raise IngestError(f"{file}: field epochs: an epoch number appears twice", _FIX)
    return RankFile(path=str(file), rank=rank, doc=doc, text=text)


def _read_env(path: Path) -> tuple[dict[str, Any], str]:
    data, text = _read_json(path, str(path))
    if not isinstance(data, dict):
        raise IngestError(f"{path}: expected a JSON object", _FIX)
    fields = _Fields(str(path), data)
    for name, kinds in ENV_FIELDS.items():
        fields.get(name, kinds, required=False)
    return data, text
