"""LoRA file layouts, as pure dict -> dict converters (no I/O: :mod:`dual_adapter.lora.file` reads and writes).

Every layout is turned into the pack's: ``transformer.{module}.lora_A.weight`` ``[r, in]`` /
``.lora_B.weight`` ``[out, r]`` plus each module's alpha (the update is ``lora_B @ lora_A * alpha / rank``).
One module per layout, and per backbone where the key names differ:

* :mod:`.peft`: diffusers (``transformer.*`` / ``unet.*``) and peft (``base_model.model.*``), their alpha metadata;
* :mod:`.kohya`: ``lora_unet_{module_}.lora_down/lora_up/alpha`` (names resolved with the model's layer names, or a
  backbone's table), VideoX-Fun's double underscore;
* :mod:`.native`: core ComfyUI's ``diffusion_model.{native module}.lora_down/lora_up/alpha``;
* :mod:`.cogvideox`, :mod:`.wan`: those backbones' kohya and native name tables.

:func:`normalize_lora_tensors` rewrites the native / VideoX-Fun / finetrainers / Wan layouts into diffusers or kohya
names; :func:`to_diffusers` then gives the pack's layout. docs/file_formats.md lists every layout.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Mapping

import torch

from ...errors import DualAdapterError
from .cogvideox import NATIVE_BLOCK_LINEARS, diffusers_to_native_module, is_native, is_native_kohya, kohya_module, native_kohya_to_kohya, \
    native_to_diffusers, resolve_kohya
from .kohya import diffusers_to_kohya, double_underscore_to_kohya, kohya_to_diffusers, underscore_table
from .peft import COMPONENT_PREFIXES, alpha_number, diffusers_to_peft, layout_of, peft_to_diffusers
from .wan import WAN_KOHYA_HINT, WAN_NATIVE_HINT, WAN_NATIVE_TO_DIFFUSERS, is_wan_module, \
    wan_diffusers_to_native_module, wan_kohya_to_native, wan_native_to_diffusers, wan_native_to_diffusers_module, \
    wan_native_to_kohya

__all__ = ["normalize_lora_tensors", "to_diffusers", "native_lora_state_dict", "kohya_lora_state_dict",
           "diffusers_to_kohya", "diffusers_to_peft", "NATIVE_BLOCK_LINEARS", "WAN_NATIVE_TO_DIFFUSERS",
           "wan_native_to_diffusers_module", "wan_diffusers_to_native_module", "wan_native_to_diffusers",
           "wan_kohya_to_native", "wan_native_to_kohya", "kohya_module", "COMPONENT_PREFIXES", "alpha_number"]


def _finetrainers_alpha(md: dict) -> None:
    """finetrainers: alpha in the ``lora_config`` metadata -> diffusers' ``lora_adapter_metadata`` when absent."""
    lc = md.get("lora_config")
    if lc is None or md.get("lora_adapter_metadata") is not None:
        return
    if isinstance(lc, str):
        try:
            lc = json.loads(lc)
        except ValueError:
            lc = None
    if isinstance(lc, dict):
        cfg = lc.get("transformer", lc) if isinstance(lc.get("transformer"), dict) else lc
        if cfg.get("lora_alpha") is not None:
            md["lora_adapter_metadata"] = json.dumps({k: v for k, v in cfg.items()
                                                      if k in ("r", "lora_alpha", "alpha_pattern",
                                                               "rank_pattern", "target_modules")})


