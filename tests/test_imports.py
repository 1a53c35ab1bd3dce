"""The data path reads in one direction: the import graph of mmdeploy/ has no cycle and no edge that runs
back up the layers below (the design's picture). Every import counts, also the ones inside functions
(they are how heavy dependencies stay lazy, not a way around the picture), and so do the modules the
decode workers' forkserver loads by name (`isolate.PRELOAD`).

A new module must be placed in LAYERS (the test names it otherwise): that is where a reader learns what it
may import.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmdeploy"

# Top to bottom. A module may import its own layer and the layers below it, never one above. A name is a
# module or a package (all of its modules); the longest match places a module (`mmdeploy` alone is the
# package's own __init__).
LAYERS: list[tuple[str, ...]] = [
    ("mmdeploy.__main__", "mmdeploy.cli"),
    ("mmdeploy.commands",),
    ("mmdeploy.service",),
    ("mmdeploy.classify", "mmdeploy.batch", "mmdeploy.serving", "mmdeploy.compare", "mmdeploy.live"),
    ("mmdeploy.export", "mmdeploy.tensorrt_engine", "mmdeploy.evaluate", "mmdeploy.train", "mmdeploy.plots",
     "mmdeploy.cpu_engines", "mmdeploy.quantize", "mmdeploy.targets"),
    ("mmdeploy.pipeline",),
    ("mmdeploy.runtime",),
    ("mmdeploy.segments",),
    ("mmdeploy.bundle",),
    ("mmdeploy.isolate",),
    ("mmdeploy.jobs", "mmdeploy.forkserver", "mmdeploy.workerenv", "mmdeploy.livejob"),
    ("mmdeploy.data",),
    ("mmdeploy.features", "mmdeploy.numpy_features"),
    ("mmdeploy.media",),
    ("mmdeploy.models", "mmdeploy.balance", "mmdeploy.recipe"),
    ("mmdeploy.spec", "mmdeploy.results", "mmdeploy.raycluster", "mmdeploy.environment"),
    ("mmdeploy.config", "mmdeploy.settings", "mmdeploy.progress", "mmdeploy.detections"),
    ("mmdeploy.errors", "mmdeploy.assets", "mmdeploy.preload", "mmdeploy"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The mmdeploy module an imported dotted name lands in (a module, else its package), or None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every mmdeploy module `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if target.split(".")[0] != "mmdeploy":
                continue
            hit = resolve(target, known)
            if hit and hit != name:
                out.add(hit)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: imports(name, path, known) for name, path in known.items()}
    from mmdeploy.isolate import PRELOAD  # loaded by name in the forkserver: edges of isolate too

    edges["mmdeploy.isolate"] |= {resolve(m, known) for m in PRELOAD if m.startswith("mmdeploy.")} - {None, "mmdeploy.isolate"}
    return edges


def layer(name: str) -> int:
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            inside = name == prefix or (prefix != "mmdeploy" and name.startswith(prefix + "."))
            if inside and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    assert best is not None, f"{name}: not placed in tests/test_imports.py LAYERS; add it where it belongs"
    return best


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_import_runs_back_up():
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer(b) < layer(a))
    assert upward == [], "imports that run back up the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)
