"""Reading the job position from torchrun's environment."""

from __future__ import annotations

import pytest

from workload.faster_rcnn.dist_env import from_environ
from workload.faster_rcnn.errors import ConfigError


def test_single_process_without_torchrun():
    env = from_environ({})
    assert (env.rank, env.world_size, env.nnodes, env.node_rank, env.distributed) == (
        0,
        1,
        1,
        0,
        False,
    )


def test_torchrun_variables_two_nodes():
    env = from_environ(
        {
            "RANK": "11",
            "LOCAL_RANK": "3",
            "WORLD_SIZE": "16",
            "LOCAL_WORLD_SIZE": "8",
            "GROUP_RANK": "1",
        }
    )
    assert (env.rank, env.local_rank, env.node_rank, env.nnodes, env.topology) == (
        11,
        3,
        1,
        2,
        "2x8",
    )


def test_node_rank_falls_back_to_rank_div_local_world_size():
    env = from_environ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})
    assert env.node_rank == 1


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not an integer"),
        (
            {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
            "not a multiple",
        ),
        (
            {"RANK": "4", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
            "out of range",
        ),
        ({"RANK": "1", "WORLD_SIZE": "2"}, "LOCAL_RANK is not set"),
    ],
)
def test_inconsistent_environment_is_a_config_error(env, fragment):
    with pytest.raises(ConfigError) as info:
        from_environ(env)
    assert fragment in info.value.message
