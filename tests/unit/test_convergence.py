"""Convergence checks (orchestrator/convergence.py): a run whose throughput changed while
it reached the target in more epochs, or ended at another mAP, is "faster, but converged
differently"; on the recorded 2x8 run's epoch curves, in `compare` and `report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.convergence import Curve, check, load_reference_file
from orchestrator.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REFERENCES = FIXTURES / "convergence" / "references.json"
RUN_2X8 = "20260114-101500-2x8-metax"
# References: reach 0.34 (95 % of their mean final 0.3607) at epoch 5 or 6; final 0.358-0.364.
REFS = [
    Curve("a", (0.10, 0.20, 0.27, 0.31, 0.335, 0.345, 0.358), 500.0),
    Curve("b", (0.11, 0.21, 0.28, 0.32, 0.343, 0.352, 0.364), 505.0),
    Curve("c", (0.10, 0.20, 0.27, 0.31, 0.330, 0.346, 0.360), 495.0),
]


def test_faster_but_converged_later_is_flagged() -> None:
    run = Curve("new", (0.08, 0.15, 0.22, 0.27, 0.30, 0.32, 0.335, 0.342, 0.350), 540.0)
    found = check(run, REFS)
    assert found is not None
    assert found.target == pytest.approx(0.95 * (0.358 + 0.364 + 0.360) / 3)
    assert (found.epochs, found.epochs_band) == (9, (5, 6))  # 0.342 < 0.3426 at epoch 8
    assert found.final_band == (0.358, 0.364)
    assert found.throughput_change == pytest.approx(540 / 500 - 1)
    assert found.epochs_outside and found.final_outside and found.flagged
    assert found.describe() == (
        "new: faster (p_core +8.0%), but converged differently: reached mAP 0.343 in 9 epochs "
        "(references: 5–6 epochs); final mAP 0.350 (references 0.358–0.364)"
    )


def test_faster_and_converged_alike_is_not_flagged() -> None:
    run = Curve("new", (0.10, 0.21, 0.27, 0.32, 0.336, 0.350, 0.361), 540.0)
    found = check(run, REFS)
    assert found is not None and not found.converged_differently and not found.flagged
    assert found.describe().startswith("new: p_core +8.0%; converged alike")


def test_without_a_reference_speed_the_verdict_is_only_how_it_converged() -> None:
    unmeasured = [Curve(r.run_id, r.maps, None) for r in REFS]
    differently = check(Curve("new", (0.10, 0.20, 0.27, 0.31, 0.33), 500.0), unmeasured)
    assert differently is not None and differently.throughput_change is None
    assert differently.describe().startswith("new: converged differently: did not reach ")
    alike = check(Curve("new", (0.10, 0.20, 0.27, 0.31, 0.335, 0.345, 0.36), 500.0), unmeasured)
    assert alike is not None and alike.describe().startswith("new: converged alike: reached ")


def test_same_speed_but_converged_differently_is_noted_not_flagged() -> None:
    run = Curve("new", (0.10, 0.20, 0.27, 0.31, 0.33, 0.34, 0.345), 500.0)  # a lower plateau
    found = check(run, REFS)
    assert found is not None and found.epochs == 7
    assert found.epochs_outside and found.final_outside and found.converged_differently
    assert not found.throughput_changed and not found.flagged
    assert found.describe().startswith("new: p_core +0.0%; converged differently: ")


def test_never_reaching_the_target_is_outside() -> None:
    run = Curve("new", (0.05, 0.10, 0.15), 560.0)
    found = check(run, REFS)
    assert found is not None and found.epochs is None and found.epochs_outside and found.flagged
    assert "did not reach mAP 0.343 (references: 5–6 epochs)" in found.describe()


def test_no_references_no_verdict() -> None:
    assert check(Curve("x", (0.1,), 1.0), []) is None
    assert check(Curve("x", (), 1.0), REFS) is None
    assert check(REFS[0], [REFS[0]]) is None  # a run is not its own reference


def test_reference_file_and_its_mistakes(tmp_path: Path) -> None:
    curves, target = load_reference_file(str(REFERENCES))
    assert [c.run_id for c in curves] == [RUN_2X8, "ref-repeat-1", "ref-repeat-2"]
    assert curves[0].maps == (0.118, 0.188) and target is None
    bad = tmp_path / "bad.json"
    where = f"reference file {bad}"
    for content, line in (
        ("{", f"{where} is not readable JSON ("),
        (
            '{"runs": []}',
            f'{where} has no runs (write {{"runs": [{{"run_id": ..., "map": [...]}}]}})',
        ),
        (
            '{"runs": [{"map": ["a"]}]}',
            f"{where}: runs[0].map must be a list of numbers (the mAP after each epoch)",
        ),
        (
            '{"runs": [{"map": [0.1], "p_core": "fast"}]}',
            f"{where}: runs[0].p_core is not a number (e.g. 512.0)",
        ),
        (
            '{"runs": [{"map": [0.1]}], "target": "x"}',
            f"{where}: target is not a number (e.g. 0.35, or leave it out)",
        ),
    ):
        bad.write_text(content)
        with pytest.raises(ConfigError) as found:
            load_reference_file(str(bad))
        assert found.value.one_line().startswith(line), found.value.one_line()
    assert found.value.one_line() == line  # the whole line, remedy included
    with pytest.raises(ConfigError) as found:
        load_reference_file(str(tmp_path / "missing.json"))
    assert found.value.one_line() == (
        f"reference file {tmp_path / 'missing.json'} does not exist (check the path)"
    )
    bad.write_text("{")
    with pytest.raises(ConfigError) as found:
        load_reference_file(str(bad))
    assert found.value.one_line().endswith(") (fix the file)")


def _variant(run_copy: Any, new_id: str, day: int, core_factor: float, maps: list[float]) -> Path:
    """A repeat of the recorded 2x8 run: core time scaled, per-epoch mAP replaced."""
    folder = run_copy(RUN_2X8, new_id)
    for path in [folder / "manifest.json", *sorted((folder / "ranks").glob("*.json"))]:
        doc = json.loads(path.read_text())
        doc["run_id"] = new_id
        if "timings" in doc:
            times = doc["timings"]
            times["core_s"] *= core_factor
            for inner, outer in (("core_s", "train_no_eval_s"), ("train_no_eval_s", "train_s")):
                times[outer] = max(times[outer], times[inner])
            times["e2e_s"] = max(times["e2e_s"], times["train_s"])
            for epoch, value in zip(doc["epochs"], maps):
                epoch["map"] = value
                epoch["core_s"] *= core_factor
                epoch["train_s"] = max(epoch["train_s"], epoch["core_s"])
            doc["eval"]["map"] = maps[-1]
        else:
            for key in ("submitted_at", "started_at", "finished_at"):
                doc[key] = doc[key].replace("2026-01-14", f"2026-01-{14 + day:02d}")
        path.write_text(json.dumps(doc))
    return folder


@pytest.fixture
def recorded(sqlite_store: Any, sqlite_url: str, fixture_runs: Path, run_copy: Any) -> str:
    """The recorded 2x8 run, two repeats like it, and one 10 % faster that reached mAP 0.15
    after two epochs instead of 0.19."""
    sqlite_store.ingest(
        [
            fixture_runs / RUN_2X8,
            _variant(run_copy, "20260115-101500-2x8-metax", 1, 1.0, [0.121, 0.186]),
            _variant(run_copy, "20260116-101500-2x8-metax", 2, 1.0, [0.116, 0.190]),
            _variant(run_copy, "20260117-101500-2x8-metax-fast", 3, 1 / 1.1, [0.090, 0.150]),
            _variant(run_copy, "20260118-101500-2x8-metax-alike", 4, 1 / 1.1, [0.119, 0.189]),
        ]
    )
    return sqlite_url


def test_compare_flags_the_run_that_got_faster_by_converging_differently(
    run_cli: Any, recorded: str
) -> None:
    result = run_cli(
        "--db",
        recorded,
        "compare",
        RUN_2X8,
        "20260117-101500-2x8-metax-fast",
        "20260118-101500-2x8-metax-alike",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.err
    checks = {c["run_id"]: c for c in json.loads(result.out)["convergence"]}
    fast = checks["20260117-101500-2x8-metax-fast"]
    assert fast["flagged"] and fast["references"] == [
        RUN_2X8,
        "20260115-101500-2x8-metax",
        "20260116-101500-2x8-metax",
    ]
    assert fast["throughput_change"] == pytest.approx(0.1, abs=0.01)
    assert fast["epochs_to_target"] is None and fast["references_epochs"] == [2, 2]
    assert fast["final_map"] == pytest.approx(0.150)
    assert fast["references_final_map"] == [pytest.approx(0.186), pytest.approx(0.190)]
    assert not checks["20260118-101500-2x8-metax-alike"]["flagged"]
    assert result.err.count("convergence: ") == 1
    assert "convergence: 20260117-101500-2x8-metax-fast: faster (p_core +" in result.err
    assert "but converged differently" in result.err


def test_compare_with_a_reference_file(run_cli: Any, recorded: str) -> None:
    result = run_cli(
        "--db",
        recorded,
        "compare",
        RUN_2X8,
        "20260117-101500-2x8-metax-fast",
        "--reference",
        str(REFERENCES),
        "--format",
        "markdown",
    )
    assert result.exit_code == 0, result.err
    section = result.out.split("#### Convergence", 1)[1]
    assert "- 20260117-101500-2x8-metax-fast: faster (p_core +" in section
    # the recorded run is one of the file's references: it converged alike
    assert f"- {RUN_2X8}: " in section and "converged alike" in section


def test_report_lists_the_convergence_flag(run_cli: Any, recorded: str) -> None:
    out = run_cli("--db", recorded, "report", "--vendor", "metax").out
    section = out.split("#### Convergence", 1)[1]
    assert (
        section.strip()
        .splitlines()[0]
        .startswith("- 20260117-101500-2x8-metax-fast: faster (p_core +")
    )
    assert "alike" not in section  # only the flagged runs are listed


def test_the_run_page_shows_the_flag(recorded: str) -> None:
    from starlette.testclient import TestClient

    from orchestrator.web.app import create_app

    with TestClient(create_app(recorded), raise_server_exceptions=False) as client:
        page = client.get("/runs/20260117-101500-2x8-metax-fast")
        alike = client.get("/runs/20260118-101500-2x8-metax-alike")
        first = client.get(f"/runs/{RUN_2X8}")
    assert page.status_code == 200
    line = page.text.split('id="convergence"', 1)[1].split("</p>", 1)[0]
    assert page.text.count('<p id="convergence" class="warning">') == 1
    assert "Convergence against 3 reference runs of this configuration: " in line
    assert "20260117-101500-2x8-metax-fast: faster (p_core +" in line
    assert "but converged differently" in line
    assert "converged alike" in alike.text.split('id="convergence"', 1)[1].split("</p>", 1)[0]
    assert 'id="convergence"' not in first.text  # the first run has no references


# -- the rules at their edges (each asserts the value a planted off-by-one would change) -----


def _band(epochs: int | None, band: tuple[int | None, int | None], final: float = 0.36) -> Any:
    from orchestrator.convergence import Convergence

    return Convergence("r", ("a",), 0.34, epochs, band, final, (0.358, 0.364), None)


def test_the_epochs_band_includes_its_ends_and_never_is_a_value_of_its_own() -> None:
    assert not _band(5, (5, 6)).epochs_outside and not _band(6, (5, 6)).epochs_outside
    assert _band(4, (5, 6)).epochs_outside and _band(7, (5, 6)).epochs_outside
    # the references never reached the target: so did the run (alike) or it did (different)
    assert not _band(None, (None, None)).epochs_outside
    assert _band(3, (None, None)).epochs_outside
    assert _band(None, (5, 6)).epochs_outside


def test_the_final_map_band_is_widened_by_the_tolerance_on_both_sides() -> None:
    from orchestrator.convergence import MAP_TOLERANCE

    assert MAP_TOLERANCE == 0.005
    assert not _band(5, (5, 6), 0.358 - 0.0049).final_outside
    assert not _band(5, (5, 6), 0.364 + 0.0049).final_outside
    assert _band(5, (5, 6), 0.358 - 0.0051).final_outside
    assert _band(5, (5, 6), 0.364 + 0.0051).final_outside
    assert _band(5, (5, 6), 0.3529).converged_differently
    assert not _band(5, (5, 6), 0.361).converged_differently


def test_a_throughput_change_of_two_percent_either_way_counts() -> None:
    from orchestrator.convergence import THROUGHPUT_CHANGE, Convergence

    assert THROUGHPUT_CHANGE == 0.02

    def changed(change: float | None) -> bool:
        return Convergence("r", (), 0.3, 5, (5, 6), 0.36, (0.358, 0.364), change).throughput_changed

    assert changed(0.02) and changed(-0.02) and changed(0.5)
    assert not changed(0.0199) and not changed(-0.0199) and not changed(None)


def test_the_target_is_reached_at_the_first_epoch_at_or_above_it() -> None:
    curve = Curve("r", (0.1, 0.3, 0.3, 0.4), None)
    assert curve.epochs_to(0.3) == 2
    assert curve.epochs_to(0.31) == 4
    assert curve.epochs_to(0.41) is None
    assert curve.epochs_to(0.1) == 1
    assert curve.final == 0.4 and Curve("e", (), None).final is None


def test_slower_and_converged_differently_is_flagged_and_says_slower() -> None:
    run = Curve("new", (0.10, 0.20, 0.27, 0.31, 0.33), 450.0)  # 10 % slower, a lower end
    found = check(run, REFS)
    assert found is not None and found.flagged
    assert found.throughput_change == pytest.approx(450 / 500 - 1)
    assert found.describe() == (
        "new: slower (p_core -10.0%), but converged differently: did not reach mAP 0.343 "
        "(references: 5–6 epochs); final mAP 0.330 (references 0.358–0.364)"
    )


def test_a_band_of_one_epoch_and_one_epoch_read_as_words() -> None:
    refs = [Curve("a", (0.40, 0.41), 100.0), Curve("b", (0.40, 0.42), 100.0)]
    found = check(Curve("new", (0.41,), None), refs)
    assert found is not None
    assert found.target == pytest.approx(0.95 * 0.415)
    assert (found.epochs, found.epochs_band) == (1, (1, 1))
    assert found.throughput_change is None and not found.flagged
    assert found.describe() == (
        "new: converged alike: reached mAP 0.394 in 1 epoch (references: 1 epoch); "
        "final mAP 0.410 (references 0.410–0.420)"
    )
    never = check(Curve("new", (0.1, 0.2), None), [Curve("a", (0.1, 0.2), None)], target=0.5)
    assert never is not None and never.epochs_band == (None, None) and not never.epochs_outside
    assert never.target == 0.5
    assert never.describe() == (
        "new: converged alike: did not reach mAP 0.500 (references: never); "
        "final mAP 0.200 (references 0.200–0.200)"
    )


def test_references_without_an_evaluated_epoch_or_a_speed_are_left_out() -> None:
    refs = [*REFS, Curve("no-eval", (), 900.0), Curve("no-speed", (0.30, 0.35), None)]
    found = check(Curve("new", (0.2, 0.36), 500.0), refs)
    assert found is not None
    assert found.references == ("a", "b", "c", "no-speed")
    assert found.final_band == (0.35, 0.364)
    assert found.target == pytest.approx(0.95 * (0.358 + 0.364 + 0.360 + 0.35) / 4)
    assert found.throughput_change == pytest.approx(0.0)  # the mean of 500, 505, 495
    zero = check(Curve("new", (0.36,), 500.0), [Curve("z", (0.36,), 0.0)])
    assert zero is not None and zero.throughput_change is None  # no reference speed to compare


def test_as_dict_holds_every_field_and_the_sentence() -> None:
    run = Curve("new", (0.08, 0.15, 0.22, 0.27, 0.30, 0.32, 0.335, 0.342, 0.350), 540.0)
    found = check(run, REFS)
    assert found is not None
    assert found.as_dict() == {
        "run_id": "new",
        "references": ["a", "b", "c"],
        "target": pytest.approx(0.95 * (0.358 + 0.364 + 0.360) / 3),
        "epochs_to_target": 9,
        "references_epochs": [5, 6],
        "final_map": 0.350,
        "references_final_map": [0.358, 0.364],
        "throughput_change": pytest.approx(0.08),
        "converged_differently": True,
        "flagged": True,
        "text": found.describe(),
    }


def test_a_curve_from_the_stores_epoch_rows_is_in_epoch_order_without_unevaluated_ones() -> None:
    from orchestrator.convergence import curve_from_epochs

    rows = [{"epoch": 2, "map": 0.3}, {"epoch": 0, "map": 0.1}, {"epoch": 1, "map": None}]
    curve = curve_from_epochs("r", rows, "512.5")
    assert curve == Curve("r", (0.1, 0.3), 512.5)
    assert curve_from_epochs("r", rows, None) == Curve("r", (0.1, 0.3), None)
    assert curve_from_epochs("r", [{"epoch": 0, "map": None}], 1.0) is None


def test_a_reference_file_names_unnamed_runs_and_reads_its_target(tmp_path: Path) -> None:
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"target": 0.3, "runs": [{"map": [0.1, 2]}, {"map": [0.2]}]}))
    curves, target = load_reference_file(str(path))
    assert [c.run_id for c in curves] == ["reference-1", "reference-2"]
    assert curves[0].maps == (0.1, 2.0) and curves[0].p_core is None and target == 0.3
    for content, line in (
        ("[1, 2]", "has no runs"),
        ('{"runs": [{"map": [true]}]}', "runs[0].map must be a list of numbers"),
        ('{"runs": [{"map": []}]}', "runs[0].map must be a list of numbers"),
        ('{"runs": [{"map": [0.1]}, {"map": [NaN]}]}', "runs[1].map must be a list of numbers"),
        ('{"runs": [{"map": [0.1], "p_core": Infinity}]}', "runs[0].p_core is not a number"),
        ('{"runs": [{"map": [0.1]}], "target": false}', "target is not a number"),
        ('{"runs": ["x"]}', "runs[0].map must be a list of numbers"),
    ):
        path.write_text(content)
        with pytest.raises(ConfigError) as found:
            load_reference_file(str(path))
        assert line in found.value.one_line(), content
