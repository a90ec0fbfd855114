"""Who follows a run and whether that follower is still there (orchestrator/store/follower.py):
the holder strings encoded and decoded in one place, and the one rule of alive / gone /
lost-pending that the settling code and the run_followers view share."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.runs.lifecycle import follower_id
from orchestrator.store.follower import (
    SETTLE_MARGIN_S,
    Follower,
    follower_grace_s,
    follower_state,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("holder", "kind", "name", "described", "process"),
    [
        ("submit alice@lab1 pid 42", "submit", "alice@lab1 pid 42", None, ("lab1", 42)),
        ("attach bob@lab2 pid 7", "attach", "bob@lab2 pid 7", None, ("lab2", 7)),
        ("cancel root@lab1 pid 9", "cancel", "root@lab1 pid 9", None, ("lab1", 9)),
        ("submit lab1:42", "submit", "lab1:42", None, ("lab1", 42)),  # a Slurm submit
        ("lab1:42", "worker", "lab1:42", "worker lab1:42", ("lab1", 42)),
        ("heir", "worker", "heir", "worker heir", None),  # a worker started with --id heir
        ("submit", "worker", "submit", "worker submit", None),  # a worker named 'submit'
    ],
)
def test_a_holder_decodes_to_who_follows_and_encodes_back_unchanged(
    holder: str, kind: str, name: str, described: str | None, process: tuple[str, int] | None
) -> None:
    follower = Follower.decode(holder)
    assert (follower.kind, follower.name) == (kind, name)
    assert follower.encoded == holder
    assert follower.described() == (described or holder)
    assert follower.process() == process


def test_a_foreground_submit_names_itself_as_a_submit_follower() -> None:
    follower = Follower.decode(follower_id())
    assert follower.kind == "submit" and follower.process() is not None
    assert Follower.decode(follower_id("attach")).kind == "attach"


def test_the_rule_alive_gone_then_lost_pending_after_grace_and_margin() -> None:
    grace = 30.0
    expired = NOW - timedelta(seconds=1)
    settles = expired + timedelta(seconds=grace + SETTLE_MARGIN_S)
    assert follower_state(NOW + timedelta(seconds=1), grace, NOW) == "alive"
    assert follower_state(NOW, grace, NOW) == "gone"  # expiring now is expired
    assert follower_state(expired, grace, settles - timedelta(milliseconds=1)) == "gone"
    assert follower_state(expired, grace, settles) == "lost-pending"
    assert follower_state(None, grace, NOW) == "lost-pending"  # no lease left to wait for
    # A scheduler's job (no grace) is gone until adopted, never settled by the grace.
    assert follower_state(expired - timedelta(days=1), None, NOW) == "gone"
    assert follower_state(None, None, NOW) == "gone"
    assert follower_state(NOW + timedelta(seconds=1), None, NOW) == "alive"


def test_the_grace_comes_from_the_stored_cluster_file_numbers_only() -> None:
    def request(grace: object) -> dict[str, object]:
        return {"cluster_data": {"cluster": {"follower_grace_s": grace}}}

    assert follower_grace_s(request(15)) == 15.0
    assert follower_grace_s(request(20.5)) == 20.5
    assert follower_grace_s(request("15")) == 180.0
    assert follower_grace_s(request(True)) == 180.0
    assert follower_grace_s({"cluster_data": None}) == 180.0
    assert follower_grace_s({}) == 180.0
