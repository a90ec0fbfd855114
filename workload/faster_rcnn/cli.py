"""Command line of `python -m workload.faster_rcnn` (started by torchrun on every node)."""

from __future__ import annotations

import argparse
from typing import Any, Dict, NoReturn, Optional, Sequence

from .errors import ConfigError
from .hparams import PRECISIONS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError("invalid command line: " + message, "see --help")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m workload.faster_rcnn",
        description="Faster R-CNN R50-FPN training benchmark on COCO 2017; one process per "
        "device, started by torchrun. Writes <output-dir>/rank-NNNNN.json per rank and JSON "
        "progress events on stdout (rank 0).",
        epilog="example: torchrun --nproc-per-node 8 -m workload.faster_rcnn --data-dir "
        "/data/coco2017 --backbone-weights /data/resnet50-0676ba61.pth --output-dir out "
        "--config nvidia-a100:1x8 --precision amp",
    )
    a = p.add_argument
    a("--data-dir", required=True, help="COCO 2017 layout: train2017/, val2017/, annotations/")
    a("--backbone-weights", default="none", help="ResNet-50 ImageNet checkpoint (.pth) or 'none'")
    a("--output-dir", required=True, help="where rank-NNNNN.json files are written")
    a("--run-id", default=None, help="default: $ORCHESTRATOR_RUN_ID, else a generated id")
    a("--config", default=None, help="vendor override set, e.g. metax-c500:2x8 ('none': reference)")
    a(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one hyper-parameter (repeatable); wins over every other source",
    )
    # Explicit options: None means "not given", so --config values survive.
    a("--precision", choices=PRECISIONS, default=None)
    a("--batch-size", type=int, default=None, help="images per process per iteration")
    a("--lr", type=float, default=None)
    a("--epochs", type=int, default=None)
    a(
        "--target-map",
        type=_optional_float,
        default=None,
        help="stop early at this mAP ('none': never)",
    )
    a("--max-iters", type=int, default=None, help="cap on training iterations (short runs)")
    a("--eval", dest="eval", action="store_true", default=None, help="evaluate after each epoch")
    a("--no-eval", dest="eval", action="store_false")
    a("--eval-max-images", type=int, default=None, help="evaluate on the first N val images")
    a("--workers", type=int, default=None, help="data loader worker processes per rank")
    a("--seed", type=int, default=None)
    a("--min-size", type=int, default=None, help="model resize: shorter side (default 800)")
    a("--max-size", type=int, default=None, help="model resize: longer side cap (default 1333)")
    a("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, xpu, ...")
    a("--backend", default="auto", help="auto (nccl on cuda, gloo on cpu), or a backend name")
    a("--dist-timeout-s", type=float, default=1800.0, help="process-group timeout (a dead peer)")
    a("--log-every", type=int, default=20, help="progress event every N iterations")
    a(
        "--progress-every-s",
        type=float,
        default=5.0,
        help="progress event at least this often, in seconds (training and evaluation)",
    )
    a("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    return p


def _optional_float(text: str) -> Any:
    if text.strip().lower() in ("none", "null"):
        return _NONE
    return float(text)


class _NoneMarker:
    """`--target-map none`: explicitly null, distinct from 'not given'."""


_NONE = _NoneMarker()

# explicit option -> hyper-parameter key
OPTION_KEYS = (
    "precision",
    "batch_size",
    "lr",
    "epochs",
    "target_map",
    "max_iters",
    "eval",
    "eval_max_images",
    "workers",
    "seed",
    "min_size",
    "max_size",
)


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.log_every < 1:
        raise ConfigError(f"--log-every {args.log_every} must be at least 1", "use e.g. 20")
    if args.progress_every_s <= 0:
        raise ConfigError(
            f"--progress-every-s {args.progress_every_s:g} must be positive", "use e.g. 5"
        )
    if args.dist_timeout_s <= 0:
        raise ConfigError("--dist-timeout-s must be positive", "use e.g. 1800")
    return args


def explicit_hparams(args: argparse.Namespace) -> Dict[str, Any]:
    """The options given on the command line, as hyper-parameters ('none' becomes None)."""
    out: Dict[str, Any] = {}
    for key in OPTION_KEYS:
        value = getattr(args, key)
        if value is not None:
            out[key] = None if isinstance(value, _NoneMarker) else value
    return out


def output_dir_hint(argv: Sequence[str]) -> Optional[str]:
    """--output-dir from a command line that may not parse, so a failed rank can still report."""
    loose = argparse.ArgumentParser(add_help=False)
    loose.add_argument("--output-dir")
    loose.add_argument("--run-id")
    try:
        known, _ = loose.parse_known_args(list(argv))
    except SystemExit:
        return None
    return known.output_dir
