"""The layer rule of ``dual_adapter/`` (CONTRIBUTING.md): no import cycle and no import up the layer order,
counting every import (module level and inside functions); no module over 700 lines without a written reason.

Read from the source with ``ast`` (nothing is imported), by ``tools/import_graph.py``.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location("_import_graph", ROOT / "tools" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


G = _load_tool()


@pytest.fixture(scope="module")
def edges():
    return G.edges(ROOT)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself: a cycle made only of a function-level import is found, and an upward import is named."""
    pkg = tmp_path / G.PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .sub import deep\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("from ..errors import f\nfrom .. import errors\n")
    es = G.edges(tmp_path)
    pairs = {(e.src, e.dst, e.lazy) for e in es}
    assert ("dual_adapter.errors", "dual_adapter.sub.deep", True) in pairs
    assert ("dual_adapter.sub.deep", "dual_adapter.errors", False) in pairs
    assert G.cycles_scc(G.graph(es)) == [["dual_adapter.errors", "dual_adapter.sub.deep"]]
    assert G.simple_cycles(G.graph(es)) == [["dual_adapter.errors", "dual_adapter.sub.deep"]]
    # errors is in the lowest layer; a new top-level module is in none until placed
    assert G.layer_of("dual_adapter.errors") == 0 and G.layer_of("dual_adapter.sub.deep") is None
    up = G.upward([G.Edge("dual_adapter.errors", "dual_adapter.models", 2, True)])
    assert len(up) == 1


def test_no_import_cycle(edges):
    comps = G.cycles_scc(G.graph(edges))
    cycles = sorted(G.simple_cycles(G.graph(edges), limit=20), key=len)
    assert not comps, "import cycles (function-level imports counted): " + "; ".join(
        " -> ".join(c + [c[0]]) for c in cycles)


def test_every_module_has_a_layer():
    missing = G.unplaced(G.modules(ROOT))
    assert not missing, (f"modules in no layer: {missing}; add each to LAYERS in tools/import_graph.py and to the "
                         f"diagram in CONTRIBUTING.md")


def test_no_import_points_up_the_layers(edges):
    up = G.upward(edges)
    names = [name for name, _ in G.LAYERS]
    assert not up, "imports up the layer order (CONTRIBUTING.md):\n" + "\n".join(
        f"  {e.src} ({names[G.layer_of(e.src)]}) line {e.line} imports {e.dst} ({names[G.layer_of(e.dst)]})"
        f"{' inside a function' if e.lazy else ''}" for e in up)


def test_the_layers_in_contributing_match_the_test():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for name, _ in G.LAYERS:
        assert f"\n  {name} " in text, f"layer {name!r} is not in CONTRIBUTING.md's diagram"
    order = [text.index(f"\n  {name} ") for name, _ in G.LAYERS]
    assert order == sorted(order, reverse=True), "CONTRIBUTING.md lists the layers top (highest) to bottom"


def test_nothing_in_the_package_imports_the_deprecated_re_export(edges):
    users = sorted({e.src for e in edges if e.dst == "dual_adapter.backbone"})
    assert not users, f"import dual_adapter.models / backbones.cogvideox / backbones.base instead, in {users}"


def test_only_the_headless_runner_reaches_the_front_end():
    """The library never imports ComfyUI nor the pack's nodes/; commands/run.py loads nodes/ by path, the one
    documented way in."""
    bad = []
    for mod, path in G.modules(ROOT).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for n in ast.walk(tree):
            names = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and not n.level:
                names = [n.module or ""]
            names += [n.func.attr] if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) else []
            for x in names:
                if x.split(".")[0] in ("comfy", "folder_paths", "nodes", "comfy_extras", "server") or \
                        (x == "spec_from_file_location" and mod != "dual_adapter.commands.run"):
                    bad.append(f"{mod}:{n.lineno} {x}")
    assert not bad, f"the library reaches the front-end: {bad}"


def test_no_module_over_the_size_limit_without_a_reason():
    big = G.oversized(ROOT)
    assert not big, (f"modules over {G.MAX_LINES} lines: {big}; split them, or write in the module docstring "
                     f"a paragraph beginning 'Size:' that says why not yet")
