"""`orchestrator compare` gates a regression in a script, and `orchestrator serve` refuses what
it must: a public address without a token, a missing web extra, a port in use."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support.store_fixtures import CliResult
from tests.support.web_fixtures import REGRESSED_RUN

BASELINE = "20260124-101500-2x8-metax"  # the repeat before the regressed one
HEALTHY = "20260122-101500-2x8-metax"


def test_compare_fails_on_a_regression_beyond_the_threshold(
    run_cli: Callable[..., CliResult], sqlite_web_store: str
) -> None:
    gated = run_cli(
        "--db", sqlite_web_store, "compare", BASELINE, REGRESSED_RUN, "--fail-below", "p_core=-5%"
    )
    assert gated.exit_code == 1
    assert gated.err.splitlines() == [
        f"regression: {REGRESSED_RUN}: p_core -21.1% against the baseline (limit: p_core below -5%)"
    ]
    assert "p_core (img/s)" in gated.out and "-21.1%" in gated.out
    passed = run_cli(
        "--db", sqlite_web_store, "compare", BASELINE, HEALTHY, "--fail-below", "p_core=-5%"
    )
    assert passed.exit_code == 0, passed.err
    assert passed.err == ""
    # A looser limit lets the regressed run through; an absolute one (img/s) catches it.
    loose = run_cli(
        "--db", sqlite_web_store, "compare", BASELINE, REGRESSED_RUN, "--fail-below", "p_core=-25%"
    )
    assert loose.exit_code == 0
    absolute = run_cli(
        "--db", sqlite_web_store, "compare", BASELINE, REGRESSED_RUN, "--fail-below", "p_core=-100"
    )
    assert absolute.exit_code == 1
    slower = run_cli(
        "--db",
        sqlite_web_store,
        "compare",
        BASELINE,
        REGRESSED_RUN,
        "--fail-above",
        "e2e_time=+10%",
    )
    assert slower.exit_code == 1 and "e2e_time +18.6%" in slower.err


def test_compare_formats(run_cli: Callable[..., CliResult], sqlite_web_store: str) -> None:
    result = run_cli(
        "--db", sqlite_web_store, "compare", BASELINE, REGRESSED_RUN, "--format", "json"
    )
    assert result.exit_code == 0
    document = json.loads(result.out)
    assert document["baseline"] == BASELINE
    p_core = document["changes"][0]["p_core"]
    base = document["sides"][0]["metrics"]["p_core"]
    new = document["sides"][1]["metrics"]["p_core"]
    assert p_core["absolute"] == pytest.approx(new - base)
    assert p_core["relative"] == pytest.approx((new - base) / base)
    markdown = run_cli(
        "--db",
        sqlite_web_store,
        "compare",
        "metax:1x8:fp32:bs=8, lr=0.0001, epochs=2",
        "metax:2x8:fp32",
        "--format",
        "markdown",
    )
    assert markdown.exit_code == 0, markdown.err
    assert (
        "| --set batch_size | 8 | 16 |" not in markdown.out
    )  # the mean side shows its newest run's --set
    assert "metax:2x8:fp32 (mean of 7 runs)" in markdown.out
    csv = run_cli("--db", sqlite_web_store, "compare", BASELINE, HEALTHY, "--format", "csv")
    assert csv.out.splitlines()[0] == (
        "side,kind,metric,value,change,change_relative,n,ci_low,ci_high,cv,welch_p,significant"
    )
    assert len(csv.out.splitlines()) == 1 + 2 * 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((BASELINE,), "compare needs two or more runs or configurations"),
        (
            (BASELINE, REGRESSED_RUN, "--fail-below", "p_core<5"),
            "--fail-below 'p_core<5' is not METRIC=CHANGE",
        ),
        (
            (BASELINE, REGRESSED_RUN, "--fail-below", "speed=-5%"),
            "--fail-below names unknown metric 'speed'",
        ),
        ((BASELINE, "no-such-run"), "no run 'no-such-run' in the results store"),
        ((BASELINE, "metax:2x8:bf16"), "no succeeded run of configuration 'metax:2x8:bf16'"),
        ((BASELINE, "metax:1x8:fp32"), "matches 2 configurations"),
    ],
)
def test_compare_bad_input_is_one_line(
    run_cli: Callable[..., CliResult], sqlite_web_store: str, args: tuple[str, ...], message: str
) -> None:
    result = run_cli("--db", sqlite_web_store, "compare", *args)
    assert result.exit_code == 2
    assert len(result.err.splitlines()) == 1 and message in result.err
    assert "Traceback" not in result.err


def test_serve_refuses_a_public_address_without_a_token(
    run_cli: Callable[..., CliResult], sqlite_web_store: str
) -> None:
    result = run_cli("--db", sqlite_web_store, "serve", "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert result.err.startswith("error: serving on 0.0.0.0 would show the results to anyone")
    short = run_cli("--db", sqlite_web_store, "serve", "--host", "0.0.0.0", "--token", "short")
    assert short.exit_code == 2 and "needs at least 16" in short.err


def test_serve_says_how_to_install_the_web_extra(
    run_cli: Callable[..., CliResult], sqlite_web_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "starlette" else real(name, *a),
    )
    result = run_cli("--db", sqlite_web_store, "serve")
    assert result.exit_code == 2
    assert result.err.splitlines() == [
        "error: orchestrator serve needs the web extra (starlette not installed) "
        "(install it with: pip install 'orchestrator[web]')"
    ]


def test_serve_reports_a_port_in_use(
    run_cli: Callable[..., CliResult], sqlite_web_store: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("--db", sqlite_web_store, "serve", "--port", str(port))
    assert result.exit_code == 2
    assert result.err.startswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_the_control_plane_never_imports_the_web_packages() -> None:
    code = (
        "import sys; from orchestrator.cli import _register; _register(); "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
