"""Run a ComfyUI API-format workflow without the ComfyUI server (headless, for scripted pipelines).

An API-format workflow is ``{node_id: {"class_type": str, "inputs": {name: value | [src_id, slot]}}}``
(ComfyUI's "Export (API)"). :func:`run_workflow` validates it the way ComfyUI does (unknown node,
missing required input, combo value not in its list, INT/FLOAT outside min/max), then executes
every output node and what it depends on, once each, in dependency order, under
``torch.inference_mode()`` as ComfyUI does.

The node classes are passed in (``node_classes``), so this module stays free of ComfyUI and of the
pack's ``nodes/`` package; ``python -m dual_adapter run`` supplies them.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import DualAdapterError, InterruptedByUser

log = logging.getLogger(__name__)

__all__ = ["load_workflow", "api_twin", "validate_workflow", "run_workflow", "ui_to_api", "has_seed_control",
           "shape_problems", "read_json"]


def load_workflow(path: str | Path) -> dict:
    """Read an API-format workflow JSON (``{id: {"class_type", "inputs"}}``).

    Raises:
        DualAdapterError: the file is missing, not JSON (or nested too deeply to read), is a UI-format
            workflow (it says to use the API twin, :func:`api_twin`, or ComfyUI's "Export (API)"), has no
            nodes, or a node that is not ``{"class_type": str, "inputs": {...}}`` (names the node id).
    """
    p = Path(path)
    if not p.is_file():
        raise DualAdapterError(f"workflow {str(p)!r} does not exist")
    wf = read_json(p, f"workflow {str(p)!r}")
    if isinstance(wf, dict) and "nodes" in wf and "links" in wf:
        twin = api_twin(p)
        hint = f" (its API twin is {twin})" if twin is not None else ""
        raise DualAdapterError(f"workflow {str(p)!r} is in ComfyUI's UI format; the headless runner takes the "
                               f"API format (ComfyUI: Workflow > Export (API)){hint}")
    problems = shape_problems(wf)
    if problems:
        raise DualAdapterError(f"workflow {str(p)!r} is not an API-format workflow ({{id: {{class_type, inputs}}}}): "
                               + "; ".join(problems))
    return wf


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, or raise :class:`DualAdapterError` naming ``what``: invalid JSON, or nesting deeper
    than Python's parser can follow (``RecursionError``, e.g. ``[[[[...`` 200,000 deep)."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DualAdapterError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise DualAdapterError(f"{what} is nested too deeply to read (an API workflow is two levels deep: "
                               f"{{id: {{class_type, inputs}}}})") from None


def shape_problems(wf: Any) -> list[str]:
    """What keeps ``wf`` from being an API-format workflow (empty = it has that shape): not an object, no
    nodes, a node that is not an object, whose ``class_type`` is not a string or whose ``inputs`` is not an
    object. Each problem names the node id."""
    if not isinstance(wf, dict):
        return [f"the top level is a {type(wf).__name__}, not an object of nodes"]
    if not wf:
        return ["the workflow has no nodes"]
    out = []
    for nid, node in wf.items():
        if not isinstance(node, dict):
            out.append(f"node {nid} is a {type(node).__name__}, not an object with class_type and inputs")
        elif not isinstance(node.get("class_type"), str):
            out.append(f"node {nid}: class_type must be a string (a node class name), got {node.get('class_type')!r}"[:300])
        elif not isinstance(node.get("inputs", {}), dict):
            out.append(f"node {nid} ({node['class_type']}): inputs must be an object {{name: value or [node_id, "
                       f"output]}}, got a {type(node['inputs']).__name__}")
    return out


def api_twin(path: str | Path) -> Path | None:
    """The API-format twin of a UI-format workflow ``path``, or None: ``<folder>/api/NAME.json``, or for the pack's
    shipped ``example_workflows/NAME.json`` the file of that name in ``workflows/api/`` or ``workflows/native/api/``."""
    p = Path(path)
    root = Path(__file__).resolve().parents[1]
    for twin in (p.parent / "api" / p.name, root / "workflows" / "api" / p.name,
                 root / "workflows" / "native" / "api" / p.name):
        if twin.is_file() and (twin.parent.parent == p.parent or p.parent.name == "example_workflows"):
            return twin
    return None


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _input_spec(cls) -> dict[str, tuple]:
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, s in (spec.get(section) or {}).items():
            out[name] = (section, s)
    return out


def validate_workflow(wf: Mapping[str, dict], node_classes: Mapping[str, type]) -> list[str]:
    """Check a workflow against node definitions; returns a list of problems (empty = valid).

    Mirrors ComfyUI's checks: unknown class, link to a missing node or output slot, missing required
    input, combo value not in its list, number outside [min, max]; and at least one output node. A
    workflow without the API shape (:func:`shape_problems`: no nodes, a node whose ``class_type`` is not a
    string or whose ``inputs`` is not an object) gets those problems only.
    """
    errs: list[str] = shape_problems(wf)
    if errs:
        return errs
    outputs = 0
    for nid, node in wf.items():
        ct = node.get("class_type")
        cls = node_classes.get(ct)
        if cls is None:
            errs.append(f"node {nid}: class {ct!r} does not exist")
            continue
        outputs += bool(getattr(cls, "OUTPUT_NODE", False))
        inputs = node.get("inputs", {})
        for name, (section, s) in _input_spec(cls).items():
            typ = s[0]
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            if name not in inputs:
                if section == "required" and "default" not in opts and not isinstance(typ, list):
                    errs.append(f"node {nid} ({ct}): required input {name!r} is missing")
                continue
            v = inputs[name]
            if _is_link(v):
                src = wf.get(v[0])
                if src is None:
                    errs.append(f"node {nid} ({ct}): input {name!r} links to missing node {v[0]}")
                elif src.get("class_type") in node_classes:
                    n_out = len(node_classes[src["class_type"]].RETURN_TYPES)
                    if not 0 <= v[1] < n_out:
                        errs.append(f"node {nid} ({ct}): input {name!r} links to output {v[1]} of node {v[0]}, "
                                    f"which has {n_out}")
                continue
            if isinstance(typ, list):
                if v not in typ:
                    errs.append(f"node {nid} ({ct}): {name}={v!r} is not one of {typ[:8]}{'...' if len(typ) > 8 else ''}")
            elif typ in ("INT", "FLOAT"):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    errs.append(f"node {nid} ({ct}): {name}={v!r} is not a number")
                    continue
                if "min" in opts and v < opts["min"]:
                    errs.append(f"node {nid} ({ct}): {name}={v} is below its minimum {opts['min']}")
                if "max" in opts and v > opts["max"]:
                    errs.append(f"node {nid} ({ct}): {name}={v} is above its maximum {opts['max']}")
            elif typ == "BOOLEAN" and not isinstance(v, bool):
                errs.append(f"node {nid} ({ct}): {name}={v!r} is not a boolean")
            elif typ == "STRING" and not isinstance(v, str):
                errs.append(f"node {nid} ({ct}): {name}={v!r} is not a string")
    if wf and outputs == 0:
        errs.append("the workflow has no output node (a Save / Preview node)")
    return errs


def run_workflow(
    wf: Mapping[str, dict],
    node_classes: Mapping[str, type],
    on_node: Callable[[str, str, int, int], None] | None = None,
    on_node_done: Callable[[str, str, int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Execute a validated API-format workflow.

    Args:
        wf: the workflow (see module docstring).
        node_classes: class_type -> node class (the pack's nodes plus the headless stand-ins of the
            core nodes it uses).
        on_node: ``on_node(node_id, class_type, k, n)`` before each node runs (progress display).
        on_node_done: ``on_node_done(node_id, class_type, k, n, seconds)`` after each node ran.

    Returns:
        ``{node_id: outputs}`` for every executed node; an output node's value is its ``"ui"`` dict
        when it returns one (file names written), else its result tuple.

    Raises:
        DualAdapterError: the workflow is invalid (all problems listed), or a node failed (names the
            node id and class, with the node's own message).
    """
    errs = validate_workflow(wf, node_classes)
    if errs:
        raise DualAdapterError("workflow is not valid:\n  " + "\n  ".join(errs))
    results: dict[str, tuple] = {}
    order = _execution_order(wf, [nid for nid, node in wf.items()
                                  if getattr(node_classes[node["class_type"]], "OUTPUT_NODE", False)])
    ui: dict[str, Any] = {}
    with torch.inference_mode():
        for k, nid in enumerate(order):
            node = wf[nid]
            ct = node["class_type"]
            cls = node_classes[ct]
            if on_node:
                on_node(nid, ct, k + 1, len(order))
            kwargs = {}
            spec = _input_spec(cls)
            for name, v in node.get("inputs", {}).items():
                if name not in spec:
                    continue  # ComfyUI ignores unknown inputs too
                kwargs[name] = results[v[0]][v[1]] if _is_link(v) else v
            obj = cls()
            t_node = time.time()
            try:
                out = getattr(obj, cls.FUNCTION)(**kwargs)
            except DualAdapterError as e:
                raise DualAdapterError(f"node {nid} ({ct}) failed: {e}") from None
            except Exception as e:  # a bug or an unchecked input: still say which node, keep the traceback in the log
                if isinstance(e, InterruptedByUser):
                    raise
                log.debug("node %s (%s) raised", nid, ct, exc_info=True)
                raise DualAdapterError(f"node {nid} ({ct}) failed: {type(e).__name__}: {e}") from e
            if on_node_done:
                on_node_done(nid, ct, k + 1, len(order), time.time() - t_node)
            if isinstance(out, dict):
                ui[nid] = out.get("ui", {})
                out = tuple(out.get("result", ()))
            results[nid] = tuple(out) if out is not None else ()
    return {**{k: v for k, v in results.items()}, **{f"ui:{k}": v for k, v in ui.items()}}


def _execution_order(wf: Mapping[str, dict], outputs: list[str]) -> list[str]:
    """The nodes ``outputs`` depend on, each after its inputs, once each (a depth-first walk in input order,
    iterative: a chain of any length works). Raises :class:`DualAdapterError` on a cycle, naming a node."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def deps(nid: str):
        return iter([v[0] for v in wf[nid].get("inputs", {}).values() if _is_link(v)])

    for root in outputs:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, deps(root))]
        while stack:
            nid, it = stack[-1]
            for dep in it:
                if state.get(dep) == 1:
                    raise DualAdapterError(f"workflow has a cycle through node {dep}")
                if dep not in state:
                    state[dep] = 1
                    stack.append((dep, deps(dep)))
                    break
            else:
                stack.pop()
                state[nid] = 2
                order.append(nid)
    return order


def has_seed_control(name: str, typ, opts: Mapping) -> bool:
    """Whether ComfyUI's frontend puts a ``control_after_generate`` widget after this input.

    It does for inputs that ask for it and, by legacy rule, for every INT input named ``seed`` or
    ``noise_seed``; a UI workflow then holds one extra widget value after it.
    """
    return bool(opts.get("control_after_generate")) or (typ == "INT" and name in ("seed", "noise_seed"))


def ui_to_api(ui_wf: Mapping[str, Any], node_classes: Mapping[str, type]) -> dict[str, dict]:
    """Convert a UI-format workflow to API format using the node definitions (widget order).

    Frontend-only nodes (Note, MarkdownNote) and muted / bypassed nodes (mode != 0) are dropped.
    ``control_after_generate`` values that follow a seed widget are skipped, as the frontend does.

    Raises:
        DualAdapterError: a node class is unknown or its widget values do not match its definition.
    """
    links = {l[0]: l for l in ui_wf.get("links", [])}
    api: dict[str, dict] = {}
    for n in ui_wf.get("nodes", []):
        if n.get("type") in ("Note", "MarkdownNote") or n.get("mode", 0) != 0:
            continue
        cls = node_classes.get(n["type"])
        if cls is None:
            raise DualAdapterError(f"UI workflow node {n.get('id')}: class {n['type']!r} does not exist")
        inputs: dict[str, Any] = {}
        linked = {}
        for i in n.get("inputs", []):
            if i.get("link") is not None:
                l = links[i["link"]]
                linked[i["name"]] = [str(l[1]), int(l[2])]
        wv = list(n.get("widgets_values") or [])
        pos = 0
        for name, (section, s) in _input_spec(cls).items():
            typ = s[0]
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            is_widget = isinstance(typ, list) or typ in ("INT", "FLOAT", "STRING", "BOOLEAN")
            if name in linked:
                inputs[name] = linked[name]
                if is_widget and not opts.get("forceInput"):
                    pos += 1 + has_seed_control(name, typ, opts)
                continue
            if not is_widget or opts.get("forceInput"):
                continue
            if pos >= len(wv):
                raise DualAdapterError(f"UI workflow node {n.get('id')} ({n['type']}): no widget value for {name!r}")
            inputs[name] = wv[pos]
            pos += 1 + has_seed_control(name, typ, opts)
            if opts.get("image_upload"):  # its upload widget holds a value in the file; video_upload's does not
                pos += 1
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return api
