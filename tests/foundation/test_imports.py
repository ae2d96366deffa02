"""The shape of netbootd's import graph: no module imports itself through others, and only
`python -m netbootd` (netbootd/__main__.py) imports the command line.

Read from the source with `ast`, not by importing: every import counts, at module level, inside
functions (lazy imports only hide a cycle until the day someone moves one to the top) and under
`if TYPE_CHECKING:`. `from netbootd.x import y` counts as importing netbootd.x.y when y is a
module; importing a package counts as importing its __init__.py.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "netbootd"
CLI = "netbootd.cli"
MAIN = "netbootd.__main__"


def module_name(path: Path) -> str:
    parts = ["netbootd", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The netbootd modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def shortest_cycle(edges: dict[str, set[str]], group: list[str]) -> list[str]:
    """One cycle through the group's first module, as short as any (breadth first)."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return group


def test_the_graph_sees_every_kind_of_import():
    edges = graph()
    assert "netbootd.cli" in edges[MAIN]  # from netbootd.cli import main
    assert "netbootd.core.urls" in edges["netbootd.core.context"]  # from netbootd.core import urls (a module)


def test_no_import_cycles():
    edges = graph()
    cycles = [" → ".join(shortest_cycle(edges, group)) + (f"  (group: {', '.join(group)})" if len(group) > 2 else "")
              for group in strongly_connected(edges)]
    assert not cycles, "modules that import each other:\n  " + "\n  ".join(cycles)


def test_only_main_imports_the_command_line():
    importers = sorted(name for name, found in graph().items() if CLI in found and name != MAIN)
    assert not importers, f"{CLI} is the command line, for netbootd/__main__.py alone; imported by {importers}"
