"""What the in-host check scripts (tests/frontends/comfy_native_check.py, tests/frontends/comfy_native_wan_check.py) share: import
ComfyUI from ``COMFYUI_PATH`` on the CPU, import the pack under ``dual_adapter_pack`` the way ComfyUI imports a
custom node (ComfyUI's top-level ``nodes`` and the pack's ``nodes`` cannot share one interpreter's name), and
register a scratch models folder. Not a pytest module."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def start(argv: list[str]) -> SimpleNamespace:
    """``argv`` = ``[script, COMFYUI_PATH, WORKDIR?]`` -> ComfyUI's modules, the pack's native nodes and bridge, and
    ``models_dir`` (``WORKDIR/models`` with ``diffusion_models/`` and ``loras/`` registered in folder_paths)."""
    comfy = Path(argv[1]).resolve()
    work = Path(argv[2]) if len(argv) > 2 else Path(tempfile.mkdtemp())
    sys.path.insert(0, str(comfy))
    from comfy.cli_args import args

    args.cpu = True
    import torch

    torch.set_num_threads(1)
    import comfy.model_management as mm
    import comfy.sd  # noqa: F401  (loads ComfyUI's model classes)
    import folder_paths
    import nodes as core_nodes  # ComfyUI's nodes.py

    spec = importlib.util.spec_from_file_location("dual_adapter_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["dual_adapter_pack"] = pack
    spec.loader.exec_module(pack)
    models_dir = work / "models"
    for kind in ("diffusion_models", "loras"):
        (models_dir / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(models_dir / kind), is_default=True)
    return SimpleNamespace(comfy=comfy, work=work, mm=mm, core_nodes=core_nodes, models_dir=models_dir,
                           bridge=importlib.import_module("dual_adapter_pack.nodes._native_bridge"),
                           native_nodes=importlib.import_module("dual_adapter_pack.nodes.native_nodes"))
