"""Hyper-parameters: the reference defaults, the per-vendor per-topology overrides, and their
resolution. Pure Python (no torch), so the control plane can import the tables too.

Precedence, lowest first: reference defaults < --config set < explicit options < --set KEY=VALUE.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from .errors import ConfigError
from .result_format import PRECISIONS

# key -> (kind, reference default, minimum or None). Kinds: int, float, bool, int_list,
# opt_int / opt_float (null allowed: `none`), precision. Defaults are FlagPerf's faster_rcnn case
# (see docs/workload.md for the sources).
HPARAMS: Dict[str, Tuple[str, Any, Optional[float]]] = {
    "batch_size": ("int", 2, 1),
    "lr": ("float", 0.02, 0),
    "momentum": ("float", 0.9, 0),
    "weight_decay": ("float", 1e-4, 0),
    "lr_steps": ("int_list", [16, 22], 0),
    "lr_gamma": ("float", 0.1, 0),
    "warmup_iters": ("opt_int", None, 0),  # null: min(1000, iterations per epoch - 1)
    "warmup_factor": ("float", 0.001, 0),
    "epochs": ("int", 26, 1),
    # true: train epochs + 1 epochs, as FlagPerf's loop does (it stops once epoch >= max_epoch,
    # counting from 0); every vendor config set turns it on (FLAGPERF_RULES)
    "flagperf_epochs": ("bool", False, None),
    "target_map": ("opt_float", 0.36, 0),  # null: never stop early
    "max_iters": ("opt_int", None, 1),  # null: no cap on training iterations
    "eval": ("bool", True, None),
    "eval_max_images": ("opt_int", None, 1),  # null: the whole val2017
    "eval_batch_size": ("int", 1, 1),
    "workers": ("int", 4, 0),
    "seed": ("int", 0, 0),
    "precision": ("precision", "fp32", None),
    "min_size": ("int", 800, 8),
    "max_size": ("int", 1333, 8),
    "aspect_ratio_group_factor": ("int", 3, -1),  # -1: no grouping
    "num_classes": ("int", 91, 2),
    "trainable_backbone_layers": ("opt_int", None, 0),  # null: 3 with weights, 5 from scratch
    "box_batch_size_per_image": ("int", 512, 1),  # RoI head samples per image (torchvision's)
    "fp16_loss_scale": ("float", 1024.0, 0),
}

# Upper bounds where a value has a natural one: mAP is a fraction from 0 to 1.
MAXIMA: Dict[str, Tuple[float, str]] = {
    "target_map": (1.0, "mAP is a fraction from 0 to 1, e.g. target_map=0.36"),
}

_EXAMPLES = {
    "int": "8",
    "opt_int": "8 (or none)",
    "float": "0.02",
    "opt_float": "0.36 (or none)",
    "int_list": "16,22",
}

# What every vendor config set adds to its topology's values: FlagPerf's loop rule, so that a
# FlagPerf-compatible configuration trains the epochs FlagPerf trains (docs/metrics.md).
FLAGPERF_RULES: Dict[str, Any] = {"flagperf_epochs": True}

# FlagPerf's config_<hw>x<nnodes>x<nproc>.py files, as data. `env` is the vendor environment the
# case sets; the workload applies it with setdefault (an explicit environment wins).
VENDOR_CONFIGS: Dict[str, Dict[str, Any]] = {
    "metax-c500": {
        "env": {"METAX_USE_TF32": "1"},
        "topologies": {
            "1x1": {"batch_size": 16, "lr": 0.16},
            "1x8": {"batch_size": 2},
            "2x8": {"batch_size": 16, "lr": 0.08},
        },
    },
    "nvidia-a100": {
        "env": {"OMP_NUM_THREADS": "1"},
        "topologies": {
            "1x1": {"batch_size": 16, "lr": 0.16},
            "1x8": {"batch_size": 2},
            "2x8": {"batch_size": 16, "lr": 0.16},
        },
    },
    "kunlunxin-r300": {
        "env": {"XACC_ENABLE": "1", "BKCL_PCIE_RING": "1"},
        "topologies": {
            "1x1": {"batch_size": 16, "lr": 0.16},
            "1x8": {"batch_size": 16, "lr": 0.16},
            "2x8": {"batch_size": 16, "lr": 0.16},
        },
    },
    "iluvatar-bi-v100": {
        "env": {"OMP_NUM_THREADS": "1"},
        "topologies": {
            "1x1": {"batch_size": 8, "lr": 0.0025},
            "1x8": {"batch_size": 8},
            "2x8": {"batch_size": 8},
        },
    },
}


def epochs_to_train(hp: Mapping[str, Any]) -> int:
    """How many epochs the loop runs: `epochs`, or one more under FlagPerf's rule."""
    return int(hp["epochs"]) + (1 if hp.get("flagperf_epochs") else 0)


class Resolved(NamedTuple):
    hparams: Dict[str, Any]
    env: Dict[str, str]
    config_name: Optional[str]  # "vendor:NxM", or None for the reference defaults


