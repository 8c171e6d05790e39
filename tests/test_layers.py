"""The import graph: layers only look down, no circles, and function-level imports say why.

The layers, from the ground: the leaf (errors, kernels, the shared math and safe file reading,
the table of moved config keys, the process's memory), data and models, serving, training,
study and bench, and the command modules on top. Every import of deepcf's own code is read
from the source with `ast` (function-level ones too); an import from a higher layer, a circle of
modules, or a function-level import without a comment saying it keeps start-up light fails
here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepcf"
LAYERS = [  # (module prefix, layer); the longest matching prefix decides
    ("deepcf.errors", 0), ("deepcf.kernels", 0), ("deepcf.stats", 0), ("deepcf.files", 0),
    ("deepcf.compat", 0), ("deepcf.memory", 0), ("deepcf.data", 1), ("deepcf.models", 1),
    ("deepcf.serving", 2),
    ("deepcf.training", 3), ("deepcf.study", 4), ("deepcf.bench", 4),
]
COMMANDS = 5  # deepcf.train, deepcf.evaluate, ...: everything else at the package's top
LAZY_REASON = "start-up"


def layer(module: str) -> int:
    if module == "deepcf":
        return 0  # the package itself imports nothing of deepcf
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")),
               key=len, default=None)
    return dict(LAYERS)[best] if best else COMMANDS


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> list[tuple[str, str, int, bool, str]]:
    """(importer, imported, line, at module level, the statement and the line above its block
    of imports)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        top |= {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try))
                for n in ast.walk(node)}  # `if TYPE_CHECKING:` / try-except at module level
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            first = node.lineno - 1  # the reason may stand above a block of imports
            while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                first -= 1
            text = " ".join(lines[max(first - 1, 0):node.end_lineno])
            for name in names:
                if name == "deepcf" or name.startswith("deepcf."):
                    out.append((module_name(path), name, node.lineno, id(node) in top, text))
    return out


def test_layers_only_look_down():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)}), line {n}"
              for a, b, n, _, _ in imports() if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_data_and_models_do_not_import_each_other():
    across = [f"{a} imports {b}, line {n}" for a, b, n, _, _ in imports()
              if {a.split(".")[1:2][0] if "." in a else "", b.split(".")[1:2][0]
                  if "." in b else ""} == {"data", "models"}]
    assert not across, "\n".join(across)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    for a, b, _, _, _ in imports():
        if a != b and not a.startswith(b + "."):  # a package's own __init__ is no circle
            graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                circles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(circles)


def test_function_level_imports_say_why():
    lazy = [f"{a}:{n} imports {b} inside a function without a '# {LAZY_REASON}: ...' reason"
            for a, b, n, at_top, text in imports() if not at_top and LAZY_REASON not in text]
    assert not lazy, "\n".join(lazy)


def test_the_graph_is_read_at_all():
    found = imports()
    assert len(found) > 100
    assert ("deepcf.training.module", "deepcf.training.objectives") in {(a, b)
                                                                        for a, b, *_ in found}
