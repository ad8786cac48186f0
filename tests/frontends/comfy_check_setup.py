"""What the in-host check scripts (tests/frontends/comfy_native_check.py, tests/frontends/comfy_native_wan_check.py) share: import
ComfyUI from ``COMFYUI_PATH`` on the CPU, import the pack under ``dual_adapter_pack`` the way ComfyUI imports a
custom node (ComfyUI's top-level ``nodes`` and the pack's ``nodes`` cannot share one interpreter's name), and
register a scratch models folder. Not a pytest module."""
from __future__ import annotations

import importlib
import importlib.util
import re
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


#: diffusers -> native names of the parts that are not the blocks' Linear layers (diffusers' Wan conversion table)
WAN_TOP = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
           "condition_embedder.time_embedder.linear_2": "time_embedding.2",
           "condition_embedder.text_embedder.linear_1": "text_embedding.0",
           "condition_embedder.text_embedder.linear_2": "text_embedding.2",
           "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head", "patch_embedding": "patch_embedding"}


def native_wan_key(k: str) -> str:
    """The native ComfyUI name of a diffusers Wan transformer key (what core UNETLoader reads)."""
    from dual_adapter.lora.formats import wan_diffusers_to_native_module

    if k == "scale_shift_table":
        return "head.modulation"
    m = re.match(r"blocks\.(\d+)\.(.+)$", k)
    if m is None:
        mod, leaf = k.rsplit(".", 1)
        return f"{WAN_TOP[mod]}.{leaf}"
    i, rest = m.groups()
    if rest == "scale_shift_table":
        return f"blocks.{i}.modulation"
    if rest.startswith("norm2."):  # the cross-attention norm
        return f"blocks.{i}.norm3.{rest[6:]}"
    for a, b in (("attn1.", "self_attn."), ("attn2.", "cross_attn.")):
        if rest.startswith(a + "norm_"):
            return f"blocks.{i}.{b}{rest[len(a):]}"
    mod, leaf = f"blocks.{i}.{rest}".rsplit(".", 1)
    return f"{wan_diffusers_to_native_module(mod)}.{leaf}"


#: a tiny Wan 2.1 text-to-video transformer that core detects as Wan 2.1 by its weights (heads = width / 128, text
#: width 4096, freq_dim 256)
WAN_TINY_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16,
                       out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                       qk_norm="rms_norm_across_heads")


def write_tiny_native_wan(path: Path, seed: int = 0):
    """Write a seeded random tiny diffusers Wan (:data:`WAN_TINY_CONFIG`) with native names to ``path`` (a single file
    for core UNETLoader) and return the diffusers model."""
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    t = WanTransformer3DModel(**WAN_TINY_CONFIG).eval().requires_grad_(False)
    for n, p in t.named_parameters():  # random everywhere (zero-init layers would hide differences)
        p.data.normal_(0, 0.05)
        if "norm" in n and n.endswith("weight") and p.ndim == 1:
            p.data.add_(1.0)
    save_file({native_wan_key(k): v.contiguous() for k, v in t.state_dict().items()}, str(path))
    return t
