"""The package layout of docs/DESIGN's architecture, checked on the source (no import is run).

Rules, for every import of a quantcl module anywhere in ``src/quantcl`` (at module level or inside
a function: both run; imports under ``if TYPE_CHECKING:`` do not):

- no import cycle between modules, counting a package's ``__init__`` as what importing any of its
  submodules runs first, and none between the top-level units (``quantcl.tasks``, ``quantcl.trainer``,
  ``quantcl._io``, ...);
- the leaves (``precision``, ``replay``, ``tasks``) import none of each other, the trainer or the plug-ins;
- a private module (``quantcl.precision._lora``) is imported only from inside the package that holds it,
  and a private name (``quantcl._plot._save``) only from the same package as its module;
- a name imported from a quantcl module is defined there (or named in it, as lazy names are in
  ``__all__``), not one it hands out only as a moved name with a DeprecationWarning;
- no star import, and no module over 400 lines.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LEAVES = ("precision", "replay", "tasks")
LEAVES_MUST_NOT_IMPORT = (*LEAVES, "trainer", "plugins")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    importer: str
    module: str  # the quantcl module imported
    name: str | None  # the name taken from it (``from module import name``), when not a submodule
    line: int


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((src / "quantcl").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            else:
                visit(child)

    visit(tree)
    return found


def _package(module: str, modules: dict[str, Path]) -> str:
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def imports(src: Path = SRC) -> tuple[dict[str, Path], list[Import]]:
    """Every module of the package and every import of a quantcl module in it."""
    modules = _modules(src)
    found = []
    for module, path in modules.items():
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = _package(module, modules).split(".")
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in modules else (base, a.name)
                           for a in node.names]
            for target, name in targets:
                if target == "quantcl" or target.startswith("quantcl."):
                    assert target in modules, f"{module}:{node.lineno} imports {target}, which does not exist"
                    found.append(Import(module, target, name, node.lineno))
    return modules, found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_graph(modules: dict[str, Path], found: list[Import]) -> dict[str, set[str]]:
    """Importer -> what the import runs: the module and the ``__init__`` of each package above it
    (except those the importer's own import has already started)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in found:
        started = {imp.importer, *_ancestors(imp.importer)}
        for target in (*_ancestors(imp.module), imp.module):
            if target not in started:
                graph[imp.importer].add(target)
    return graph


def unit(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def unit_graph(found: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        if unit(imp.module) not in (unit(imp.importer), "quantcl"):
            graph[unit(imp.importer)].add(unit(imp.module))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def private_crossings(modules: dict[str, Path], found: list[Import]) -> list[str]:
    out = []
    for imp in found:
        parts = imp.module.split(".")
        private = [i for i, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")]
        if private:
            owner = ".".join(parts[: private[0]])
            if not (imp.importer == owner or imp.importer.startswith(owner + ".")):
                out.append(f"{imp.importer}:{imp.line} imports the private module {imp.module}")
        if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
            if _package(imp.importer, modules) != _package(imp.module, modules):
                out.append(f"{imp.importer}:{imp.line} imports the private name {imp.module}.{imp.name}")
    return out


def _offered_names(path: Path) -> set[str]:
    """What ``from module import name`` may take from the module at ``path``: what it defines or
    imports at run time, and the strings it names (``__all__``, lazy tables), except those it only
    forwards as moved (the arguments of ``forward_moved_names``)."""
    tree = ast.parse(path.read_text())
    forwarded = {id(n) for call in ast.walk(tree) if isinstance(call, ast.Call)
                 and getattr(call.func, "id", None) == "forward_moved_names" for n in ast.walk(call)}
    names = {n.value for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in forwarded}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return names


def missing_names(modules: dict[str, Path], found: list[Import]) -> list[str]:
    return [f"{imp.importer}:{imp.line} imports {imp.name} from {imp.module}, which does not define it"
            for imp in found if imp.name and imp.name != "*" and imp.name not in _offered_names(modules[imp.module])]


@pytest.fixture(scope="module")
def package() -> tuple[dict[str, Path], list[Import]]:
    return imports()


def test_no_import_cycle_between_modules(package):
    modules, found = package
    assert cycles(module_graph(modules, found)) == []


def test_no_import_cycle_between_units(package):
    _, found = package
    assert cycles(unit_graph(found)) == []


def test_the_leaves_import_no_other_leaf_the_trainer_or_plugins(package):
    _, found = package
    bad = [f"{imp.importer}:{imp.line} imports {imp.module}" for imp in found
           if unit(imp.importer) in LEAVES and unit(imp.importer) != unit(imp.module)
           and unit(imp.module) in LEAVES_MUST_NOT_IMPORT]
    assert bad == []


def test_no_private_name_is_imported_across_packages(package):
    modules, found = package
    assert private_crossings(modules, found) == []


def test_every_imported_name_is_defined_where_it_is_imported_from(package):
    modules, found = package
    assert missing_names(modules, found) == []


def test_no_star_import_and_no_long_module(package):
    modules, _ = package
    stars = [m for m, path in modules.items()
             if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
                    for n in ast.walk(ast.parse(path.read_text())))]
    long = {m: n for m, path in modules.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert stars == [] and long == {}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "quantcl" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_find_what_they_guard(tmp_path):
    """The rules fire on a small package with a cycle through a function-level import, a cycle
    through a package ``__init__``, a leaf importing the trainer and a private crossing."""
    src = _write(tmp_path, {
        "__init__.py": "",
        "trainer.py": "from quantcl.tasks import Task\n",
        "tasks/__init__.py": "from quantcl.tasks.task import Task\n",
        "tasks/task.py": ("class Task: ...\ndef evaluate():\n    from quantcl.evaluators import run\n"
                          "if TYPE_CHECKING:\n    from quantcl.trainer import Trainer\n"),
        "evaluators/__init__.py": "from quantcl.evaluators.base import run\n",
        "evaluators/base.py": "from quantcl.tasks.task import evaluate\nfrom quantcl._plot import _save\ndef run(): ...\n",
        "_plot.py": "def _save(): ...\n",
        "replay/__init__.py": "def f():\n    import quantcl.trainer\n",
        "recipes.py": ("from quantcl.tasks import Task, moved\n"
                       "__getattr__ = forward_moved_names(__name__, {'moved': 'quantcl.elsewhere'})\n"),
    })
    modules, found = imports(src)
    assert cycles(module_graph(modules, found)) == [
        ["quantcl.evaluators", "quantcl.evaluators.base", "quantcl.tasks", "quantcl.tasks.task"]]
    assert cycles(unit_graph(found)) == [["evaluators", "tasks"]]
    assert [imp.module for imp in found if imp.importer == "quantcl.tasks.task"] == ["quantcl.evaluators"]
    assert private_crossings(modules, found) == ["quantcl.evaluators.base:2 imports the private name quantcl._plot._save"]
    assert missing_names(modules, found) == ["quantcl.recipes:1 imports moved from quantcl.tasks, which does not define it"]
    assert [imp.importer for imp in found if unit(imp.importer) in LEAVES
            and unit(imp.module) in LEAVES_MUST_NOT_IMPORT and unit(imp.module) != unit(imp.importer)] == [
        "quantcl.replay"]
