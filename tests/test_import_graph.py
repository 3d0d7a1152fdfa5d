"""The package's import graph, read with ``ast``: no import cycles between modules, and the layers keep their
direction (evaluation and analysis never import the training engine or its drivers; runtime helpers import no
other layer). The clustering algorithms under ``train/`` (k-means, cluster statistics) are shared: the AMI
protocol clusters with the E-step's k-means."""
from __future__ import annotations

import ast
from pathlib import Path

import pcl_bench

PACKAGE = Path(pcl_bench.__file__).parent
ENGINE = ("pcl_bench.train.engine", "pcl_bench.train.sweep", "pcl_bench.config")
# (importer prefix, forbidden imported prefix, why)
FORBIDDEN = [
    *((layer, engine, "evaluation and analysis run on any checkpoint, without the training engine")
      for layer in ("pcl_bench.eval", "pcl_bench.analysis") for engine in ENGINE),
    ("pcl_bench.runtime", "pcl_bench.", "runtime helpers are the bottom layer"),
    ("pcl_bench.data", "pcl_bench.eval", "datasets know nothing of protocols"),
    ("pcl_bench.data", "pcl_bench.train", "datasets know nothing of training"),
    ("pcl_bench.models", "pcl_bench.train", "models know nothing of training"),
    ("pcl_bench.losses", "pcl_bench.methods", "losses are plain modules that methods combine"),
    ("pcl_bench.methods", "pcl_bench.config", "a method reads its options from whatever config it is given"),
]
ALLOWED_IN_RUNTIME = ("pcl_bench.runtime", "pcl_bench.__init__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> set[str]:
    """The package modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("pcl_bench"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if module_path(sub) else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pcl_bench"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m != name}


def module_path(name: str) -> Path | None:
    base = PACKAGE.parent / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt in edges and not state.get(nxt):
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if not state.get(node):
            dfs(node)


def test_layers_keep_their_direction():
    bad = [f"{src} imports {dst}: {why}" for src, targets in graph().items() for dst in targets
           for importer, forbidden, why in FORBIDDEN
           if src.startswith(importer) and dst.startswith(forbidden)
           and not (importer == "pcl_bench.runtime" and dst.startswith(ALLOWED_IN_RUNTIME))]
    assert not bad, "\n".join(bad)
