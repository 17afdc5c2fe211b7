"""The package's shape: imports point one way, and only the mitmproxy layer imports mitmproxy.

Imports are read from the source (ast), so a module that is never imported by a test is checked
too. Imports under `if TYPE_CHECKING:` are types only and never run, so they do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import claimroute

PACKAGE = Path(claimroute.__file__).resolve().parent
# Which folders a folder may import from (besides itself and the top-level `errors`).
ALLOWED = {
    "config": set(),
    "match": {"config"},
    "keys": {"config"},  # configured by policy.model objects, read as types only
    "policy": {"config", "match", "keys", "pipeline"},  # policy.load works out the anonymous
    "pipeline": {"config", "match", "keys", "policy"},
    "mitm": {"config", "match", "keys", "policy", "pipeline"},
}
# The policy model is a leaf of the request path: data only.
LEAVES = {"claimroute.policy.model": {"claimroute.errors", "claimroute.config", "claimroute.match",
                                      "claimroute.keys", "claimroute.policy"}}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """Modules a file imports when it runs (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:  # `from claimroute.x import y` may import module x.y
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists():
                    found.add(candidate)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    name: {m for m in runtime_imports(path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def test_no_relative_imports_hide_from_this_test() -> None:
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{name} uses relative imports; write them absolute"


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = [*trail[trail.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_only_the_mitmproxy_layer_imports_mitmproxy() -> None:
    for name, path in MODULES.items():
        uses = {m for m in runtime_imports(path) if m.split(".")[0] == "mitmproxy"}
        if uses:
            assert name.startswith("claimroute.mitm.") or name == "claimroute.mitmdump_script", (
                f"{name} imports {sorted(uses)}"
            )


def test_folders_depend_one_way() -> None:
    for name, targets in GRAPH.items():
        parts = name.split(".")
        if len(parts) < 3:
            continue
        folder = parts[1]
        for target in targets:
            target_parts = target.split(".")
            if len(target_parts) < 3 or target_parts[1] == folder:
                continue
            assert target_parts[1] in ALLOWED[folder], f"{name} imports {target}"


def test_the_policy_model_imports_nothing_from_the_request_path() -> None:
    for name, allowed in LEAVES.items():
        for target in GRAPH[name]:
            assert any(target == a or target.startswith(a + ".") for a in allowed), (
                f"{name} imports {target}"
            )
        assert not any(t.startswith("claimroute.pipeline") for t in GRAPH[name])


def test_the_addon_package_ships_no_tooling() -> None:
    """Benchmarks, test issuers, the scenario runner and lab servers live outside the addon."""
    names = set(MODULES)
    for tooling in ("bench", "lab", "scenario", "devtools"):
        assert not any(n.split(".")[1] == tooling for n in names if n.count(".") >= 1), tooling
