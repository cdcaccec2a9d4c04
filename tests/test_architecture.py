"""docs/architecture.md stays the map of the code: every module of `seqrl/` is named in it, and
no module of the package imports another in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seqrl"


def modules() -> list[str]:
    """`rollout`, `rewards/text`, ... for every module of the package."""
    return sorted(str(p.relative_to(PACKAGE).with_suffix("")) for p in PACKAGE.rglob("*.py"))


def test_every_module_is_on_the_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [m for m in modules() if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def imports(path: Path) -> set[str]:
    """The seqrl modules a file imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqrl"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("seqrl")}
    return found


def test_no_import_circles():
    names = {"seqrl." + m.replace("/", ".").removesuffix(".__init__") for m in modules()}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = "seqrl." + str(path.relative_to(PACKAGE).with_suffix("")).replace("/", ".").removesuffix(".__init__")
        graph[name] = {m for m in imports(path) if m in names and m != name}
    # a package's __init__ importing its own submodules is not a circle
    state, cycle = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycle.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycle, f"import circles: {cycle}"
