"""Mutation score of the control plane's pure core: do the unit tests catch small planted bugs?

    .venv/bin/python bench/mutation_score.py                 # every module below, one worker
    .venv/bin/python bench/mutation_score.py --module plan   # one module (name or path)
    .venv/bin/python bench/mutation_score.py --direct-tests  # only the modules' own unit tests
    .venv/bin/python bench/mutation_score.py --again         # after adding tests: rerun survivors

mutmut (the dev extra) plants one small change at a time ("mutant": `<` for `<=`, `and` for
`or`, a changed constant or string...) in a copy of this checkout and runs the unit tests that
exercise the changed function (tests/unit only: no services). A mutant is *killed* when a test
fails, *survived* when every test still passes. The score per module is

    killed / (mutants - equivalent)

where `equivalent` are mutants that cannot change behaviour, listed with the reason in
bench/mutation_equivalent.toml (matched by function and mutated line, so they survive edits
elsewhere in the file) and excluded. The surviving mutants' diffs go to --survivors. docs/testing.md
says how long it takes. Exit code: 0, or 1 when the total score is below --min-score.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = REPO / "bench" / "mutation_equivalent.toml"

# module file -> the functions mutated there (None: every function). For schedule.py only the
# scheduling decision: what can start, capacity, FIFO, reservations.
MODULES: dict[str, tuple[str, ...] | None] = {
    "orchestrator/specs.py": None,
    "orchestrator/plan.py": None,
    "orchestrator/store/metrics.py": None,
    "orchestrator/reports/stats.py": None,
    "orchestrator/regressions.py": None,
    "orchestrator/convergence.py": None,
    "orchestrator/schedule.py": ("schedule", "iter_schedule"),
    "orchestrator/transport/shell.py": None,
    "orchestrator/config.py": None,
    "orchestrator/campaign.py": None,
    "orchestrator/tables.py": None,
    "orchestrator/images/layers.py": None,
}
# What the unit tests read besides orchestrator/ and tests/.
ALSO_COPY = [
    "workload",
    "examples",
    "images",
    "migrations",
    "docs",
    "scripts",
    "bench",
    "README.md",
]
# Unit test files that test a module through another one it is under, and import only that one
# (the vendor profiles are read by tables.py's Table).
ALSO_DIRECT = {"orchestrator/tables.py": ["tests/unit/test_images_profiles.py"]}
# A mutant's status as `mutmut results --all true` prints it -> how it counts here.
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
NOT_RUN = {"skipped", "not checked", "check was interrupted by user"}


# A pytest plugin in the scratch copy: a mutant's tests run fastest first (durations from
# mutmut's own stats run), so that a killed mutant is usually found by a quick direct test.
ORDER_PLUGIN = "_mutation_order"
ORDER_PLUGIN_SOURCE = """\
import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items):
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    took = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: took.get(item.nodeid, 0.0))
"""


def module_name(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


@dataclass
class Counts:
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    equivalent: int = 0
    not_run: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.mutants - self.equivalent - self.not_run

    @property
    def score(self) -> float | None:
        return None if self.scored <= 0 else 100.0 * self.killed / self.scored


def imported_modules(source: str) -> set[str]:
    """Every module an import statement of this source can name: `import a.b`, `from a import
    b` (a and a.b), `from a.b import c` (a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def direct_tests(modules: list[str]) -> list[str]:
    """The unit test files that import one of these module files (by their import statements,
    so that a moved or renamed test file is still found), and their ALSO_DIRECT files."""
    wanted = {module_name(path) for path in modules}
    found = {
        str(test.relative_to(REPO))
        for test in (REPO / "tests" / "unit").glob("test_*.py")
        if imported_modules(test.read_text()) & wanted
    }
    found.update(extra for path in modules for extra in ALSO_DIRECT.get(path, []))
    return sorted(found)


def working_tree_files() -> list[str]:
    """Tracked and untracked (not ignored) files of the checkout, as they are on disk now."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted({p for p in out.split("\0") if p and (REPO / p).is_file()})


def prepare(workdir: Path, modules: list[str], tests: list[str], pytest_args: list[str]) -> None:
    """A fresh copy of the checkout in workdir with mutmut's settings in its pyproject.toml."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for rel in working_tree_files():
        if rel.split("/", 1)[0] in ("orchestrator", "tests", *ALSO_COPY) or rel == "pyproject.toml":
            target = workdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target)
    (workdir / f"{ORDER_PLUGIN}.py").write_text(ORDER_PLUGIN_SOURCE)
    settings = {
        "source_paths": ["orchestrator"],
        "only_mutate": modules,
        "also_copy": [p for p in ALSO_COPY if (workdir / p).exists()] + [f"{ORDER_PLUGIN}.py"],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", ORDER_PLUGIN, *pytest_args],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    with (workdir / "pyproject.toml").open("a") as f:
        f.write("\n".join(lines) + "\n")


def refresh_tests(workdir: Path) -> None:
    """The checkout's tests as they are now, into the scratch copy of the last run (mutmut copies
    tests/ on into its mutants/ folder when it starts, and the results of the mutants it is not
    asked to run stand)."""
    for rel in working_tree_files():
        if rel.startswith("tests/"):
            target = workdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target)


