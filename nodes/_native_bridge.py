"""ComfyUI-only calls for the native-model nodes (core MODEL = ``comfy.model_patcher.ModelPatcher``).

Imported lazily by ``nodes/native_nodes.py`` when a native node runs, so the pack imports without
ComfyUI. Everything here works on a *clone* of the incoming MODEL (ComfyUI caches node outputs).
"""
from __future__ import annotations

import logging

import torch

from dual_adapter.errors import DualAdapterError

log = logging.getLogger(__name__)


WAN_MODULE = "comfy.ldm.wan.model"


def is_wan(model) -> bool:
    """Whether a core MODEL holds core's native Wan (``comfy.ldm.wan``)."""
    return type(model.get_model_object("diffusion_model")).__module__ == WAN_MODULE


def _diffusion_model(model, wan_ok: bool = False):
    if not hasattr(model, "get_model_object") or not hasattr(model, "add_object_patch"):
        raise DualAdapterError(f"model: expected a core MODEL (from UNETLoader / CheckpointLoader), got "
                               f"{type(model).__name__}")
    dm = model.get_model_object("diffusion_model")
    if wan_ok and type(dm).__module__ == WAN_MODULE and hasattr(dm, "blocks"):
        return dm
    if type(dm).__module__ != "comfy.ldm.cogvideo.model" or not hasattr(dm, "blocks"):
        raise DualAdapterError(f"model: this MODEL is a {type(dm).__name__} ({type(dm).__module__}), not core's "
                               f"native CogVideoX (comfy.ldm.cogvideo, ComfyUI >= 0.19)"
                               f"{' or Wan (comfy.ldm.wan)' if wan_ok else ''}; load a CogVideoX "
                               f"{'or Wan ' if wan_ok else ''}transformer with UNETLoader")
    return dm


def check_fidelity(model, allow_divergent: bool = False, trained_fingerprint: str | None = None) -> list[str]:
    """Warn (log) or refuse where core's port differs from the diffusers model adapters / LoRAs were trained on.

    Returns the warnings (texts). Raises :class:`DualAdapterError` naming the cause for a ``refuse`` divergence
    unless ``allow_divergent``."""
    from dual_adapter.native import native_model_divergences

    out = []
    for d in native_model_divergences(_diffusion_model(model), trained_fingerprint):
        if d.severity == "refuse" and not allow_divergent:
            raise DualAdapterError(f"core ComfyUI's CogVideoX runs another model than the one the pack's adapters "
                                   f"are trained on: {d}. Set allow_divergent to apply anyway, or use the pack's own "
                                   f"Load Video Model")
        log.warning("native CogVideoX differs from diffusers: %s", d)
        out.append(str(d))
    return out


def apply_dualreal(model, adapters, reference=None, *, fixed_weights=None, identity_scale: float = 1.0,
                   motion_scale: float = 1.0, allow_divergent: bool = False):
    """A clone of a native CogVideoX MODEL with DualReal's DA-blocks as object patches on
    ``diffusion_model.blocks.{i}`` (chained over existing object patches) and the adapters registered as an
    additional model (ComfyUI loads, offloads and counts them with the model)."""
    import comfy.model_patcher  # type: ignore
    from comfy.ldm.modules.attention import optimized_attention  # type: ignore

    from dual_adapter.dualreal import DualRealAdapterSet
    from dual_adapter.dualreal.native_patch import build_native_da_blocks
    from dual_adapter.dualreal.patch import DualRealContext
    from dual_adapter.reference import as_reference_embedding

    if not isinstance(adapters, DualRealAdapterSet):
        raise DualAdapterError(f"adapters must be DUALREAL_ADAPTERS, got {type(adapters).__name__}")
    dm = _diffusion_model(model, wan_ok=True)
    if type(dm).__module__ == WAN_MODULE:
        return _apply_dualreal_wan(model, dm, adapters, reference, fixed_weights, identity_scale, motion_scale)
    check_fidelity(model, allow_divergent, adapters.meta.get("base_fingerprint"))
    n = model.clone()
    blocks = [n.get_model_object(f"diffusion_model.blocks.{i}") for i in range(len(dm.blocks))]
    mod = _adapter_module(n, adapters)
    ref = as_reference_embedding(reference) if reference is not None else None
    ctx = DualRealContext(adapters.config, ref, fixed_weights, identity_scale, motion_scale)
    for i, b in enumerate(build_native_da_blocks(blocks, mod, ctx, attention=optimized_attention)):
        n.add_object_patch(f"diffusion_model.blocks.{i}", b)
    n.set_additional_models("dualreal", [comfy.model_patcher.ModelPatcher(mod, load_device=n.load_device,
                                                                          offload_device=n.offload_device)])
    return n


