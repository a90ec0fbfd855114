"""Vendor profiles are data: every shipped profile loads, and a new vendor needs no code."""

from pathlib import Path

import pytest

from orchestrator.errors import ImageError
from orchestrator.images.profiles import available_profiles, images_dir, load_profile
from orchestrator.images.spec import render_dockerfile

REPO = Path(__file__).resolve().parents[2]


def test_shipped_profiles_are_cpu_metax_and_nvidia():
    assert {"cpu", "metax-c500", "nvidia"} <= set(available_profiles())
    assert images_dir() == REPO / "images"


def test_metax_profile_carries_the_vendor_options():
    p = load_profile("metax-c500")
    assert p.runtime.devices == ("/dev/dri", "/dev/mxcd")  # needed: the GPUs
    assert p.runtime.optional_devices == ("/dev/infiniband",)  # where the node has IB
    assert p.runtime.ulimits == ("stack=67108864",)
    assert p.runtime.rdma_ulimits == ("memlock=-1",)
    assert p.runtime.group_add == ("video",)
    assert dict(p.runtime.env) == {"METAX_USE_TF32": "1"}
    assert p.runtime.monitor == ("mx-smi",)
    assert p.runtime.visible_devices_env == "CUDA_VISIBLE_DEVICES"
    assert any(w.startswith("torch-2.0.0+mc") and "cp38" in w for w in p.vendor_wheels)
    assert any(w.startswith("torchvision-0.15.1+mc") for w in p.vendor_wheels)
    assert p.python.endswith("python3.8")


def test_nvidia_profile_asks_for_all_gpus_and_cpu_for_nothing():
    nvidia = load_profile("nvidia")
    assert nvidia.runtime.gpus == "all"
    assert nvidia.runtime.monitor[0] == "nvidia-smi"
    cpu = load_profile("cpu")
    assert cpu.runtime.gpus == "" and cpu.runtime.devices == () and cpu.runtime.group_add == ()


def test_cpu_profile_names_the_base_image_the_script_makes():
    import subprocess

    ref = subprocess.run(
        ["bash", str(REPO / "scripts" / "make-base-image.sh"), "--print-ref"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert load_profile("cpu").base_image == ref


def test_unknown_vendor_names_the_known_ones():
    with pytest.raises(ImageError) as err:
        load_profile("acme-x1")
    line = err.value.one_line()
    assert "acme-x1" in line and "cpu" in line and "metax-c500" in line


def _write(root: Path, name: str, text: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "profile.toml").write_text(text)


NEW_VENDOR = """
name = "kunlunxin-r300"
description = "a vendor added as data only"
[image]
base = "vendor/xpu-base:1.0"
python = "/usr/bin/python3.8"
wheel_dir = "/opt/wheels/xpu"
vendor_wheels = ["torch-*.whl"]
requirements = ["torch"]
venv_options = []
[runtime]
devices = ["/dev/xpu0", "/dev/xpuctrl"]
env = { XACC_ENABLE = "1", BKCL_PCIE_RING = "1" }
visible_devices_env = "XPU_VISIBLE_DEVICES"
monitor = ["xpu-smi"]
"""


def test_a_new_vendor_is_a_folder_of_data(tmp_path):
    (tmp_path / "Dockerfile.template").write_text(
        (REPO / "images" / "Dockerfile.template").read_text()
    )
    _write(tmp_path, "kunlunxin-r300", NEW_VENDOR)
    p = load_profile("kunlunxin-r300", tmp_path)
    assert p.runtime.devices == ("/dev/xpu0", "/dev/xpuctrl")
    assert p.runtime.shm_size == "8g"
    assert p.runtime.ulimits == ("stack=67108864",)  # the default
    assert p.runtime.rdma_ulimits == ("memlock=-1",)  # the default: RDMA-ready where IB is used
    assert p.runtime.optional_devices == ()
    assert "FROM vendor/xpu-base:1.0 AS system" in render_dockerfile(p)


def test_a_vendor_template_of_its_own_wins(tmp_path):
    (tmp_path / "Dockerfile.template").write_text("FROM {{base_image}}\n")
    _write(tmp_path, "kunlunxin-r300", NEW_VENDOR)
    (tmp_path / "kunlunxin-r300" / "Dockerfile.template").write_text("FROM {{base_image}} AS own\n")
    assert (
        render_dockerfile(load_profile("kunlunxin-r300", tmp_path))
        == "FROM vendor/xpu-base:1.0 AS own\n"
    )


@pytest.mark.parametrize(
    "change, words",
    [
        (("shm_size", "shm_sise"), "runtime.shm_sise is not a known key"),
        (('name = "kunlunxin-r300"', 'name = "other"'), "differs from its folder"),
        (('requirements = ["torch"]', "requirements = []"), "image.requirements is empty"),
        (('XACC_ENABLE = "1"', "XACC_ENABLE = 1"), "runtime.env must map"),
        (('base = "vendor/xpu-base:1.0"', "base = 3"), "image.base must be a non-empty string"),
        (("[image]", "[imagez]"), "imagez is not a known key"),
    ],
)
def test_profile_mistakes_name_the_file_and_key(tmp_path, change, words):
    (tmp_path / "Dockerfile.template").write_text("FROM {{base_image}}\n")
    text = (
        NEW_VENDOR.replace("[runtime]", '[runtime]\nshm_size = "1g"')
        if change[0] == "shm_size"
        else NEW_VENDOR
    )
    _write(tmp_path, "kunlunxin-r300", text.replace(*change))
    with pytest.raises(ImageError) as err:
        load_profile("kunlunxin-r300", tmp_path)
    assert words in err.value.one_line()
    assert "profile.toml" in err.value.one_line()
