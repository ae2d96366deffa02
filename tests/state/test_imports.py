"""netbootd.state stands alone: nothing it imports, however indirectly (lazy imports included),
is the boot core, the service, the command line or a protocol edge."""

from __future__ import annotations

from tests.foundation.test_imports import graph

FORBIDDEN = ("netbootd.core", "netbootd.service", "netbootd.cli", "netbootd.dhcp", "netbootd.dhcp6",
             "netbootd.tftp", "netbootd.http", "netbootd.ui", "netbootd.images")


def test_the_state_package_imports_no_core_service_or_edge():
    edges = graph()
    start = [name for name in edges if name == "netbootd.state" or name.startswith("netbootd.state.")]
    assert "netbootd.state.postgres" in start
    seen, todo, came_from = set(start), list(start), {}
    while todo:
        name = todo.pop()
        for child in edges[name]:
            if child not in seen:
                seen.add(child)
                came_from[child] = name
                todo.append(child)
    bad = sorted(m for m in seen if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))

    def chain(module: str) -> str:
        path = [module]
        while path[-1] in came_from:
            path.append(came_from[path[-1]])
        return " → ".join(reversed(path))

    assert not bad, "netbootd.state reaches:\n  " + "\n  ".join(chain(m) for m in bad)