def normalize_lora_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                           path: str = "LoRA") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rewrite native / VideoX-Fun / finetrainers / Wan layouts into diffusers or kohya names (see module doc).

    Other layouts pass through unchanged.

    Raises:
        DualAdapterError: native ``.diff`` / ``.diff_b`` keys (names them and says what loads them), or a
            native key that names no CogVideoX / Wan layer.
    """
    where = f"LoRA file {str(path)!r}"
    t = dict(tensors)
    md = dict(meta or {})
    _finetrainers_alpha(md)
    if any(k.startswith("lora_unet__") for k in t):
        t = double_underscore_to_kohya(t)
    if any(WAN_KOHYA_HINT.match(k) for k in t):  # Wan: musubi-tuner / kohya names, then native / original names
        t = wan_kohya_to_native(t)
    if any(WAN_NATIVE_HINT.match(k) for k in t):
        return wan_native_to_diffusers(t, where), md
    if is_native_kohya(t):  # CogVideoX native kohya names: lora_unet_blocks_{i}_q...
        t = native_kohya_to_kohya(t, where)
    if is_native(t):  # CogVideoX native dotted names: diffusion_model.blocks.{i}.q.lora_up.weight
        t = native_to_diffusers(t, where)
    return t, md


def to_diffusers(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, ours: bool, where: str = "LoRA",
                 modules: Iterable[str] | None = None, peft_config: Callable[[], dict] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float], str, list[str]]:
    """Normalised tensors (:func:`normalize_lora_tensors`) -> ``(state_dict, alphas, layout, skipped)``.

    ``layout`` is ``"kohya"``, ``"dual_adapter"`` (``ours``: the pack's metadata), ``"peft"`` or ``"diffusers"``.
    ``modules``: the Linear layer names of the model the LoRA is for; kohya names are resolved against them
    (default: CogVideoX's layer table). ``peft_config``: see :func:`.peft.peft_to_diffusers`.

    Raises:
        DualAdapterError: unsupported variants (DoRA, LoHa, LoKr, LoRA biases), or keys of no known layer.
    """
    keys = list(tensors)
    unsupported = [k for k in keys if "dora_scale" in k or "lora_magnitude_vector" in k
                   or re.search(r"\.lora_B(\.[^.]+)?\.bias$", k) or "hada_" in k or "lokr_" in k]
    if unsupported:
        raise DualAdapterError(f"{where} uses a LoRA variant this loader does not apply (DoRA, LoHa, LoKr or "
                               f"LoRA biases): {unsupported[:5]}")
    if any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in keys):
        if modules is None:
            resolve, model = resolve_kohya, "CogVideoX transformer"
        else:
            resolve, model = underscore_table(modules).get, "Linear"
        sd, alphas, skipped = kohya_to_diffusers(tensors, resolve, where, model)
        return sd, alphas, "kohya", skipped
    sd, alphas, skipped = peft_to_diffusers(tensors, meta, ours=ours, where=where, peft_config=peft_config)
    return sd, alphas, layout_of(keys, ours), skipped


def native_lora_state_dict(lora) -> dict[str, torch.Tensor]:
    """A :class:`~dual_adapter.lora.file.LoraFile` with core ComfyUI's native names.

    Keys: ``diffusion_model.{native module}.lora_down.weight`` ``[r, in]``, ``.lora_up.weight``
    ``[out, r]`` and ``.alpha`` (0-d float32, the module's alpha; core applies ``alpha / r`` as the pack).

    Raises:
        DualAdapterError: a module with no native equivalent.
    """
    out: dict[str, torch.Tensor] = {}
    ranks, alphas = lora.ranks, lora.alphas
    for mod in lora.modules:
        wan = is_wan_module(mod)  # diffusers' Wan names (CogVideoX: transformer_blocks.)
        nat = wan_diffusers_to_native_module(mod) if wan else diffusers_to_native_module(mod)
        if nat is None:
            raise DualAdapterError(f"LoRA module {mod!r} has no native ComfyUI {'Wan' if wan else 'CogVideoX'} equivalent")
        out[f"diffusion_model.{nat}.lora_down.weight"] = lora.tensor(mod, "A").contiguous()
        out[f"diffusion_model.{nat}.lora_up.weight"] = lora.tensor(mod, "B").contiguous()
        out[f"diffusion_model.{nat}.alpha"] = torch.tensor(float(alphas.get(mod, ranks[mod])), dtype=torch.float32)
    return out


def kohya_lora_state_dict(lora) -> dict[str, torch.Tensor]:
    """A Wan :class:`~dual_adapter.lora.LoraFile` with musubi-tuner / kohya names
    (``lora_unet_blocks_0_self_attn_q.lora_down.weight``, ``.lora_up.weight``, ``.alpha``), which musubi-tuner,
    ComfyUI and diffusers read. Raises DualAdapterError for a module with no Wan native name."""
    return wan_native_to_kohya(native_lora_state_dict(lora))
