"""CogVideoX LoRA names: kohya and ComfyUI native <-> diffusers. Pure dict -> dict, no I/O.

* kohya: ``lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight`` -> ``transformer_blocks.0.attn1.to_q``
  (the Linear layers of diffusers' ``CogVideoXTransformer3DModel``: 2B, 5B, 1.5-5B);
* ComfyUI native: ``diffusion_model.blocks.{i}.q.lora_up.weight`` (also ``lora_unet_blocks_{i}_q.*``) ->
  diffusers' names, with :mod:`dual_adapter.native`'s module table.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ...native import diffusers_to_native_module, native_to_diffusers_module
from .kohya import block_resolver, rename_kohya, underscore_table
from .native import native_pairs_to_diffusers, refuse_diffs

__all__ = ["BLOCK_LINEARS", "TOP_LINEARS", "NATIVE_BLOCK_LINEARS", "kohya_module", "native_to_diffusers",
           "diffusers_to_native_module", "is_native", "is_native_kohya"]

#: Linear layers of a diffusers CogVideoX block (relative to ``transformer_blocks.{i}``), to turn kohya's underscore
#: names back into module paths
BLOCK_LINEARS = ("norm1.linear", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "norm2.linear",
                 "ff.net.0.proj", "ff.net.2")
TOP_LINEARS = ("patch_embed.proj", "patch_embed.text_proj", "time_embedding.linear_1", "time_embedding.linear_2",
               "ofs_embedding.linear_1", "ofs_embedding.linear_2", "norm_out.linear", "proj_out")
#: Linear layers of a native CogVideoX block (module names relative to ``blocks.{i}``).
NATIVE_BLOCK_LINEARS = ("q", "k", "v", "attn_out", "ff_proj", "ff_out", "norm1.linear", "norm2.linear")
_NATIVE_TOP_LINEARS = ("patch_embed.proj", "patch_embed.text_proj", "time_embedding_linear_1",
                       "time_embedding_linear_2", "ofs_embedding_linear_1", "ofs_embedding_linear_2",
                       "norm_out.linear", "proj_out")

#: ``transformer_blocks_0_attn1_to_q`` -> ``transformer_blocks.0.attn1.to_q`` (None if unknown)
resolve_kohya = block_resolver(underscore_table(BLOCK_LINEARS), underscore_table(TOP_LINEARS), "transformer_blocks")
_resolve_native_kohya = block_resolver(underscore_table(NATIVE_BLOCK_LINEARS), underscore_table(_NATIVE_TOP_LINEARS),
                                       "blocks")


def kohya_module(layer: str) -> str | None:
    """``lora_unet_transformer_blocks_0_attn1_to_q`` -> ``transformer_blocks.0.attn1.to_q`` (None if unknown)."""
    return resolve_kohya(layer[len("lora_unet_"):])


def is_native_kohya(keys) -> bool:
    """Whether ``keys`` use native kohya names (``lora_unet_blocks_{i}_q...``)."""
    return any(re.match(r"^lora_unet_blocks_\d+_", k) for k in keys)


def is_native(keys) -> bool:
    """Whether ``keys`` use native dotted names (``diffusion_model.blocks.{i}.q.lora_up.weight``)."""
    return any(re.match(r"^(model\.)?diffusion_model\.blocks\.\d+\.", k) for k in keys)


def native_kohya_to_kohya(tensors: Mapping[str, torch.Tensor], where: str = "LoRA") -> dict[str, torch.Tensor]:
    """``lora_unet_blocks_{i}_q.*`` -> ``lora_unet_transformer_blocks_{i}_attn1_to_q.*`` (other keys pass).

    Raises:
        DualAdapterError: a layer that names no CogVideoX layer.
    """
    def rename(rest: str, elem: str) -> str | None:
        nat = _resolve_native_kohya(rest)
        dmod = native_to_diffusers_module(nat) if nat else None
        return f"lora_unet_{dmod.replace('.', '_')}.{elem}" if dmod else None

    return rename_kohya(tensors, rename, f"{where} (native kohya names) has keys that name no CogVideoX layer")


def native_to_diffusers(tensors: Mapping[str, torch.Tensor], where: str = "LoRA") -> dict[str, torch.Tensor]:
    """Native dotted CogVideoX keys -> ``transformer.{module}.lora_A/B.weight`` / ``.alpha``.

    Raises:
        DualAdapterError: ``.diff`` / ``.diff_b`` keys (names them and says what loads them), or a key that names no
            CogVideoX layer.
    """
    refuse_diffs(tensors, where, ", written by core ComfyUI's trainer; the pack's LoRA layers carry only low-rank "
                                 "pairs. Load it with core 'LoraLoaderModelOnly' on a native MODEL (or the pack's "
                                 "'Apply LoRA to MODEL'), which applies them")
    return native_pairs_to_diffusers(tensors, native_to_diffusers_module, f"{where} (ComfyUI native names) has keys "
                                     f"that are not LoRA pairs of a CogVideoX layer: ")
