"""The layers of src/selftok point down, packages import each other without cycles, no function
runs past a screen, and every stage's source deps in dvc.yaml are the files its module imports:
read from the source (AST), every import counted, lazy and TYPE_CHECKING ones included."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "selftok"
MAX_FUNCTION_LINES = 60
# Bottom to top; a unit (a package, or a module directly under selftok) may import its own layer
# and those below. config assembles the packages' params for the stages; tracking and promotion
# record their results. `__init__` is the package root (its version and environment defaults).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "errors", "schema", "paths", "hashing", "nested", "progress", "viz"}),
    frozenset({"training"}),
    frozenset({"data"}),
    frozenset({"tokenizer"}),
    frozenset({"eval"}),
    frozenset({"vlm"}),
    frozenset({"rl"}),
    frozenset({"config", "tracking", "promotion", "mlflow_model"}),
    frozenset({"stages", "studies"}),
    frozenset({"commands", "cli", "__main__"}),
)
# What every stage runs inside without it shaping the stage's outputs: the stage contract and
# params parsing (the values are DVC params), tracking, progress, errors, and the paths (a new
# path is a new dep or out of its own). Stage deps leave these out, and so does their closure.
CONTRACT = frozenset({"stages/base.py", "config.py", "schema.py", "errors.py", "tracking.py", "progress.py", "nested.py",
                      "paths.py", "mlflow_model.py"})


def layer_of(unit: str) -> int:
    found = [i for i, units in enumerate(LAYERS) if unit in units]
    if not found:
        raise LookupError(f"selftok.{unit} is in no layer of {__name__}.LAYERS: place it there")
    return found[0]


def unit_of(module: str, root: Path) -> str:
    """The unit of a dotted module below selftok: ``tokenizer`` for ``tokenizer.model``,
    ``__init__`` for the package itself or a name defined in it."""
    head = module.partition(".")[0]
    return head if head and ((root / head).is_dir() or (root / f"{head}.py").is_file()) else "__init__"


def imported_modules(path: Path, root: Path) -> Iterator[tuple[str, int]]:
    """(module below selftok, line) for every import of the project in one file."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "selftok" or alias.name.startswith("selftok."):
                    yield alias.name.removeprefix("selftok").lstrip("."), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's own package upwards
                base = ".".join(package[: len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            elif node.module == "selftok" or (node.module or "").startswith("selftok."):
                base = node.module.removeprefix("selftok").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from selftok import paths` imports the module paths
                yield (f"{base}.{alias.name}" if base else alias.name), node.lineno


def unit_imports(root: Path) -> Iterator[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between two units."""
    for path in sorted(root.rglob("*.py")):
        unit = unit_of(".".join(path.relative_to(root).with_suffix("").parts), root)
        for module, line in imported_modules(path, root):
            target = unit_of(module, root)
            if target != unit:
                yield unit, target, f"{path.relative_to(root.parent)}:{line} imports selftok.{module}"


def upward_imports(root: Path) -> list[str]:
    return [f"{where} ({unit} -> {target}, a higher layer)" for unit, target, where in unit_imports(root)
            if layer_of(target) > layer_of(unit)]


def import_cycles(root: Path) -> list[list[str]]:
    """Groups of units that import each other, directly or through others (strongly connected components)."""
    graph: dict[str, set[str]] = {}
    for unit, target, _ in unit_imports(root):
        graph.setdefault(unit, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                cycles.append(sorted([node, *group]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


def module_file(module: str, root: Path) -> Path:
    """The file of a dotted module below selftok, or of its nearest package (a name defined there)."""
    parts = module.split(".") if module else []
    for n in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:n])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return root / "__init__.py"


def source_closure(path: Path, root: Path) -> set[str]:
    """Every project file ``path`` imports, directly or not, stopping at the stage contract
    (paths relative to ``root``; package ``__init__`` files left out)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        file = todo.pop()
        if file in seen or file.relative_to(root).as_posix() in CONTRACT:
            continue
        seen.add(file)
        todo += [module_file(module, root) for module, _ in imported_modules(file, root)]
    return {f.relative_to(root).as_posix() for f in seen if f.name != "__init__.py"}


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports(SRC) == []


def test_packages_import_each_other_without_cycles() -> None:
    assert import_cycles(SRC) == []


def test_no_function_is_longer_than_a_screen() -> None:
    assert long_functions(SRC) == []


def test_stage_deps_are_the_source_files_each_stage_imports() -> None:
    from selftok.stages.base import read_spec, resolve_stages

    wrong = {}
    for name in resolve_stages(ROOT):
        spec = read_spec(ROOT, name)
        declared = {dep.removeprefix("src/selftok/") for dep in spec.deps if dep.startswith("src/")}
        used = source_closure(SRC / "stages" / f"{spec.group}.py", SRC)
        if declared != used:
            wrong[name] = {"missing": sorted(used - declared), "not imported": sorted(declared - used)}
    assert wrong == {}


# --- the checks themselves, on a made-up tree ----------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_catch_upward_imports_cycles_and_long_functions(tmp_path: Path) -> None:
    root = _tree(tmp_path / "selftok", {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/codes.py": "def f():\n    from selftok.stages import arms\n",  # lazy, still counted
        "data/shards.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from selftok import config\n",
        "tokenizer/model.py": "from ..data import codes\n",  # relative, down: fine
        "eval/report.py": "import selftok.vlm.model\n",
        "vlm/model.py": "from selftok.eval import report\n",  # eval <-> vlm
        "stages/arms.py": "from selftok.paths import ARMS\n",
        "config.py": "def long():\n" + "    x = 1\n" * 60,
    })
    upward = upward_imports(root)
    assert [u.split(" (")[1] for u in upward] == ["data -> stages, a higher layer)", "data -> config, a higher layer)",
                                                   "eval -> vlm, a higher layer)"]
    assert import_cycles(root) == [["eval", "vlm"]]
    assert long_functions(root) == ["selftok/config.py:1 long (61 lines)"]
    assert source_closure(root / "tokenizer/model.py", root) == {"tokenizer/model.py", "data/codes.py", "stages/arms.py"}  # not paths.py
    with pytest.raises(LookupError, match=r"selftok\.newthing is in no layer"):
        layer_of("newthing")
