"""The shape of the package: recipes import the library, never each other (the demo aside, through
public entry points); no module reaches into another's private names; no import cycle; files and
functions stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "instructune"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports(tree: ast.Module, top_only: bool) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from instructune... import names` and `import instructune...`."""
    nodes = tree.body if top_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("instructune"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("instructune")]
    return out


def dynamic_imports(tree: ast.Module, known: set[str]) -> list[str]:
    """The modules `importlib.import_module(...)` may load: a constant name, or every module under a
    constant prefix (`import_module(f"instructune.commands.{name}")` -> each `instructune.commands.*`)."""
    out = []
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if getattr(func, "attr", getattr(func, "id", None)) != "import_module" or not node.args:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):  # "instructune." + name
            arg = arg.left
        if isinstance(arg, ast.JoinedStr) and arg.values:
            arg = arg.values[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            name = arg.value
            out += [name] if name in known else sorted(m for m in known if m.startswith(name) and name.endswith("."))
    return out


def import_graph(top_only: bool) -> dict[str, set[str]]:
    """module -> the modules of the package it imports: at module level only, or anywhere (functions,
    `importlib.import_module`) too."""
    mods = modules()

    def targets(mod: str, names: list[str]) -> list[str]:
        # `from pkg import submodule` needs the submodule; the package's own names need the package
        subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in mods]
        return subs if names and len(subs) == len(names) else [mod, *subs]

    graph = {}
    for name, tree in mods.items():
        found = {t for mod, names in imports(tree, top_only) for t in targets(mod, names)}
        if not top_only:
            found |= set(dynamic_imports(tree, set(mods)))
        graph[name] = {t for t in found if t in mods and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (`a -> b -> ... -> a`), or [] when there is none."""
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    return cycle


def test_no_module_imports_another_modules_private_name() -> None:
    found = [f"{name}: from {mod} import {n}" for name, tree in modules().items()
             for mod, names in imports(tree, top_only=False) for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert found == []


def test_recipes_import_the_library_and_only_the_demo_imports_recipes() -> None:
    mods = modules()
    for name, tree in mods.items():
        targets = [(mod, names) for mod, names in imports(tree, top_only=False) if mod.startswith("instructune.recipes")]
        if name.startswith("instructune.commands") or name == "instructune.api":
            continue  # the command line and the public API call recipes: that is what they are for
        if name in ("instructune.recipes.demo", "instructune.recipes.sweep"):  # they string runs together
            assert all(not n.startswith("_") for _, names in targets for n in names)
            continue
        assert targets == [], f"{name} imports a recipe: {targets}"


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(top_only=True))
    assert cycle == []


def test_no_import_cycle_counting_deferred_and_dynamic_imports() -> None:
    """An import inside a function, or by `importlib.import_module`, still ties the two modules together."""
    cycle = find_cycle(import_graph(top_only=False))
    assert cycle == [], " -> ".join(cycle)


def test_no_import_cycle_between_the_parts() -> None:
    """The parts (`data/`, `models.py`, `evaluation/`, ...) stack in floors: if `data` imports `evaluation`,
    nothing in `evaluation` imports `data`. The package root is left out: it only holds the version and
    the lazy `api` names."""
    def part(name: str) -> str:
        return ".".join(name.split(".")[:2])

    parts: dict[str, set[str]] = {}
    for name, deps in import_graph(top_only=False).items():
        if name != "instructune":
            parts.setdefault(part(name), set()).update(part(d) for d in deps if d != "instructune")
    cycle = find_cycle({p: deps - {p} for p, deps in parts.items()})
    assert cycle == [], " -> ".join(cycle)


def test_only_the_command_line_imports_the_cli() -> None:
    """Library code never calls the CLI: a run is trained through one entry point, whoever asks."""
    allowed = ("instructune.cli", "instructune.__main__")  # `python -m instructune` is the command line
    graph = import_graph(top_only=False)
    found = sorted(name for name, deps in graph.items() if "instructune.cli" in deps
                   and name not in allowed and not name.startswith("instructune.commands"))
    assert found == []


def test_the_architecture_doc_states_the_limits_this_file_enforces() -> None:
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    assert f"over {MAX_FILE_LINES} lines (`MAX_FILE_LINES = {MAX_FILE_LINES}`)" in doc
    assert f"over {MAX_FUNCTION_LINES} (`MAX_FUNCTION_LINES = {MAX_FUNCTION_LINES}`)" in doc


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_files_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
