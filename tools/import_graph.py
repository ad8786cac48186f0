"""The import graph of the ``dual_adapter`` package, read from the source with :mod:`ast` (nothing is imported).

Every ``import`` / ``from ... import`` counts: at module level, inside functions and methods, and under
``if TYPE_CHECKING:`` alike. An edge goes to the module a statement names; ``from pkg import name`` goes to
``pkg.name`` where that is a module of the package, else to ``pkg`` itself.

Run ``python tools/import_graph.py`` from the repository root for the figures: module count and sizes, edges
(module-level and function-level), the cycles (strongly connected components and every simple cycle up to
a bound), the imports that point up the layer order of CONTRIBUTING.md (:data:`LAYERS`), and the modules over
:data:`MAX_LINES` lines. ``tests/project/test_layers.py`` checks the same rules.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dual_adapter"

#: A module over this many lines needs a reason at the top of its docstring (a line starting ``Size:``).
MAX_LINES = 700

#: The layer order, lowest first. A module may import its own layer and the layers below, never above.
#: Each entry is a module or a package prefix (the longest match wins). See CONTRIBUTING.md.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["dual_adapter", "dual_adapter.errors", "dual_adapter.io", "dual_adapter.paths",
                    "dual_adapter.seeds", "dual_adapter.progress", "dual_adapter.plots", "dual_adapter.patches",
                    "dual_adapter.limits", "dual_adapter.threads"]),
    ("media", ["dual_adapter.media"]),
    ("backbones", ["dual_adapter.backbones"]),
    ("interop", ["dual_adapter.native"]),
    ("sampling", ["dual_adapter.sampling", "dual_adapter.unet_sampling", "dual_adapter.reference"]),
    ("training", ["dual_adapter.training", "dual_adapter.previews", "dual_adapter.memory", "dual_adapter.runs",
                  "dual_adapter.experts"]),
    ("methods", ["dual_adapter.lora", "dual_adapter.unet_motion",
                 "dual_adapter.customttt", "dual_adapter.customttt_unet", "dual_adapter.dualreal"]),
    ("miniworld", ["dual_adapter.miniworld"]),
    ("models", ["dual_adapter.models", "dual_adapter.dispatch"]),
    ("evaluation", ["dual_adapter.metrics", "dual_adapter.miniworld.benchmark"]),
    ("commands", ["dual_adapter.commands", "dual_adapter.graph"]),
    ("entry points", ["dual_adapter.cli", "dual_adapter.__main__", "dual_adapter.backbone"]),
]


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    lazy: bool  # inside a function / method (not run at import time)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out = {}
    for p in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a package module by a package module."""
    mods = modules(root)
    out: list[Edge] = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_pkg = path.name == "__init__.py"

        def visit(node, lazy):
            for child in ast.iter_child_nodes(node):
                inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = _resolve(mod, is_pkg, child)
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        targets.append(sub if sub in mods else base)
                for t in targets:
                    # the longest package module that the dotted name starts with
                    parts = t.split(".")
                    while parts and ".".join(parts) not in mods:
                        parts.pop()
                    if parts and parts[0] == PACKAGE:
                        dst = ".".join(parts)
                        if dst != mod:
                            out.append(Edge(mod, dst, child.lineno, lazy))
                visit(child, inner)

        visit(tree, False)
    return out


def graph(es: list[Edge]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for e in es:
        g.setdefault(e.src, set()).add(e.dst)
    return g


def cycles_scc(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (each holds at least one cycle)."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]
    nodes = sorted(set(g) | {d for ds in g.values() for d in ds})

    def strong(v):  # iterative Tarjan
        work = [(v, iter(sorted(g.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))

    for v in nodes:
        if v not in index:
            strong(v)
    return sorted(comps)


def simple_cycles(g: dict[str, set[str]], limit: int = 100000) -> list[list[str]]:
    """Every elementary cycle (each once, starting at its smallest module), up to ``limit`` of them."""
    out: list[list[str]] = []
    nodes = sorted(set(g) | {d for ds in g.values() for d in ds})
    for start in nodes:
        # cycles whose smallest node is ``start``
        path, on, todo = [start], {start}, [iter(sorted(g.get(start, ())))]
        while todo and len(out) < limit:
            for w in todo[-1]:
                if w == start:
                    out.append(list(path))
                elif w > start and w not in on:
                    path.append(w)
                    on.add(w)
                    todo.append(iter(sorted(g.get(w, ()))))
                    break
            else:
                todo.pop()
                on.discard(path.pop())
    return out


def layer_of(mod: str) -> int | None:
    """Index in :data:`LAYERS` of the longest entry ``mod`` equals or lies under; ``None`` when no entry fits."""
    best, best_len = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for e in entries:
            # the package itself is an entry of its own: a new top-level module must be placed explicitly
            if (mod == e or (e != PACKAGE and mod.startswith(e + "."))) and len(e) > best_len:
                best, best_len = i, len(e)
    return best


def upward(es: list[Edge]) -> list[Edge]:
    """Imports of a module in a higher layer than the importer's."""
    out = []
    for e in es:
        a, b = layer_of(e.src), layer_of(e.dst)
        if a is not None and b is not None and b > a:
            out.append(e)
    return out


def unplaced(mods) -> list[str]:
    return [m for m in mods if layer_of(m) is None]


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def oversized(root: Path = ROOT) -> list[tuple[str, int]]:
    """Modules over :data:`MAX_LINES` lines whose docstring has no ``Size:`` line giving the reason."""
    out = []
    for mod, path in modules(root).items():
        n = line_count(path)
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if not any(ln.strip().startswith("Size:") for ln in doc.splitlines()):
                out.append((mod, n))
    return out


def report(root: Path = ROOT) -> str:
    mods = modules(root)
    sizes = {m: line_count(p) for m, p in mods.items()}
    es = edges(root)
    g = graph(es)
    stmts = {(e.src, e.line): e.lazy for e in es}
    comps = cycles_scc(g)
    cyc = simple_cycles(g)
    big = sorted(((n, m) for m, n in sizes.items() if n > MAX_LINES), reverse=True)
    lines = [
        f"modules: {len(mods)}, lines: {sum(sizes.values())}, largest: "
        + ", ".join(f"{m} {n}" for n, m in big),
        f"import statements naming package modules: {len(stmts)} ({sum(not lazy for lazy in stmts.values())} "
        f"module-level, {sum(stmts.values())} function-level); distinct module pairs: "
        f"{sum(len(v) for v in g.values())}",
        f"strongly connected components (cycles): {len(comps)}, modules in them: {sum(map(len, comps))}, "
        f"simple cycles: {len(cyc)}{'+' if len(cyc) >= 100000 else ''}",
    ]
    for c in comps:
        lines.append(f"  SCC ({len(c)}): {' '.join(c)}")
    short = sorted(cyc, key=len)[:15]
    for c in short:
        lines.append("  cycle: " + " -> ".join(c + [c[0]]))
    if LAYERS:
        lines.append(f"modules with no layer: {unplaced(mods) or 'none'}")
        up = upward(es)
        lines.append(f"upward imports: {len(up)}")
        for e in up:
            lines.append(f"  {e.src}:{e.line} -> {e.dst}{' (function-level)' if e.lazy else ''}")
    lines.append(f"modules over {MAX_LINES} lines without a 'Size:' reason: {oversized(root) or 'none'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
