"""Entry point logic: parse, resolve, run, and always leave a rank file behind.

torch is imported only once the command line, hyper-parameters and dataset layout are known to
be good, so those errors are reported fast and even where torch itself is broken.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, List, Optional, Sequence

from . import cli, coco, dist_env, hparams, stacks
from .errors import ConfigError, Terminated, WorkloadError
from .progress import Events, log
from .report import RankReport, error_record, new_run_id


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated(
        f"received signal {signum} "
        "(the launcher stopped this rank, e.g. because another rank failed)"
    )


def _apply_env(env: dict) -> None:
    """The vendor environment, where the caller did not set it (before torch is imported)."""
    for key, value in env.items():
        os.environ.setdefault(key, value)


def _fill_identity(report: RankReport) -> None:
    """Where this rank sits, as far as the environment says; run() reports a bad environment."""
    try:
        env = dist_env.from_environ()
    except ConfigError:
        rank = os.environ.get("RANK", "0")
        report.identity["rank"] = int(rank) if rank.isdigit() else 0
        report.identity["world_size"] = report.identity["rank"] + 1
        return
    report.identity.update(env._asdict())


def _backbone(text: str) -> Optional[str]:
    if text.strip().lower() == "none":
        return None
    return text


def run(argv: Sequence[str], report: RankReport, events: Events) -> None:
    env = dist_env.from_environ()
    args = cli.parse(argv)
    events.emit("phase", phase="init")  # dataset checks, torch, process group, model
    os.makedirs(args.output_dir, exist_ok=True)
    resolved = hparams.resolve(args.config, env.topology, cli.explicit_hparams(args), args.sets)
    report.set_config(resolved.hparams, resolved.config_name, resolved.env)
    _apply_env(resolved.env)
    layout = coco.find_layout(args.data_dir, resolved.hparams["eval"])
    weights = _backbone(args.backbone_weights)
    if weights is not None and not os.path.isfile(weights):
        from .errors import WeightsError

        raise WeightsError(
            f"backbone weights file {weights} does not exist",
            "copy resnet50-0676ba61.pth there, or pass --backbone-weights none",
        )
    # annotation files are read before torch is imported: a bad dataset fails fast, on every rank
    coco_train = coco.load_coco(layout.train_annotations)
    coco_val = coco.load_coco(layout.val_annotations) if resolved.hparams["eval"] else None
    # torch from here on; FlagPerf's clock starts after its imports, so their time is kept
    t_import = time.perf_counter()
    from .session import Session

    report.timings["import_s"] = time.perf_counter() - t_import

    Session(args, env, resolved, layout, weights, report, events).run(coco_train, coco_val)


def main(
    argv: Optional[Sequence[str]] = None,
    started_unix: Optional[float] = None,
    started_perf: Optional[float] = None,
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        cli.build_parser().print_help()
        return 0
    report = RankReport(
        run_id=_run_id_hint(argv),
        started_unix=time.time() if started_unix is None else started_unix,
        started_perf=time.perf_counter() if started_perf is None else started_perf,
    )
    _fill_identity(report)
    events = Events(enabled=report.identity["rank"] == 0)
    output_dir = cli.output_dir_hint(argv)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM,)}
    stack_file = stacks.register(output_dir, report.identity["rank"])
    try:
        run(argv, report, events)
        doc = report.document("ok")
        path = report.write(output_dir or ".", doc)
        events.emit(
            "done",
            status="ok",
            rank_file=path,
            map=report.eval["map"] if report.eval else None,
            converged=report.converged,
            e2e_s=doc["timings"]["e2e_s"],
            **report.run_throughput,
        )
        return 0
    except BaseException as exc:  # every failure, even KeyboardInterrupt, leaves a rank file
        return _fail(exc, report, events, output_dir)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _shutdown()
        stacks.unregister(stack_file)


def _fail(exc: BaseException, report: RankReport, events: Events, output_dir: Optional[str]) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the report short
    record = error_record(exc)
    log(f"rank {report.identity['rank']} failed: {record['message']}")
    if not isinstance(exc, WorkloadError):
        sys.stderr.write(record["traceback"])
    written = None
    if output_dir:
        try:
            os.makedirs(output_dir, exist_ok=True)
            written = report.write(output_dir, report.document("failed", exc))
        except Exception as write_exc:  # report both; the exit code still says "failed"
            log(f"could not write the rank file in {output_dir}: {write_exc}")
    else:
        log("no --output-dir: no rank file written")
    _tell_torchrun(exc)
    events.emit(
        "done",
        status="failed",
        error=record["message"],
        error_type=record["type"],
        rank_file=written,
    )
    if isinstance(exc, WorkloadError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def _tell_torchrun(exc: BaseException) -> None:
    """torchrun's error file, so its failure summary names this rank's error (best effort)."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ or "torch" not in sys.modules:
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
    except Exception:  # the rank file already holds the error; this is only a courtesy
        pass


def _shutdown() -> None:
    session = sys.modules.get(__package__ + ".session")
    if session is not None:
        try:
            session.shutdown_distributed()
        except Exception:  # a broken group cannot be torn down cleanly; the process exits anyway
            pass


def _run_id_hint(argv: List[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--run-id" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--run-id="):
            return arg.split("=", 1)[1]
    return os.environ.get("ORCHESTRATOR_RUN_ID") or new_run_id()
