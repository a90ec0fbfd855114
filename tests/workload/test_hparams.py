"""Hyper-parameter resolution: reference defaults, vendor tables, precedence, --set parsing."""

from __future__ import annotations

import pytest

from workload.faster_rcnn import hparams
from workload.faster_rcnn.errors import ConfigError


def test_reference_defaults_match_flagperf_case():
    hp = hparams.defaults()
    assert (hp["lr"], hp["momentum"], hp["weight_decay"], hp["batch_size"]) == (0.02, 0.9, 1e-4, 2)
    assert (hp["lr_steps"], hp["lr_gamma"], hp["epochs"], hp["target_map"]) == (
        [16, 22],
        0.1,
        26,
        0.36,
    )
    assert (hp["warmup_factor"], hp["warmup_iters"], hp["workers"], hp["seed"]) == (
        0.001,
        None,
        4,
        0,
    )
    assert (hp["min_size"], hp["max_size"], hp["aspect_ratio_group_factor"]) == (800, 1333, 3)


def test_defaults_are_fresh_copies():
    hparams.defaults()["lr_steps"].append(99)
    assert hparams.defaults()["lr_steps"] == [16, 22]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("metax-c500:1x1", {"batch_size": 16, "lr": 0.16}),
        ("metax-c500:1x8", {"batch_size": 2, "lr": 0.02}),
        ("metax-c500:2x8", {"batch_size": 16, "lr": 0.08}),
        ("nvidia-a100:2x8", {"batch_size": 16, "lr": 0.16}),
        ("kunlunxin-r300:1x8", {"batch_size": 16, "lr": 0.16}),
        ("iluvatar-bi-v100:1x1", {"batch_size": 8, "lr": 0.0025}),
        ("iluvatar-bi-v100:2x8", {"batch_size": 8, "lr": 0.02}),
    ],
)
def test_vendor_topology_sets(name, expected):
    resolved = hparams.resolve(name, "1x1", {})
    assert {k: resolved.hparams[k] for k in expected} == expected
    assert resolved.config_name == name


def test_vendor_env_is_data():
    assert hparams.resolve("metax-c500:2x8", "2x8", {}).env == {"METAX_USE_TF32": "1"}
    assert hparams.resolve("kunlunxin-r300:1x1", "1x1", {}).env == {
        "XACC_ENABLE": "1",
        "BKCL_PCIE_RING": "1",
    }
    assert hparams.resolve("none", "1x1", {}).env == {}


def test_vendor_without_topology_uses_the_runs_topology():
    resolved = hparams.resolve("metax-c500", "2x8", {})
    assert resolved.config_name == "metax-c500:2x8"
    assert resolved.hparams["lr"] == 0.08


def test_precedence_defaults_config_explicit_set():
    resolved = hparams.resolve(
        "metax-c500:1x1",  # bs 16, lr 0.16
        "1x1",
        {"batch_size": 4},  # explicit beats config
        ["batch_size=6", "momentum=0.8"],  # --set beats explicit
    )
    hp = resolved.hparams
    assert (hp["batch_size"], hp["lr"], hp["momentum"], hp["weight_decay"]) == (6, 0.16, 0.8, 1e-4)


def test_explicit_none_clears_target_map():
    assert hparams.resolve(None, "1x1", {"target_map": None}).hparams["target_map"] is None


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("lr=0.01", "lr", 0.01),
        ("lr_steps=8,11", "lr_steps", [8, 11]),
        ("lr_steps=[8, 11]", "lr_steps", [8, 11]),
        ("warmup_iters=auto", "warmup_iters", None),
        ("warmup_iters=50", "warmup_iters", 50),
        ("target_map=none", "target_map", None),
        ("eval=false", "eval", False),
        ("precision=amp", "precision", "amp"),
        ("batch-size=3", "batch_size", 3),
    ],
)
def test_set_parsing(item, key, value):
    assert hparams.parse_set(item) == (key, value)


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("nosuchkey=1", "unknown hyper-parameter"),
        ("lr=fast", "not a valid float"),
        ("batch_size=2.5", "not a valid int"),
        ("eval=maybe", "not a boolean"),
        ("precision=int8", "unknown precision"),
        ("lr", "not KEY=VALUE"),
    ],
)
def test_bad_set_is_a_config_error_naming_the_item(item, fragment):
    with pytest.raises(ConfigError) as info:
        hparams.resolve(None, "1x1", {}, [item])
    assert fragment in info.value.message
    assert info.value.remedy


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        hparams.parse_set("lrr=1")
    assert "lr_steps" in info.value.remedy


@pytest.mark.parametrize(
    "name, fragment",
    [("acme-x1:1x8", "unknown vendor"), ("metax-c500:4x8", "no override set for topology 4x8")],
)
def test_bad_config_name(name, fragment):
    with pytest.raises(ConfigError) as info:
        hparams.resolve(name, "1x1", {})
    assert fragment in info.value.message
    assert "known" in info.value.remedy


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (["batch_size=0"], "batch_size=0 is below the minimum 1"),
        (["lr=0"], "lr=0.0 must be positive"),
        (["min_size=900", "max_size=800"], "min_size=900 is larger than max_size=800"),
        (["lr_steps=22,16"], "must be increasing"),
        (["trainable_backbone_layers=6"], "above 5"),
    ],
)
def test_final_values_are_checked(sets, fragment):
    with pytest.raises(ConfigError) as info:
        hparams.resolve(None, "1x1", {}, sets)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "item, suggestion",
    [("epoch=2", "did you mean epochs?"), ("batchsize=4", "did you mean batch_size?")],
)
def test_an_unknown_key_gets_the_closest_known_one(item, suggestion):
    with pytest.raises(ConfigError) as info:
        hparams.resolve(None, "1x1", {}, [item])
    assert info.value.remedy.startswith(suggestion + " known keys: ")
    with pytest.raises(ConfigError) as far:
        hparams.resolve(None, "1x1", {}, ["zzzz=1"])
    assert far.value.remedy.startswith("known keys: ")  # nothing close: no guess
