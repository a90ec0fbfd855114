"""Where this process sits in the job, read from the variables torchrun sets. Pure Python."""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple, Optional

from .errors import ConfigError


class DistEnv(NamedTuple):
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    nnodes: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def topology(self) -> str:
        return f"{self.nnodes}x{self.local_world_size}"


def _int(env: Mapping[str, str], name: str, default: Optional[int]) -> int:
    text = env.get(name)
    if text is None or text == "":
        if default is None:
            raise ConfigError(f"environment variable {name} is not set", "start with torchrun")
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not an integer",
            "start with torchrun, which sets it",
        ) from None


def from_environ(env: Optional[Mapping[str, str]] = None) -> DistEnv:
    """torchrun's RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK; without them, a
    single process (rank 0 of 1)."""
    env = os.environ if env is None else env
    world_size = _int(env, "WORLD_SIZE", 1)
    rank = _int(env, "RANK", 0)
    local_rank = _int(env, "LOCAL_RANK", rank if world_size == 1 else None)
    local_world_size = _int(env, "LOCAL_WORLD_SIZE", world_size)
    if world_size < 1 or local_world_size < 1 or world_size % local_world_size:
        raise ConfigError(
            f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world_size}",
            "use the same --nproc-per-node on every node",
        )
    if not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise ConfigError(
            f"RANK={rank} / LOCAL_RANK={local_rank} out of range for "
            f"WORLD_SIZE={world_size} / LOCAL_WORLD_SIZE={local_world_size}",
            "start with torchrun, which sets them consistently",
        )
    node_rank = _int(env, "GROUP_RANK", rank // local_world_size)
    return DistEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=node_rank,
        nnodes=world_size // local_world_size,
    )
