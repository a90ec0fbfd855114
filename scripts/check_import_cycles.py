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

# The rooms of docs/design.md are the package's folders (backends/ssh and backends/slurm each a
# room of its own); the modules at the package's top are the pure core. A room imports only the
# rooms it lists here, so the layers run one way:
#   cli -> queue -> backends -> runs -> store / transport / images -> runfolder -> the core,
# with reports and web beside cli (they read the store, never run anything), interchange beside
# the store (formats in and out, never the store), and nodeside below all (the scripts sent to
# nodes: the standard library only, so they import nothing of the package at all).
CORE = "core"
BELOW = ("runfolder", CORE, "nodeside")
ROOMS: dict[str, tuple[str, ...]] = {
    "cli": ("queue", "web", "reports", "backends", "runs", "store", "transport", "images")
    + ("interchange", *BELOW),
    "web": ("reports", "store", *BELOW),
    "reports": ("store", *BELOW),
    "queue": ("backends", "runs", "store", *BELOW),
    "backends": ("backends.ssh", "backends.slurm", "runs", "store", *BELOW),
    "backends.ssh": ("backends", "runs", "store", "transport", "images", *BELOW),
    "backends.slurm": ("backends", "runs", "store", "images", *BELOW),
    "runs": ("store", "transport", "images", *BELOW),
    "store": BELOW,
    "images": ("store", "transport", *BELOW),
    "interchange": BELOW,
    "transport": (CORE, "nodeside"),
    "runfolder": (CORE, "nodeside"),
    CORE: (CORE, "nodeside"),
    "nodeside": (),
}
# Core modules that every room may use and that therefore import nothing of the package.
LEAVES = ("states", "redact", "clock")
SUB_ROOMS = ("backends",)  # folders whose own folders are rooms


def room_of(module: str, folders: set[str]) -> str:
    """`orchestrator.store.leases` -> "store"; `orchestrator.backends.ssh.x` -> "backends.ssh";
    a module at the package's top (no folder) -> the core."""
    parts = module.split(".")[1:]
    if len(parts) >= 2 and parts[0] in SUB_ROOMS and parts[1] in folders_under(folders, parts[0]):
        return f"{parts[0]}.{parts[1]}"
    return parts[0] if parts and parts[0] in folders else CORE


def folders_under(folders: set[str], room: str) -> set[str]:
    return {f.split(".", 1)[1] for f in folders if f.startswith(room + ".")}


def room_violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a room that its line in ROOMS does not allow, and any import made by a
    leaf of the core (LEAVES) or by nodeside."""
    package = next(iter(edges)).split(".")[0] if edges else ""
    folders = (
        {
            ".".join(m.split(".")[1:-1])
            for m in edges
            if m.count(".") >= 2  # pkg.folder.module (or deeper)
        }
        | {".".join(m.split(".")[1:]) for m in edges if _is_package(m, edges)}
    )
    found = []
    for module in sorted(edges):
        if module in (f"{package}.__main__", package):
            continue
        here = room_of(module, folders)
        allowed = ROOMS.get(here)
        leaf = here == CORE and module.split(".")[-1] in LEAVES
        for target in sorted(edges[module]):
            there = room_of(target, folders)
            if leaf or (allowed is not None and there != here and there not in allowed):
                only = ", ".join(allowed or ())
                rule = f"imports only {only}" if only and not leaf else "imports nothing"
                found.append(f"{module} -> {target} (rule: {here} {rule})")
    return found


def _is_package(module: str, edges: dict[str, set[str]]) -> bool:
    return any(other.startswith(module + ".") for other in edges) and module.count(".") >= 1


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