def defaults() -> Dict[str, Any]:
    return {key: _copy(spec[1]) for key, spec in HPARAMS.items()}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _known_keys() -> str:
    return ", ".join(sorted(HPARAMS))


def _closest(key: str) -> str:
    """'did you mean epochs? ' for a key close to a known one, else ''."""
    close = difflib.get_close_matches(key, list(HPARAMS), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def parse_value(key: str, text: str) -> Any:
    """Convert the text of `--set key=text` to the key's type; ConfigError names key and value."""
    if key not in HPARAMS:
        raise ConfigError(
            f"--set {key}: unknown hyper-parameter", _closest(key) + "known keys: " + _known_keys()
        )
    kind = HPARAMS[key][0]
    raw = text.strip()
    where = f"--set {key}={text}"
    if kind.startswith("opt_") and raw.lower() in ("none", "null", "auto", ""):
        return None
    try:
        if kind in ("int", "opt_int"):
            return int(raw)
        if kind in ("float", "opt_float"):
            return float(raw)
        if kind == "int_list":
            items = raw.strip("[]()").replace(" ", "")
            return [int(x) for x in items.split(",") if x]
    except ValueError:
        raise ConfigError(
            "{}: not a valid {}".format(where, kind.replace("opt_", "")),
            f"give e.g. {key}={_EXAMPLES[kind]}",
        ) from None
    if kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: not a boolean", "use true or false")
    if kind == "precision":
        if raw not in PRECISIONS:
            raise ConfigError(f"{where}: unknown precision", "use fp32, amp or fp16")
        return raw
    raise AssertionError("unhandled kind " + kind)


def parse_set(item: str) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set lr=0.01")
    key, text = item.split("=", 1)
    key = key.strip().replace("-", "_")
    return key, parse_value(key, text)


def vendor_override(
    config_name: Optional[str], topology: str
) -> Tuple[Dict[str, Any], Dict[str, str], Optional[str]]:
    """The override set for `vendor:NxM` (or `vendor`, taking the run's topology), its env, and
    the full name. `none` or None selects the reference defaults."""
    if config_name is None or config_name.strip().lower() in ("", "none", "reference"):
        return {}, {}, None
    vendor, _, topo = config_name.strip().partition(":")
    vendor = vendor.lower()
    if vendor not in VENDOR_CONFIGS:
        raise ConfigError(
            f"--config {config_name}: unknown vendor {vendor!r}",
            "known: {} (or none)".format(", ".join(sorted(VENDOR_CONFIGS))),
        )
    entry = VENDOR_CONFIGS[vendor]
    topo = (topo or topology).lower()
    if topo not in entry["topologies"]:
        raise ConfigError(
            f"--config {config_name}: no override set for topology {topo}",
            "known for {}: {}".format(vendor, ", ".join(sorted(entry["topologies"]))),
        )
    override = dict(FLAGPERF_RULES, **entry["topologies"][topo])
    return override, dict(entry["env"]), f"{vendor}:{topo}"


def resolve(
    config_name: Optional[str],
    topology: str,
    explicit: Mapping[str, Any],  # given options only; None means an explicit null
    sets: Iterable[str] = (),
) -> Resolved:
    """Apply the precedence chain and check every final value."""
    hp = defaults()
    override, env, full_name = vendor_override(config_name, topology)
    hp.update(override)
    for key, value in explicit.items():
        if key not in HPARAMS:
            raise AssertionError("option mapped to unknown hyper-parameter " + key)
        hp[key] = value
    for item in sets:
        key, value = parse_set(item)
        hp[key] = value
    check(hp)
    return Resolved(hp, env, full_name)


def check(hp: Mapping[str, Any]) -> None:
    if hp["lr"] <= 0:
        raise ConfigError("lr={} must be positive".format(hp["lr"]), "use e.g. lr=0.02")
    for key, (kind, _default, minimum) in HPARAMS.items():
        value = hp[key]
        if value is None or minimum is None:
            continue
        values: List[Any] = value if kind == "int_list" else [value]
        for v in values:
            if v < minimum:
                raise ConfigError(
                    f"{key}={value} is below the minimum {minimum}",
                    f"set a value >= {minimum}",
                )
    for key, (maximum, why) in MAXIMA.items():
        if hp[key] is not None and hp[key] > maximum:
            raise ConfigError(f"{key}={hp[key]} is above the maximum {maximum:g}", why)
    if hp["min_size"] > hp["max_size"]:
        raise ConfigError(
            "min_size={} is larger than max_size={}".format(hp["min_size"], hp["max_size"]),
            "make min_size <= max_size, e.g. --set min_size=64 --set max_size=96",
        )
    tbl = hp["trainable_backbone_layers"]
    if tbl is not None and tbl > 5:
        raise ConfigError(f"trainable_backbone_layers={tbl} is above 5", "use a value from 0 to 5")
    if list(hp["lr_steps"]) != sorted(hp["lr_steps"]):
        raise ConfigError(
            "lr_steps={} must be increasing".format(hp["lr_steps"]), "write e.g. lr_steps=16,22"
        )
