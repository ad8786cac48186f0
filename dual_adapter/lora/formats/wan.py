"""Wan LoRA names: ComfyUI native / original Wan and musubi-tuner / kohya <-> diffusers. Pure dict -> dict.

docs/wan.md. Native / original names (core ComfyUI's Wan LoRAs, DiffSynth-Studio):
``diffusion_model.blocks.{i}.self_attn.q.lora_down.weight`` / ``lora_up`` (or ``lora_A`` / ``lora_B``) / ``.alpha``;
``cross_attn.{q,k,v,o,k_img,v_img}``, ``ffn.0``, ``ffn.2`` and the top layers likewise (:data:`WAN_NATIVE_TO_DIFFUSERS`,
diffusers' own conversion table). musubi-tuner / kohya: ``lora_unet_blocks_{i}_self_attn_q.lora_down.weight`` (the
native names with ``_`` for ``.``, as ComfyUI's key map reads them).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .kohya import rename_kohya
from .native import NATIVE_PARAM, native_pairs_to_diffusers, refuse_diffs

__all__ = ["WAN_NATIVE_TO_DIFFUSERS", "wan_native_to_diffusers_module", "wan_diffusers_to_native_module",
           "wan_native_to_diffusers", "wan_kohya_to_native", "wan_native_to_kohya",
           "is_wan_module", "WAN_NATIVE_HINT", "WAN_KOHYA_HINT"]

#: Wan's original / ComfyUI native module names -> diffusers' (the Linear layers of diffusers' Wan conversion table)
WAN_NATIVE_TO_DIFFUSERS: dict[str, str] = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_WAN_TOP = {"text_embedding.0": "condition_embedder.text_embedder.linear_1",
            "text_embedding.2": "condition_embedder.text_embedder.linear_2",
            "time_embedding.0": "condition_embedder.time_embedder.linear_1",
            "time_embedding.2": "condition_embedder.time_embedder.linear_2",
            "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
            "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
            "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2"}
_WAN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
WAN_NATIVE_HINT = re.compile(r"^(?:model\.)?diffusion_model\.blocks\.\d+\.(?:self_attn|cross_attn|ffn)\.")
WAN_KOHYA_HINT = re.compile(r"^lora_unet_blocks_\d+_(?:self_attn|cross_attn|ffn)_")


def _wan_map(name: str, block: dict, top: dict) -> str | None:
    m = _WAN_BLOCK.match(name)
    if m:
        sub = block.get(m.group(2))
        return f"blocks.{m.group(1)}.{sub}" if sub else None
    return top.get(name)


def wan_native_to_diffusers_module(name: str) -> str | None:
    """``blocks.3.self_attn.q`` -> ``blocks.3.attn1.to_q``; ``head.head`` -> ``proj_out`` (None if unknown)."""
    return _wan_map(name, WAN_NATIVE_TO_DIFFUSERS, _WAN_TOP)


def wan_diffusers_to_native_module(name: str) -> str | None:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q`` (the inverse of :func:`wan_native_to_diffusers_module`)."""
    return _wan_map(name, {v: k for k, v in WAN_NATIVE_TO_DIFFUSERS.items()}, {v: k for k, v in _WAN_TOP.items()})


def is_wan_module(name: str) -> bool:
    """Whether a diffusers module name is a Wan transformer's (``blocks.{i}...`` or a Wan top layer)."""
    return name.startswith("blocks.") or name in _WAN_TOP.values()


def wan_kohya_to_native(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """musubi-tuner / kohya Wan keys (``lora_unet_blocks_0_self_attn_q.lora_down.weight``) -> native dotted keys
    (``diffusion_model.blocks.0.self_attn.q.lora_down.weight``); other keys pass through. Pure dict -> dict.

    Raises:
        DualAdapterError: a ``lora_unet_`` layer that names no Wan Linear layer.
    """
    names = {n.replace(".", "_"): n for n in WAN_NATIVE_TO_DIFFUSERS}
    top = {n.replace(".", "_"): n for n in _WAN_TOP}

    def rename(rest: str, elem: str) -> str | None:
        m = re.match(r"^blocks_(\d+)_(.+)$", rest)
        nat = (f"blocks.{m.group(1)}.{names[m.group(2)]}" if m.group(2) in names else None) if m else top.get(rest)
        return f"diffusion_model.{nat}.{elem}" if nat else None

    return rename_kohya(tensors, rename, "Wan LoRA (musubi-tuner / kohya names) has keys that name no Wan layer")


def wan_native_to_kohya(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native dotted Wan keys -> musubi-tuner / kohya keys (the inverse of :func:`wan_kohya_to_native`)."""
    out = {}
    for k, v in tensors.items():
        m = NATIVE_PARAM.match(k)
        out[f"lora_unet_{m.group('mod').replace('.', '_')}.{m.group('kind')}" if m else k] = v
    return out


def wan_native_to_diffusers(tensors: Mapping[str, torch.Tensor], where: str = "LoRA") -> dict[str, torch.Tensor]:
    """Native dotted Wan keys -> diffusers keys the pack's converter reads: ``transformer.blocks.0.attn1.to_q.
    lora_A.weight`` / ``lora_B.weight`` / ``.alpha`` (kept per module, applied as ``alpha / rank``). Pure dict -> dict.

    Raises:
        DualAdapterError: ``.diff`` / ``.diff_b`` keys (full differences, not low-rank), or a key that names no
            Wan Linear layer (both named in the message).
    """
    refuse_diffs(tensors, where, "; the pack's LoRA layers carry only low-rank pairs. Core ComfyUI's LoRA loader "
                                 "applies them to a native MODEL")
    return native_pairs_to_diffusers(tensors, wan_native_to_diffusers_module,
                                      f"{where} (Wan native names) has keys that are not LoRA pairs of a Wan Linear "
                                      f"layer: ")
