"""The cluster file's [image] table and command-line overrides."""

from dataclasses import replace

import pytest

from orchestrator.config import parse_cluster
from orchestrator.errors import ConfigError
from orchestrator.image_settings import ImageSettings, parse_image_table
from orchestrator.images.workflow import settings_for
from orchestrator.specs import ClusterSpec, NodeSpec


def test_image_table_is_read_and_checked():
    settings = parse_image_table(
        {"wheels": "~/wheels", "base": "b:1", "build_host": "n1", "registry": "r:5000"}, "c.toml"
    )
    assert settings.wheels[0].endswith("/wheels") and not settings.wheels[0].startswith("~")
    assert (settings.base_image, settings.build_host, settings.registry) == ("b:1", "n1", "r:5000")
    assert parse_image_table({}, "c.toml") == ImageSettings()
    with pytest.raises(ConfigError, match="image.regsitry is not a known key"):
        parse_image_table({"regsitry": "r"}, "c.toml")
    with pytest.raises(ConfigError, match="image.wheels must be a list"):
        parse_image_table({"wheels": [1]}, "c.toml")
    with pytest.raises(ConfigError, match="image.build_host must be a non-empty string"):
        parse_image_table({"build_host": ""}, "c.toml")


def test_command_line_overrides_the_cluster_settings():
    cluster = ClusterSpec("c", "cpu", (NodeSpec("n1", "local"),))
    assert settings_for(cluster) == ImageSettings()
    # What the config loader puts in ClusterSpec.image from the [image] table.
    cluster = replace(cluster, image=ImageSettings(wheels=("/a",), registry="r:1"))
    merged = settings_for(cluster, wheels=("/b",), vendor=None, build_host="n1")
    assert merged == ImageSettings(wheels=("/b",), build_host="n1", registry="r:1")


def test_distribution_is_relay_unless_the_image_table_says_star():
    assert parse_image_table({}, "c.toml").distribution == "relay"
    assert parse_image_table({"distribution": "star"}, "c.toml").distribution == "star"
    with pytest.raises(
        ConfigError, match="image.distribution must be one of relay, star, got 'tree'"
    ):
        parse_image_table({"distribution": "tree"}, "c.toml")


def test_the_cluster_file_gives_typed_image_settings():
    data = {
        "cluster": {"runtime": "docker"},
        "nodes": [{"name": "n1", "address": "10.0.0.1"}],
        "image": {"build_host": "n1", "distribution": "star", "registry": "r:5000"},
    }
    cluster = parse_cluster(data, "lab.toml")
    assert cluster.image == ImageSettings(build_host="n1", registry="r:5000", distribution="star")
    assert parse_cluster({"nodes": data["nodes"]}, "lab.toml").image is None
    # The command line wins over the file, field by field; the file fills in the rest.
    assert settings_for(cluster, registry="r:6000") == ImageSettings(
        build_host="n1", registry="r:6000", distribution="star"
    )
