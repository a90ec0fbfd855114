"""A foreground run's follower on SQLite and the pure parts of adoption: one transaction takes
the row and the node leases (or refuses naming the holder), expiry makes an orphan, one adopter
takes it, the grace decides when it is settled, and how an adopted run's ending is decided from
its nodes' states (orchestrator/store/leases.py, store/orphans.py, store/follower.py, backends/ssh/adoption.py, backends/ssh/guard.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.ssh import adoption
from orchestrator.backends.ssh.guard import (
    POLL_S,
    NodeState,
    guard_grace_s,
    heartbeat_every_s,
    parse_state,
)
from orchestrator.backends.ssh.launch import Execution
from orchestrator.clock import utcnow
from orchestrator.config import parse_cluster
from orchestrator.errors import ConfigError
from orchestrator.runfolder.folder import load_manifest
from orchestrator.runs.failure import Failure
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.runs.request import cluster_from, encode_request
from orchestrator.specs import Topology
from orchestrator.store import cancel, leases, orphans
from orchestrator.store import queue as stored_queue
from orchestrator.store.follower import SETTLE_MARGIN_S
from orchestrator.store.models import NodeLease
from tests.support.store_fixtures import RUN_2X8

NODES = ("c500-01", "c500-02")


def _manifest(fixture_runs: Path, run_id: str) -> Any:
    manifest = load_manifest(fixture_runs / RUN_2X8 / "manifest.json")
    return replace(manifest, run_id=run_id, status="running")


def _follow(store: Any, fixture_runs: Path, run_id: str, holder: str, ttl: float = 60) -> Any:
    manifest = _manifest(fixture_runs, run_id)
    request = {"topology": "2x8", "cluster_data": None, "cluster_key": "k"}
    leases.create_followed_run(store, manifest, request, NODES, holder, ttl)
    return manifest


def test_a_followed_run_holds_its_nodes_and_a_second_run_is_refused_naming_the_first(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    manifest = _follow(sqlite_store, fixture_runs, "r1", "submit root@h pid 7")
    with sqlite_store.reading() as conn:
        assert stored_queue.read_busy(conn) == {
            (manifest.cluster, "c500-01"): "run r1",
            (manifest.cluster, "c500-02"): "run r1",
        }
    with pytest.raises(leases.NodesBusy) as caught:
        _follow(sqlite_store, fixture_runs, "r2", "submit root@h pid 8")
    text = caught.value.one_line()
    assert text.startswith("nodes busy: c500-01, c500-02 held by run r1 (follower submit root@h")
    assert "lease until" in text and "`orchestrator cancel r1`" in text
    with sqlite_store.reading() as conn:  # nothing of r2 was written
        assert orphans.follow_state(conn, "r2") is None
    with pytest.raises(leases.NodesBusy):
        leases.check_nodes_free(sqlite_store, manifest.cluster, ["c500-02"])
    leases.check_nodes_free(sqlite_store, manifest.cluster, ["c500-03"])  # free: no error


def test_only_backends_with_a_queued_or_running_run_are_asked_to_settle(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    assert orphans.backends_with_active_runs(sqlite_store) == set()
    _follow(sqlite_store, fixture_runs, "r1", "submit root@h pid 7")
    assert orphans.backends_with_active_runs(sqlite_store) == {"ssh"}
    sqlite_store.set_status("r1", "failed", reason="ended by hand")
    assert orphans.backends_with_active_runs(sqlite_store) == set()


def test_a_follower_that_stops_renewing_leaves_an_orphan_that_one_adopter_takes(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    _follow(sqlite_store, fixture_runs, "r1", "submit root@h pid 7", ttl=60)
    assert orphans.find_orphans(sqlite_store, "ssh") == []  # renewed: not an orphan
    assert leases.renew(sqlite_store, "r1", "submit root@h pid 7", -1) == (2, False)  # expired
    (orphan,) = orphans.find_orphans(sqlite_store, "ssh")
    assert (orphan.run_id, set(orphan.nodes)) == ("r1", set(NODES))
    assert orphan.holders == ("submit root@h pid 7",)
    with sqlite_store.reading() as conn:
        busy = leases.nodes_busy(conn, _manifest(fixture_runs, "x").cluster, NODES)
    assert busy is not None and "stopped renewing at" in busy.message
    assert "awaiting adoption" in busy.message
    assert orphans.adopt(sqlite_store, "r1", "heir", 60)
    assert not orphans.adopt(sqlite_store, "r1", "late", 60)  # the heir renews it now
    assert orphans.find_orphans(sqlite_store, "ssh") == []
    assert leases.renew(sqlite_store, "r1", "submit root@h pid 7", 60) == (0, False)
    leases.release(sqlite_store, "r1")
    with sqlite_store.reading() as conn:
        assert stored_queue.read_busy(conn) == {}


def test_renew_reports_a_cancel_request_to_a_foreground_follower(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    _follow(sqlite_store, fixture_runs, "r1", "submit root@h pid 7")
    assert cancel.request_cancel(sqlite_store, "r1", "admin@h") == "requested"
    assert leases.renew(sqlite_store, "r1", "submit root@h pid 7", 60) == (2, True)


def test_settle_waits_for_the_grace_after_the_leases_expired(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    expired = utcnow() - timedelta(seconds=10)
    orphan = orphans.Orphan(
        "r1", {"cluster_data": None, "cluster_key": "e"}, NODES, ("x",), expired
    )
    grace = cluster_from(orphan.request).follower_grace_s  # the embedded default's
    assert grace == 180
    assert not adoption.settle_due(orphan)
    late = expired + timedelta(seconds=grace + SETTLE_MARGIN_S)
    assert not adoption.settle_due(orphan, late - timedelta(seconds=1))
    assert adoption.settle_due(orphan, late)
    assert SETTLE_MARGIN_S == 2 * POLL_S  # the store's margin: two of the node guard's polls


def test_the_follower_lease_and_the_guard_grace_follow_the_configured_grace() -> None:
    assert leases.follower_ttl_s(180) == 60  # capped at the worker lease
    assert leases.follower_ttl_s(15) == 5
    assert guard_grace_s(180, 60) == 180
    assert guard_grace_s(10, 60) == 120  # never before an adopter could see the lease expire
    assert heartbeat_every_s(180) == 5.0
    assert heartbeat_every_s(10) == 2.5


def test_node_state_lines_parse_into_exit_code_liveness_abandonment_and_log() -> None:
    assert parse_state("exit 0 120\nline a\nline b") == NodeState(
        0, False, None, 120, "line a\nline b"
    )
    assert parse_state("alive 7\n") == NodeState(None, True, None, 7, "")
    assert parse_state("gone 0 abandoned 1700000100 1700000000\n") == NodeState(
        None, False, 1700000100, 0, ""
    )
    assert parse_state("exit 143 9 abandoned 5 1\n").exit_code == 143
    assert parse_state("exit -1 0\n").exit_code == -1  # an empty exit file is not success
    assert parse_state("exit ? 0\n").exit_code == -1
    assert parse_state("alive 3\n").ended is False
    assert parse_state("gone 3\n").ended is True


def _adoptee(tmp_path: Path) -> adoption.Adoptee:
    from orchestrator.backends.ssh.submit import make_plan
    from orchestrator.config import embedded_default

    req = SubmitRequest(topology=Topology(1, 1))
    plan = make_plan(embedded_default(), req, run_id="r1")
    orphan = orphans.Orphan("r1", {}, ("localhost",), ("submit root@h pid 7",), utcnow())
    return adoption.Adoptee(orphan, plan, req, utcnow(), utcnow())


def _state(code: int | None, alive: bool = False, abandoned: int | None = None) -> NodeState:
    return NodeState(code, alive, abandoned, 0, "")


def test_an_adopted_run_ends_as_its_nodes_say(tmp_path: Path) -> None:
    who = _adoptee(tmp_path)
    end = adoption._ending
    assert end(who, {"localhost": _state(0)}, None, {}, tmp_path, "follow", None) == (
        "succeeded",
        None,
    )
    # Finished training wins over a guard that only stopped the sampler afterwards.
    assert end(who, {"localhost": _state(0, abandoned=5)}, None, {}, tmp_path, "settle", None)[
        0
    ] == ("succeeded")
    status, failure = end(
        who, {"localhost": _state(None, abandoned=5)}, None, {}, tmp_path, "settle", None
    )
    assert status == "lost" and failure is not None
    assert failure.reason.startswith("submit root@h pid 7 stopped following (its leases expired at")
    assert failure.reason.endswith("no follower within the grace; nodes localhost cleaned")
    status, failure = end(who, {"localhost": _state(1)}, None, {}, tmp_path, "follow", None)
    assert status == "failed" and failure is not None and "torchrun exit 1" in failure.reason
    status, failure = end(who, {"localhost": _state(None)}, None, {}, tmp_path, "follow", None)
    assert status == "lost" and failure is not None
    assert "workload on localhost never started or ended without an exit code" in failure.reason
    assert failure.reason.endswith("; nodes localhost cleaned")
    status, failure = end(
        who,
        {"localhost": _state(None, alive=True)},
        None,
        {},
        tmp_path,
        "cancel",
        "cancelled by me",
    )
    assert status == "cancelled" and failure is not None
    assert failure.reason.startswith("cancelled by me; submit root@h pid 7 stopped following")
    ran = Execution("succeeded", utcnow(), utcnow(), None, {"localhost": 0})
    status, failure = end(
        who,
        {"localhost": _state(None, alive=True)},
        ran,
        {"localhost": "x"},
        tmp_path,
        "follow",
        None,
    )
    assert status == "failed" and failure == Failure("collection failed: localhost: x")
    failed = Execution("failed", utcnow(), utcnow(), Failure("rank 0 died"), {})
    assert end(who, {}, failed, {}, tmp_path, "follow", None) == ("failed", Failure("rank 0 died"))


def test_runs_dir_of_an_adopted_run_is_its_submitters_when_this_machine_has_it(
    tmp_path: Path,
) -> None:
    assert adoption.runs_dir_for({"runs_dir": str(tmp_path)}, Path("runs")) == tmp_path
    gone = str(tmp_path / "elsewhere")
    assert adoption.runs_dir_for({"runs_dir": gone}, Path("runs")) == Path("runs")
    assert adoption.runs_dir_for({}, Path("runs")) == Path("runs")


def test_follower_grace_is_read_and_checked_from_the_cluster_file() -> None:
    from orchestrator.config import parse_cluster

    base = {"nodes": [{"name": "a", "address": "h"}]}
    assert parse_cluster(base, "c.toml").follower_grace_s == 180
    assert (
        parse_cluster({**base, "cluster": {"follower_grace_s": 30}}, "c.toml").follower_grace_s
        == 30
    )
    with pytest.raises(ConfigError) as caught:
        parse_cluster({**base, "cluster": {"follower_grace_s": 2}}, "c.toml")
    assert "cluster.follower_grace_s" in caught.value.one_line()
    assert "at least 6 seconds" in caught.value.one_line()


def test_lease_rows_name_the_cluster_node_run_and_holder(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    from sqlalchemy import select

    manifest = _follow(sqlite_store, fixture_runs, "r1", "submit root@h pid 7", ttl=30)
    with sqlite_store.reading() as conn:
        rows = conn.execute(
            select(
                NodeLease.cluster, NodeLease.node_name, NodeLease.run_id, NodeLease.holder
            ).order_by(NodeLease.node_name)
        ).all()
        (expires,) = {e for (e,) in conn.execute(select(NodeLease.expires_at))}
    assert [tuple(r) for r in rows] == [
        (manifest.cluster, n, "r1", "submit root@h pid 7") for n in NODES
    ]
    assert timedelta(seconds=25) < expires - utcnow() <= timedelta(seconds=30)


def test_an_adopted_runs_plan_keeps_the_devices_its_preflight_found(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    manifest = _manifest(fixture_runs, "r1")
    data = {
        "cluster": {"name": manifest.cluster, "vendor": "nvidia"},
        "nodes": [
            {"name": n, "address": f"10.0.0.{i}", "accelerators": 8} for i, n in enumerate(NODES, 1)
        ],
    }
    cluster = parse_cluster(data, "lab.toml")
    request = encode_request(cluster, SubmitRequest(topology=Topology(2, 2)), data)
    leases.create_followed_run(sqlite_store, manifest, request, NODES, "submit", 60)
    sqlite_store.record_environment("r1", NODES[0], 0, {"visible_devices_env": "6,7"})
    sqlite_store.record_environment("r1", NODES[1], 1, {"visible_devices_env": None})
    leases.renew(sqlite_store, "r1", "submit", -1)
    (orphan,) = orphans.find_orphans(sqlite_store, "ssh")
    plan = adoption.load(sqlite_store, orphan).plan
    assert [n.env_dict["CUDA_VISIBLE_DEVICES"] for n in plan.nodes] == ["6,7", "0,1"]


def test_a_cancel_request_stops_the_follower_naming_who_asked(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    from orchestrator.runs.keeper import LeaseKeeper
    from orchestrator.runs.stopping import StopCause, StopEvent

    holder = "submit root@h pid 7"
    _follow(sqlite_store, fixture_runs, "r1", holder)
    assert cancel.request_cancel(sqlite_store, "r1", "admin@lab1") == "requested"
    stop = StopEvent()  # a foreground submit: its signals and the run share one event
    with LeaseKeeper(sqlite_store, "r1", holder, 1.5, stop, stop):
        assert stop.wait(10)
    assert stop.cause == StopCause("cancelled by `orchestrator cancel` from admin@lab1", 4)


def test_a_slurm_cancel_note_names_who_asked_once() -> None:
    from orchestrator.runs.stopping import cancel_request_cause

    cause = cancel_request_cause("cancel requested by admin@lab1 (scancel 42)")
    assert cause.reason == "cancelled by `orchestrator cancel` from admin@lab1"
    assert cancel_request_cause(None).reason == "cancelled by `orchestrator cancel`"


def test_a_stopped_worker_passes_its_signal_on_to_the_run() -> None:
    from orchestrator.runs.stopping import StopEvent, pass_on, signal_cause

    worker_stop, run_stop = StopEvent(), StopEvent()
    worker_stop.stop(signal_cause("SIGTERM", "`orchestrator worker` pid 9 on lab1"))
    pass_on(worker_stop, run_stop)
    assert run_stop.cause is not None and run_stop.cause.exit_code == 143
    assert run_stop.cause.reason == "cancelled: `orchestrator worker` pid 9 on lab1 got SIGTERM"


@pytest.mark.parametrize(
    ("cause", "code", "message"),
    [
        (None, 4, "run r cancelled by `orchestrator cancel` from a@h"),
        ("SIGINT", 130, "run r cancelled: `x` pid 1 on h got SIGINT (Ctrl-C)"),
        ("SIGTERM", 143, "run r cancelled: `x` pid 1 on h got SIGTERM"),
    ],
)
def test_submit_exits_with_the_code_of_whoever_cancelled(
    cause: str | None, code: int, message: str, tmp_path: Path
) -> None:
    from orchestrator.errors import RunCancelled
    from orchestrator.runs.lifecycle import Outcome, raise_for
    from orchestrator.runs.stopping import cancel_request_cause, signal_cause

    stop = signal_cause(cause, "`x` pid 1 on h") if cause else None
    reason = (stop or cancel_request_cause("cancel requested by a@h")).reason
    outcome = Outcome("r", "cancelled", tmp_path, Failure(reason), None)
    with pytest.raises(RunCancelled) as raised:
        raise_for(outcome, stop)
    assert (raised.value.exit_code, raised.value.message) == (code, message)


def test_a_follower_on_this_host_is_alive_or_gone_by_its_pid() -> None:
    import os
    import subprocess
    import sys

    from orchestrator.runs.liveness import holder_process, liveness, pid_alive

    assert holder_process("submit alice@lab1 pid 42") == ("lab1", 42)
    assert holder_process("attach alice@lab1 pid 7") == ("lab1", 7)
    assert holder_process("lab1:42") == ("lab1", 42)
    assert holder_process("w1") is None  # a worker started with --id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert pid_alive(os.getpid()) and not pid_alive(dead.pid)
    assert liveness("submit a@lab1 pid 42", here="lab1", alive=lambda pid: pid != 42) is False
    assert liveness("submit a@lab2 pid 42", here="lab1", alive=lambda pid: True) is None


def test_queue_names_a_dead_follower_before_its_lease_runs_out(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    _follow(sqlite_store, fixture_runs, "r1", "submit root@h pid 7", ttl=60)
    with sqlite_store.reading() as conn:
        gone = leases.describe_leases(conn, lambda holder: False)["r1"]
        alive = leases.describe_leases(conn, lambda holder: True)["r1"]
        unknown = leases.describe_leases(conn)["r1"]
    assert gone.startswith(
        "submit root@h pid 7 on c500-01, c500-02, follower gone (no such process on this "
        "host), its lease runs out at "
    )
    assert gone.endswith("; then a worker or `orchestrator attach r1` adopts the run")
    assert alive.endswith(" (follower alive)") and "lease until " in alive
    assert "lease until " in unknown and "alive" not in unknown and "gone" not in unknown


def test_attach_says_it_waits_for_a_dead_followers_lease_not_still_running() -> None:
    import io

    from rich.console import Console

    from orchestrator.backends.ssh.adoption import _LeaseWait
    from orchestrator.runs.progress import ProgressView

    out = io.StringIO()
    view = ProgressView("r1", Console(file=out, force_terminal=False, width=200), level=0)
    expires = utcnow() + timedelta(seconds=40)
    orphan = orphans.Orphan("r1", {}, NODES, ("submit root@nowhere pid 7",), expires)
    waiting = _LeaseWait(view)
    waiting.check(orphan)  # first seen: nothing to say yet
    assert out.getvalue() == ""
    waiting.silence.since -= 16  # its expiry has not moved for 16 s: not renewed
    waiting.check(orphan)
    waiting.check(orphan)  # said once
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert (
        "waiting for the lease: submit root@nowhere pid 7 stopped renewing its lease 16 s ago;"
        in lines[0]
    )
    assert f"it runs out at {expires.strftime('%H:%M:%S')} UTC (in " in lines[0]
    assert lines[0].endswith("then this attach adopts the run: collects, stores and cleans it")


def test_a_signal_to_attach_names_the_process_and_does_not_promise_to_stop_a_watched_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os
    import signal
    import socket

    import click

    from orchestrator.cli import cli
    from orchestrator.cli.attach_cmd import STOP_LINE as announce
    from orchestrator.cli.attach_cmd import attach
    from orchestrator.cli.context import stop_on_signals

    assert "every node" not in announce and "a watched one goes on" in announce
    # Inside `orchestrator attach`'s own click context, as the command runs: the name then
    # does not depend on whatever click program runs pytest (mutmut is one).
    root = click.Context(cli, info_name="orchestrator")
    with root, click.Context(attach, parent=root, info_name="attach"):
        with stop_on_signals(announce=announce) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(5)
    assert capsys.readouterr().err == f"\nSIGTERM: {announce}\n"
    assert stop.cause is not None and stop.cause.exit_code == 143
    assert stop.cause.reason == (
        f"cancelled: `orchestrator attach` pid {os.getpid()} on {socket.gethostname()} got SIGTERM"
    )
