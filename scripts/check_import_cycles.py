#!/usr/bin/env python3
"""Fails when the modules of a package import each other in a cycle, or a room imports one
it must not (ROOMS below; docs/design.md explains them).

Every import counts, also one inside a function or under TYPE_CHECKING: a cycle that only a
function-local import hides is still a cycle in the design. Usage:
    python scripts/check_import_cycles.py [PACKAGE_DIR]     (default: orchestrator)
Prints each cycle as `a -> b -> a` and each forbidden import as `a -> b (rule)`, and exits 1 if
there is one; prints the module count and exits 0 otherwise. `--graph` prints every edge.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# (modules under this prefix, prefixes they must not import): the rooms of docs/design.md, each
# importing only rooms below it. The two backends are peers; the lifecycle, the store and the
# pure core know no backend; nothing but the CLI imports the CLI.
_TOP = ("orchestrator.cli", "orchestrator.queue")
_BACKENDS = ("orchestrator.backends",)
ROOMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("orchestrator.backends.ssh", ("orchestrator.backends.slurm", *_TOP)),
    ("orchestrator.backends.slurm", ("orchestrator.backends.ssh", *_TOP)),
    ("orchestrator.backends", (*_TOP, "orchestrator.queue")),
    ("orchestrator.runs", (*_BACKENDS, *_TOP, "orchestrator.queue")),
    (
        "orchestrator.store",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.runs",
            "orchestrator.web",
            "orchestrator.reports",
        ),
    ),
    # The run folder's format, below both runs/ (which writes it) and store/ (which reads it).
    (
        "orchestrator.runfolder",
        (*_BACKENDS, *_TOP, "orchestrator.queue", "orchestrator.runs", "orchestrator.store"),
    ),
    # The queue's scheduling decision: pure.
    (
        "orchestrator.schedule",
        (*_BACKENDS, *_TOP, "orchestrator.queue", "orchestrator.runs", "orchestrator.store"),
    ),
    ("orchestrator.images", (*_BACKENDS, *_TOP, "orchestrator.queue", "orchestrator.runs")),
    (
        "orchestrator.interchange",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.store",
            "orchestrator.runs.lifecycle",
        ),
    ),
    (
        "orchestrator.transport",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.runs",
            "orchestrator.store",
            "orchestrator.images",
        ),
    ),
    (
        "orchestrator.config",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.runs",
            "orchestrator.store",
            "orchestrator.transport",
            "orchestrator.images",
        ),
    ),
    ("orchestrator.campaign", (*_BACKENDS, *_TOP, "orchestrator.queue", "orchestrator.store")),
    *(
        (
            core,
            (
                *_BACKENDS,
                *_TOP,
                "orchestrator.queue",
                "orchestrator.store",
                "orchestrator.runs",
                "orchestrator.transport",
                "orchestrator.plan",
                "orchestrator.images",
            ),
        )
        for core in (
            "orchestrator.devices",
            "orchestrator.rendezvous",
            "orchestrator.image_settings",
            "orchestrator.slurm_settings",
        )
    ),
    (
        "orchestrator.plan",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.store",
            "orchestrator.runs",
            "orchestrator.transport",
        ),
    ),
    (
        "orchestrator.specs",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.store",
            "orchestrator.runs",
            "orchestrator.transport",
            "orchestrator.plan",
            "orchestrator.images",
        ),
    ),
    # The results pages read the store and use the report's logic; they start, stop and
    # change nothing, so they import no backend, queue, lifecycle, image or transport code.
    (
        "orchestrator.web",
        (
            *_BACKENDS,
            *_TOP,
            "orchestrator.queue",
            "orchestrator.runs.lifecycle",
            "orchestrator.images",
            "orchestrator.transport",
        ),
    ),
    # Sent to the nodes as `python -c` or staged files: the standard library only.
    ("orchestrator.nodeside", ("orchestrator.",)),
    ("orchestrator.states", ("orchestrator.",)),
    ("orchestrator.clock", ("orchestrator.",)),  # one "now in UTC", used by every room
    ("orchestrator.redact", ("orchestrator.",)),  # pure text functions, used by every room
    ("orchestrator.", ("orchestrator.cli",)),
)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix if prefix.endswith(".") else prefix + ".")


def room_violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import a room must not make, under the first rule whose prefix fits the module."""
    found = []
    for module in sorted(edges):
        if _under(module, "orchestrator.cli") or module == "orchestrator.__main__":
            continue
        rule = next(((p, f) for p, f in ROOMS if _under(module, p)), None)
        if rule is None:
            continue
        for target in sorted(edges[module]):
            if any(_under(target, bad) for bad in rule[1]):
                found.append(
                    f"{module} -> {target} (rule: {rule[0]} imports none of {', '.join(rule[1])})"
                )
    return found


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules this module imports (a `from pkg import mod` names mod)."""
    found: set[str] = set()
    base = here if is_package else here.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names] + [target]
        for name in names:
            # The longest known prefix: `a.b.c` where only `a.b` is a module names `a.b`.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = imported(tree, name, path.name == "__init__.py", known)
        # A module importing its own package's __init__ (implicitly, as Python does) is no edge.
        edges[name] = {d for d in deps if not name.startswith(d + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as one cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def path_in(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module, for the message."""
    members = set(component)
    start = component[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return (
                        [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                    )
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0] if args else "orchestrator").resolve()
    edges = graph(root)
    if "--graph" in argv:
        for v in sorted(edges):
            for w in sorted(edges[v]):
                print(f"{v} -> {w}")
        return 0
    found = cycles(edges)
    for component in found:
        print("import cycle: " + " -> ".join(path_in(component, edges)))
        if len(component) > 2:
            print("  (modules in this tangle: " + ", ".join(component) + ")")
    bad_rooms = room_violations(edges) if root.name == "orchestrator" else []
    for line in bad_rooms:
        print(f"forbidden import: {line}")
    if found or bad_rooms:
        print(
            f"{len(found)} import cycle(s), {len(bad_rooms)} forbidden import(s) in {root.name}/;"
            " see docs/design.md"
        )
        return 1
    print(f"no import cycle and no forbidden import among {len(edges)} modules of {root.name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