def mutmut(workdir: Path, *args: str, capture: bool = True) -> str:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("UPDATE_GOLDEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=workdir,
        env=env,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )
    if done.returncode != 0:
        tail = (done.stdout or "")[-4000:] if capture else ""
        raise SystemExit(f"mutmut {args[0]} failed with exit code {done.returncode}\n{tail}")
    return done.stdout or ""


_RESULT = re.compile(r"^\s*(\S+): (.+?)\s*$")
_NAME = re.compile(r"^(?P<module>.+)\.x(?:ǁ(?P<cls>[^ǁ]+)ǁ|_)(?P<func>.+?)__mutmut_\d+$")


def function_of(mutant: str) -> tuple[str, str]:
    """'orchestrator.plan.x_parse_sets__mutmut_3' -> ('orchestrator.plan', 'parse_sets');
    methods come out as 'Class.method'."""
    m = _NAME.match(mutant)
    if not m:
        return mutant.rsplit(".", 1)[0], mutant
    func = m.group("func")
    return m.group("module"), f"{m.group('cls')}.{func}" if m.group("cls") else func


def statuses(workdir: Path) -> list[tuple[str, str]]:
    """(mutant, status) as `mutmut results --all true` prints them."""
    return [
        (m.group(1), m.group(2))
        for line in mutmut(workdir, "results", "--all", "true").splitlines()
        if (m := _RESULT.match(line))
    ]


def not_killed(workdir: Path, selected: dict[str, tuple[str, ...] | None]) -> list[str]:
    """The selected mutants of the last run that were not killed."""
    return [
        name
        for name, status in statuses(workdir)
        if status not in KILLED and wanted(name, selected) is not None
    ]


def wanted(mutant: str, selected: dict[str, tuple[str, ...] | None]) -> str | None:
    """The module path a mutant belongs to, if it is in the selection."""
    module, func = function_of(mutant)
    for path, functions in selected.items():
        if module == module_name(path):
            if functions is None or func in functions:
                return path
    return None


def mutated_lines(diff: str) -> list[str]:
    return [
        line[1:].strip()
        for line in diff.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]


def load_equivalents() -> list[dict[str, str]]:
    if not EQUIVALENT_FILE.is_file():
        return []
    return list(tomllib.loads(EQUIVALENT_FILE.read_text())["equivalent"])