def _adapter_module(n, adapters):
    """The adapters as a module in the MODEL's dtype (fp8 / quantised weights: bf16), on its offload device."""
    dtype = n.model_dtype() if hasattr(n, "model_dtype") else torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        dtype = torch.bfloat16
    with torch.inference_mode(False):
        return adapters.to_module(device=n.offload_device, dtype=dtype)


def _apply_dualreal_wan(model, dm, adapters, reference, fixed_weights, identity_scale, motion_scale):
    """DualReal on a native Wan MODEL: a block replace per block (``patches_replace["dit"][("double_block", i)]``,
    :mod:`dual_adapter.dualreal.native_wan`), the timestep features recorded by an object patch on
    ``diffusion_model.time_embedding``, the adapters registered as an additional model."""
    import comfy.model_patcher  # type: ignore

    from dual_adapter.dualreal.native_wan import TimeFeatures, build_native_wan_replacements
    from dual_adapter.dualreal.patch import DualRealContext
    from dual_adapter.reference import as_reference_embedding

    n = model.clone()
    replaced = (n.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {}))
    if any(k[0] == "double_block" for k in replaced):
        raise DualAdapterError("model: this Wan MODEL already has block replace patches (DualReal or another pack's); "
                               "apply DualReal to a MODEL without them")
    mod = _adapter_module(n, adapters)
    ref = as_reference_embedding(reference) if reference is not None else None
    ctx = DualRealContext(adapters.config, ref, fixed_weights, identity_scale, motion_scale)
    for i, r in enumerate(build_native_wan_replacements(dm, mod, ctx)):
        n.set_model_patch_replace(r, "dit", "double_block", i)
    n.add_object_patch("diffusion_model.time_embedding",
                       TimeFeatures(n.get_model_object("diffusion_model.time_embedding"), ctx.state))
    n.set_additional_models("dualreal", [comfy.model_patcher.ModelPatcher(mod, load_device=n.load_device,
                                                                          offload_device=n.offload_device)])
    return n


def apply_lora(model, lora, strength: float = 1.0, allow_divergent: bool = False):
    """A clone of a native CogVideoX or Wan MODEL with the pack's LoRA added as core weight patches (what
    LoraLoaderModelOnly does with the same LoRA in native names); stacks with other core LoRAs.

    Raises:
        DualAdapterError: a LoRA module core's key map does not have (names them) or a non-native MODEL.
    """
    import comfy.lora  # type: ignore
    import comfy.sd  # type: ignore

    from dual_adapter.lora.formats import native_lora_state_dict

    _diffusion_model(model, wan_ok=True)
    if not is_wan(model):  # the divergences of core's port are CogVideoX's
        check_fidelity(model, allow_divergent, (lora.metadata or {}).get("base_fingerprint"))
    sd = native_lora_state_dict(lora)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    prefixes = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd})
    missing = [p for p in prefixes if p not in key_map]
    if missing:
        raise DualAdapterError(f"LoRA {lora.name!r} names layers this native "
                               f"{'Wan' if is_wan(model) else 'CogVideoX'} model does not have: {missing[:6]}")
    new_model, _ = comfy.sd.load_lora_for_models(model, None, sd, float(strength), 0.0)
    return new_model
