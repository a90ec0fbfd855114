"""The workload under real torchrun: 2 processes with gloo, two "nodes" on one machine, and a
rank that fails while the other waits for it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.workload_fixtures import (
    REPO,
    TINY,
    WorkloadRun,
    free_port,
    make_synth,
    parse_events,
    run_torchrun,
    torchrun_cmd,
    workload_env,
)
from workload.faster_rcnn import result_format

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, synth_coco, backbone_checkpoint):
    out = tmp_path_factory.mktemp("two-rank") / "out"
    args = [
        "--data-dir", str(synth_coco),
        "--backbone-weights", str(backbone_checkpoint),
        "--max-iters", "3",
        "--eval-max-images", "5",
        "--lr", "0.001",
        "--log-every", "100",  # every progress event below comes from --progress-every-s
        "--progress-every-s", "0.001",
        "--run-id", "test-two-rank",
        *TINY,
    ]  # fmt: skip
    return run_torchrun(args, out, nproc=2)


@pytest.fixture(scope="module")
def two_rank_docs(two_rank_run):
    assert two_rank_run.returncode == 0, two_rank_run.explain()
    files = two_rank_run.rank_files()
    assert [f.name for f in files] == ["rank-00000.json", "rank-00001.json"], two_rank_run.explain()
    return [result_format.load(str(f)) for f in files]  # load() validates against the schema


def test_both_rank_files_are_valid_and_ok(two_rank_docs):
    for rank, doc in enumerate(two_rank_docs):
        assert doc["status"] == "ok" and doc["error"] is None
        ident = doc["identity"]
        assert (ident["rank"], ident["local_rank"], ident["world_size"]) == (rank, rank, 2)
        assert (ident["nnodes"], ident["node_rank"], ident["local_world_size"]) == (1, 0, 2)
        assert doc["run_id"] == "test-two-rank"
        assert doc["config"]["backend"] == "gloo" and doc["config"]["device"] == "cpu"
        assert doc["config"]["hparams"]["trainable_backbone_layers"] == 3  # weights were loaded
        assert doc["config"]["hparams"]["lr"] == 0.001 and doc["config"]["max_iters"] == 3


def test_counts_are_consistent(two_rank_docs):
    batch = two_rank_docs[0]["config"]["batch_size"]
    rank_images = [d["samples"]["rank_images"] for d in two_rank_docs]
    for doc in two_rank_docs:
        samples = doc["samples"]
        assert samples["rank_iterations"] == 3
        assert samples["rank_images"] == 3 * batch
        assert samples["global_images"] == sum(rank_images) == 12
        assert sum(e["images"] for e in doc["epochs"]) == samples["rank_images"]
        assert sum(e["iterations"] for e in doc["epochs"]) == samples["rank_iterations"]
        assert samples["epochs_completed"] == len(doc["epochs"]) == 1
        assert doc["epochs"][0]["complete"] is False  # 3 of 4 iterations: max-iters cut it
        assert doc["eval"]["images"] == 5
    # every rank records the same global evaluation and loss
    assert two_rank_docs[0]["eval"] == two_rank_docs[1]["eval"]
    assert two_rank_docs[0]["epochs"][0]["loss"] == two_rank_docs[1]["epochs"][0]["loss"]


def test_timings_nest_and_throughputs_follow_from_them(two_rank_run, two_rank_docs):
    global_images = two_rank_docs[0]["samples"]["global_images"]
    for doc in two_rank_docs:
        t = doc["timings"]
        assert 0 < t["core_s"] <= t["train_no_eval_s"] <= t["train_s"] <= t["e2e_s"]
        assert t["train_no_eval_s"] + t["eval_s"] <= t["train_s"] + 1e-6
        assert t["init_s"] + t["train_s"] <= t["e2e_s"] + 1e-6
        assert t["end_unix"] - t["start_unix"] == pytest.approx(t["e2e_s"])
        epoch = doc["epochs"][0]
        assert epoch["core_s"] == pytest.approx(t["core_s"])
        assert epoch["train_s"] == pytest.approx(t["train_no_eval_s"])
        assert epoch["core_s"] + epoch["data_s"] == pytest.approx(epoch["train_s"], abs=1e-6)
        # each rank: the global image count over its own times (FlagPerf's formula per rank)
        p = doc["throughput"]
        assert p["p_whole"] == pytest.approx(global_images / t["train_s"])
        assert p["p_train"] == pytest.approx(global_images / t["train_no_eval_s"])
        assert p["p_core"] == pytest.approx(global_images / t["core_s"])
        assert p["p_core"] >= p["p_train"] >= p["p_whole"] > 0
        assert doc["memory"] == {
            "peak_allocated_bytes": None,
            "peak_reserved_bytes": None,
            "total_bytes": None,
        }
    # the run: global images over the slowest rank's time, i.e. the smallest rank value
    done = two_rank_run.events_of("done")[-1]
    for key in ("p_whole", "p_train", "p_core"):
        assert done[key] == pytest.approx(min(d["throughput"][key] for d in two_rank_docs))


def test_progress_events_on_stdout(two_rank_run, two_rank_docs):
    events = two_rank_run.events
    kinds = [e["event"] for e in events]
    assert kinds[0] == "phase" and kinds[1] == "start" and kinds[-1] == "done"
    assert kinds.count("start") == 1  # rank 0 only
    start = two_rank_run.events_of("start")[0]
    assert (start["world_size"], start["train_images"], start["val_images"]) == (
        2,
        16,
        5,
    )  # 2 empty dropped
    progress = two_rank_run.events_of("progress")
    assert [e["iteration"] for e in progress] == [1, 2, 3]  # by time, not every 100 iterations
    for e in progress:
        assert e["epoch"] == 0 and e["iterations"] == 3 and e["steps"] == 3
        assert e["loss"] > 0 and e["images_per_s"] > 0 and e["eta_s"] >= 0 and e["lr"] > 0
        assert e["epoch_eta_s"] >= 0
    assert progress[-1]["eta_s"] == 0.0 and progress[-1]["epoch_eta_s"] == 0.0
    phases = [(e["phase"], e.get("epoch")) for e in two_rank_run.events_of("phase")]
    assert phases == [("init", None), ("training", 0), ("evaluation", 0)]
    # the phase events come in order with the others: init before start, training before
    # the first progress event, evaluation before the eval result
    order = [e["event"] if e["event"] != "phase" else e["phase"] for e in events]
    assert order.index("init") < order.index("start") < order.index("training")
    assert order.index("training") < order.index("progress") < order.index("evaluation")
    assert order.index("evaluation") < order.index("eval")
    # evaluation progress by time: rank 0's images (3 of the 5) times the world size, capped
    seen = [
        (e["images"], e["total"], e["scoring"]) for e in two_rank_run.events_of("eval_progress")
    ]
    assert seen[-1] == (5, 5, True), seen  # inference over: COCOeval scores it
    assert len(seen) >= 2 and all(0 < d <= 5 and t == 5 and not s for d, t, s in seen[:-1]), seen
    assert [e["epoch"] for e in two_rank_run.events_of("epoch_end")] == [0]
    (epoch_end,) = two_rank_run.events_of("epoch_end")
    assert (epoch_end["skipped_steps"], epoch_end["loss_scale"]) == (0, None)  # fp32: no scaling
    assert [(e["skipped_steps"], e["loss_scale"]) for e in two_rank_docs[0]["epochs"]] == [
        (0, None)
    ]
    (evaluation,) = two_rank_run.events_of("eval")
    assert evaluation["map"] == two_rank_docs[0]["eval"]["map"]
    done = events[-1]
    assert done["status"] == "ok" and done["map"] == two_rank_docs[0]["eval"]["map"]
    non_event = [
        line
        for line in two_rank_run.stdout.splitlines()
        if line and not line.startswith('{"event"')
    ]
    assert non_event == []


def test_two_nodes_on_one_machine(tmp_path, synth_coco):
    """Two torchrun agents (--nnodes 2, node rank 0 and 1), each with its own output folder as on
    two machines, rendezvous on a loopback master; CPU amp (bfloat16 autocast) on the way."""
    port = free_port()
    args = [
        "--data-dir",
        str(synth_coco),
        "--max-iters",
        "2",
        "--no-eval",
        "--precision",
        "amp",
        *TINY,
    ]
    procs = []
    for node in (0, 1):
        out = tmp_path / f"node{node}"
        cmd = torchrun_cmd(1, port, nnodes=2, node_rank=node) + [*args, "--output-dir", str(out)]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=str(REPO),
                env=workload_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    runs = []
    for node, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=300)
        runs.append(
            WorkloadRun(
                proc.returncode, stdout, stderr, tmp_path / f"node{node}", parse_events(stdout)
            )
        )
    for node, run in enumerate(runs):
        assert run.returncode == 0, run.explain()
        (path,) = run.rank_files()
        assert path.name == result_format.file_name(node)
        doc = result_format.load(str(path))
        ident = doc["identity"]
        assert (ident["rank"], ident["node_rank"], ident["nnodes"]) == (node, node, 2)
        assert (ident["world_size"], ident["local_world_size"], ident["local_rank"]) == (2, 1, 0)
        assert doc["samples"]["global_images"] == 2 * doc["samples"]["rank_images"] == 8
        assert doc["config"]["precision"] == "amp" and doc["eval"] is None
    assert runs[0].events_of("done") and not runs[1].events  # events come from rank 0 only


def _processes_mentioning(text: str):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(pid)
    return found


def test_a_failing_rank_does_not_hang_the_other(tmp_path):
    data = make_synth(tmp_path / "coco", images=4, val_images=1)
    broken = data / "train2017" / "000000000002.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    started = time.monotonic()
    run = run_torchrun(
        [
            "--data-dir",
            str(data),
            "--batch-size",
            "1",
            "--max-iters",
            "2",
            "--no-eval",
            "--dist-timeout-s",
            "60",
            *TINY,
        ],
        out,
        nproc=2,
        timeout=240,
    )
    elapsed = time.monotonic() - started
    assert run.returncode != 0, run.explain()
    docs = [result_format.load(str(f)) for f in run.rank_files()]
    assert len(docs) == 2, run.explain()
    assert all(d["status"] == "failed" for d in docs)
    culprits = [d for d in docs if d["error"]["type"] == "DatasetError"]
    assert len(culprits) == 1, [d["error"] for d in docs]
    assert f"cannot read image {broken}" in culprits[0]["error"]["message"]
    assert elapsed < 200
    assert _processes_mentioning(str(out)) == []  # nothing left running