def is_equivalent(
    mutant: str, diff: str, equivalents: list[dict[str, str]]
) -> dict[str, str] | None:
    module, func = function_of(mutant)
    added = mutated_lines(diff)
    for entry in equivalents:
        if entry["function"] == f"{module}.{func}" and entry["mutated"].strip() in added:
            return entry
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module", action="append", help="only this module (name or path); repeatable"
    )
    parser.add_argument(
        "--workdir", default="/tmp/orchestrator-mutation", help="scratch copy (wiped)"
    )
    parser.add_argument(
        "--survivors",
        default=None,
        help="file for the survivors' diffs (default: WORKDIR/survivors.diff)",
    )
    parser.add_argument("--max-children", type=int, default=1, help="parallel mutants (default 1)")
    parser.add_argument(
        "--min-score", type=float, default=0.0, help="exit 1 below this total score"
    )
    parser.add_argument(
        "--tests", nargs="*", default=["tests/unit"], help="test paths (default tests/unit)"
    )
    parser.add_argument(
        "--direct-tests",
        action="store_true",
        help="instead of --tests: the unit test files that import a selected module",
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="in WORKDIR of the last run, with the current tests: rerun only the mutants that "
        "survived or had no test (a killed mutant stays killed while tests are only added or "
        "strengthened); that run's --tests stand",
    )
    parser.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        help="extra pytest argument, e.g. --deselect=...",
    )
    args = parser.parse_args()

    selected = dict(MODULES)
    if args.module:
        picks = {}
        for name in args.module:
            hits = [p for p in MODULES if name in (p, module_name(p), Path(p).stem)]
            if not hits:
                parser.error(f"--module {name}: not one of {', '.join(MODULES)}")
            picks.update({p: MODULES[p] for p in hits})
        selected = picks
    workdir = Path(args.workdir).resolve()
    survivors_file = Path(args.survivors or workdir / "survivors.diff").resolve()
    started = time.monotonic()
    if args.again:
        if not (workdir / "mutants").is_dir():
            parser.error(f"--again: no earlier run in {workdir} (run without --again first)")
        patterns = not_killed(workdir, selected)
        refresh_tests(workdir)
        # mutmut collects coverage again only for new test names; a test that now calls one
        # more function must be seen calling it, so collect it all again
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        print(f"mutmut run in {workdir} again: {len(patterns)} mutant(s)", flush=True)
    else:
        tests = direct_tests(sorted(selected)) if args.direct_tests else args.tests
        prepare(workdir, sorted(selected), tests, args.pytest_arg)
        patterns = []
        for path, functions in selected.items():
            mod = module_name(path)
            patterns += (
                [f"{mod}.*"] if functions is None else [f"{mod}.x_{f}__mutmut_*" for f in functions]
            )
        print(
            f"mutmut run in {workdir} ({len(selected)} module(s), {args.max_children} worker(s), "
            f"{len(tests)} test path(s): {' '.join(tests)})",
            flush=True,
        )
    if patterns:
        mutmut(workdir, "run", "--max-children", str(args.max_children), *patterns, capture=False)

    counts = {path: Counts() for path in selected}
    equivalents = load_equivalents()
    listed_equivalent: list[tuple[str, str]] = []
    diffs: list[str] = []
    for name, status in statuses(workdir):
        path = wanted(name, selected)
        if path is None:
            continue
        c = counts[path]
        c.mutants += 1
        if status in KILLED:
            c.killed += 1
        elif status in NOT_RUN:
            c.not_run += 1
        else:  # survived, no tests, suspicious
            diff = mutmut(workdir, "show", name)
            entry = is_equivalent(name, diff, equivalents)
            if entry:
                c.equivalent += 1
                listed_equivalent.append((name, entry["reason"]))
                continue
            c.survived += 1
            c.survivors.append(name)
            diffs.append(
                f"# {name}: {status}\n{diff.split(chr(10), 1)[1] if diff.startswith('#') else diff}"
            )

    survivors_file.parent.mkdir(parents=True, exist_ok=True)
    survivors_file.write_text("\n".join(diffs))
    total = Counts()
    header = (
        f"{'module':<56} {'mutants':>7} {'killed':>6} {'survived':>8} {'equiv.':>6} {'score':>7}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for path, c in counts.items():
        for attr in ("mutants", "killed", "survived", "equivalent", "not_run"):
            setattr(total, attr, getattr(total, attr) + getattr(c, attr))
        label = path + (" (" + ", ".join(selected[path] or ()) + ")" if selected[path] else "")
        print(
            f"{label:<56} {c.mutants:>7} {c.killed:>6} {c.survived:>8} {c.equivalent:>6} {_pct(c.score):>7}"
        )
    print("-" * len(header))
    print(
        f"{'total':<56} {total.mutants:>7} {total.killed:>6} {total.survived:>8} {total.equivalent:>6} {_pct(total.score):>7}"
    )
    if total.not_run:
        print(f"({total.not_run} mutant(s) not run: skipped or interrupted; not scored)")
    if listed_equivalent:
        print(f"\nequivalent (excluded, reasons in {EQUIVALENT_FILE.relative_to(REPO)}):")
        for name, reason in listed_equivalent:
            print(f"  {name}: {reason}")
    print(f"\nsurviving mutants' diffs: {survivors_file} ({total.survived})")
    print(f"wall time: {time.monotonic() - started:.0f} s")
    return 1 if total.score is not None and total.score < args.min_score else 0


def _pct(score: float | None) -> str:
    return "-" if score is None else f"{score:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
