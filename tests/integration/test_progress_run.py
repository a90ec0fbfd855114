"""What a person sees of a real run (this machine as its only node, `address = "local"`, the
real workload under torchrun): in a log, one line per phase and a final summary line; on a
terminal (a pseudo-terminal here), a live bar whose total is known."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import cli_env, run_cli, set_args

pytestmark = [pytest.mark.torch]

PHASE_LINE = re.compile(r"^\s+\d+\.\ds  ([a-z]+)[: ]")
SUMMARY = re.compile(
    r"^succeeded: run (\S+) in (?:\d+\.\d s|\d+m\d\d\.\ds), p_core [\d.]+ img/s, "
    r"mAP \d\.\d{3}, "
    r"run folder runs/(\S+)$"
)


def _local_cluster(tmp_path: Path) -> Path:
    """The README's smallest cluster file; its dataset is wrong on purpose (--data-dir wins).
    A free rendezvous port: 29500 may be another run's on a shared machine."""
    from tests.support.workload_fixtures import free_port

    path = tmp_path / "local.toml"
    path.write_text(
        f"[cluster]\nmaster_port = {free_port()}\n\n"
        "[case]\n"
        f"data_dir = {json.dumps(str(tmp_path / 'not-here'))}\n"
        'backbone_weights = "none"\n\n'
        "[[nodes]]\n"
        'name = "this-machine"\n'
        'address = "local"\n'
        "accelerators = 1\n"
        f"python = {json.dumps(sys.executable)}\n"
        f"workdir = {json.dumps(str(tmp_path / 'node'))}\n"
    )
    return path


def test_a_run_in_a_log_has_a_line_per_phase_and_ends_with_its_summary(tiny_coco, tmp_path):
    cfg = _local_cluster(tmp_path)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["submit", "1x1", "--data-dir", str(tiny_coco), *set_args(), "--cluster", str(cfg)]
    proc = run_cli([*args, "--db", db], tmp_path)  # global options after the command
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    phases = [m.group(1) for line in lines if (m := PHASE_LINE.match(line))]
    order = ["connect", "preflight", "staging", "starting", "init", "training"]
    order += ["evaluation", "finishing", "collecting", "publishing"]
    firsts = [phases.index(p) for p in order]  # ValueError: a phase without its line
    assert firsts == sorted(firsts), phases
    assert re.search(r"^\s+\d+\.\ds  preflight this-machine: ok, \d+ checks in", proc.stderr, re.M)
    summary = SUMMARY.match(lines[-1])
    assert summary and summary.group(1) == summary.group(2), lines[-1]
    run_id = summary.group(1)
    # --data-dir is what the run read and what it recorded
    manifest = json.loads((tmp_path / "runs" / run_id / "manifest.json").read_text())
    assert manifest["data_dir"] == str(tiny_coco) and manifest["backbone_weights"] == "none"
    shown = run_cli(["--db", db, "runs", "show", run_id, "--format", "json"], tmp_path)
    assert json.loads(shown.stdout)["run"]["data_dir"] == str(tiny_coco)


def _run_in_a_pty(argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """The command with a terminal as stdin, stdout and stderr; everything it wrote."""
    master, slave = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="120", LINES="40")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed: the command ended
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(30), out.decode("utf-8", "replace")


def test_a_run_on_a_terminal_shows_a_bar_with_a_known_total(tiny_coco, tmp_path):
    cfg = _local_cluster(tmp_path)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    argv = [sys.executable, "-m", "orchestrator", "--cluster", str(cfg), "--db", db]
    argv += ["submit", "1x1", "--data-dir", str(tiny_coco), *set_args()]
    code, text = _run_in_a_pty(argv, tmp_path)
    assert code == 0, text[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "\x1b[?25l" in text  # a live display (cursor hidden while it draws)
    # the epoch's bar counts iterations against what the epoch will run: the loader's length,
    # or fewer where max_iters stops the run first (the start event gives both)
    planned = re.search(r"epoch\(s\) of (\d+) iterations \((\d+) planned\)", plain)
    assert planned, plain[-2000:]
    expected = str(min(int(planned.group(1)), int(planned.group(2))))
    counts = re.findall(r"epoch 1/1 .*? (\d+)/(\d+) it", plain)
    assert counts and all(
        total == expected and int(done) <= int(total) for done, total in counts
    ), (
        expected,
        sorted(set(counts)),
    )
    assert (expected, expected) in counts
    assert re.search(r"eval epoch 1 .*? \d/4 img", plain)  # evaluation: images of 4
    assert "None" not in plain
    assert re.search(r"succeeded: run \S+ in \S+( s)?, p_core \S+ img/s, mAP", plain)
