"""``python -m dual_adapter run WORKFLOW.json``: run an API-format workflow without the ComfyUI server."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from ..errors import DualAdapterError

PACK_ROOT = Path(__file__).resolve().parents[2]


def load_node_classes() -> dict:
    """The pack's node classes plus the headless stand-ins of the core nodes its workflows use.

    The pack's ``nodes/`` folder is loaded under a private module name (``dual_adapter_pack_nodes``) so
    that it never collides with ComfyUI's own top-level ``nodes`` module.

    Raises:
        DualAdapterError: the pack's ``nodes/`` folder is not beside ``dual_adapter/`` (a non-source install).
    """
    name = "dual_adapter_pack_nodes"
    if name not in sys.modules:
        init = PACK_ROOT / "nodes" / "__init__.py"
        if not init.is_file():
            raise DualAdapterError(f"the headless runner needs the pack's nodes/ folder beside dual_adapter/ "
                                   f"(looked for {init}); run it from a source checkout of the pack")
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    pack = sys.modules[name]
    core = importlib.import_module(f"{name}.headless_core")
    return {**core.HEADLESS_CORE_NODES, **pack.NODE_CLASS_MAPPINGS}


def register(sub) -> None:
    p = sub.add_parser("run", help="run an API-format ComfyUI workflow headless (no server)",
                       description="Run a workflow's API-format twin (workflows/api/NAME.json, or ComfyUI's "
                                   "Export (API)) with the pack's nodes, without the ComfyUI server. Given a "
                                   "UI-format file from example_workflows/, its API twin in workflows/api/ is used.")
    p.add_argument("workflow", help="API-format workflow JSON")
    p.add_argument("--output-dir", default=None, help="where files are written (default ./output)")
    p.add_argument("--input-dir", default=None, help="where LoadImage / Load Clip look for input names (default ./input)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..graph import api_twin, load_workflow, read_json, run_workflow

    if args.output_dir:
        os.environ["DUAL_ADAPTER_OUTPUT"] = args.output_dir
    if args.input_dir:
        os.environ["DUAL_ADAPTER_INPUT"] = args.input_dir

    path = Path(args.workflow)
    twin = api_twin(path)
    if twin is not None and path.is_file():
        try:
            ui = read_json(path, f"workflow {str(path)!r}")
            if isinstance(ui, dict) and "nodes" in ui:
                path = twin
        except DualAdapterError:
            pass  # load_workflow reports it
    wf = load_workflow(path)
    classes = load_node_classes()
    from ..progress import console, format_duration, set_console_label

    t0 = time.time()

    def on_node(nid, ct, k, n):
        set_console_label(f"[{k}/{n}] node {nid} {ct}")
        print(f"[{k}/{n}] node {nid} {ct}: running (started {format_duration(time.time() - t0)} into the run)",
              file=sys.stderr, flush=True)

    def on_node_done(nid, ct, k, n, seconds):
        print(f"[{k}/{n}] node {nid} {ct}: done in {format_duration(seconds)}", file=sys.stderr, flush=True)

    with console():  # the nodes' progress bars print progress lines here
        out = run_workflow(wf, classes, on_node=on_node, on_node_done=on_node_done)
    for k, v in out.items():
        if k.startswith("ui:"):
            for img in v.get("images", []):
                print(f"wrote {Path(os.environ.get('DUAL_ADAPTER_OUTPUT', 'output')) / img['subfolder'] / img['filename']}")
            for t in v.get("text", []):
                print(t)
    print(f"workflow done in {format_duration(time.time() - t0)}", file=sys.stderr)
    return 0
