"""DualReal on core ComfyUI's native CogVideoX blocks (``comfy/ldm/cogvideo/model.py``), without ComfyUI imports.

Core's block loop has no per-block hook, so the ComfyUI bridge replaces ``diffusion_model.blocks.{i}``
through ``ModelPatcher.add_object_patch`` by a :class:`NativeDABlock`. The DA-block math is the pack's
one implementation, :class:`~dual_adapter.dualreal.patch.DABlock`: a :class:`NativeBlockView` shows a
native block with the diffusers block interface DABlock calls (``norm1``, ``attn1``, ``norm2``, ``ff``):

  * ``norm1`` / ``norm2``: the native ``CogVideoXLayerNormZero`` (same signature and outputs);
  * ``attn1(hidden_states=n_h, encoder_hidden_states=n_e, image_rotary_emb, transformer_options)``:
    the native joint attention (``q/k/v``, ``norm_q/norm_k``, RoPE on the visual tokens, ``attn_out``),
    returning the visual and text parts *before* the gates, as diffusers' attention processor does;
  * ``ff(n)``: ``ff_out(gelu_tanh(ff_proj(n)))``.

The attention kernel is injected (``attention(q, k, v, heads, transformer_options) -> [B, S, H*D]``):
the bridge passes core's ``optimized_attention`` so the patched block runs what the native block runs;
the default is PyTorch SDPA (used by the CPU tests).

:class:`NativeDABlock` keeps every sub-module of the wrapped block under its own name (``q``, ``norm1``...),
so core's weight patches (LoRAs: ``diffusion_model.blocks.{i}.q.weight``) and low-VRAM casting still find
them; the wrapped block itself and the adapters are held outside the module tree (the adapters are
loaded and counted by ComfyUI as an additional model; see ``nodes/_native_bridge.py``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import DualAdapterError
from .adapters import DualRealConfig
from .patch import DABlock, DualRealContext, check_dims

__all__ = ["NativeBlockView", "NativeDABlock", "native_dims", "check_native_compatible", "build_native_da_blocks",
           "sdpa_attention"]


def sdpa_attention(q, k, v, heads: int, transformer_options=None):
    """``q, k, v`` ``[B, S, H*D]`` -> ``[B, S, H*D]``: plain scaled-dot-product attention over ``heads``."""
    b, s, hd = q.shape
    d = hd // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, hd)


def _rope(x, cos_sin):
    """CogVideoX's interleaved-pair rotary embedding on ``x`` ``[B, heads, S, D]`` (``cos, sin`` ``[S, D]``)."""
    cos, sin = cos_sin
    cos = cos[None, None].to(x.device)
    sin = sin[None, None].to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rot = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rot.float() * sin).to(x.dtype)


class _NativeAttention(nn.Module):
    def __init__(self, block, attention: Callable):
        super().__init__()
        self.__dict__["_b"] = block  # not a child: the block's weights stay where core's patcher finds them
        self.__dict__["_attention"] = attention

    def forward(self, hidden_states, encoder_hidden_states, image_rotary_emb=None, transformer_options=None):
        blk = self.__dict__["_b"]
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        b, s, _ = x.shape
        n, d = blk.num_heads, blk.head_dim
        q = blk.norm_q(blk.q(x).view(b, s, n, d))
        k = blk.norm_k(blk.k(x).view(b, s, n, d))
        v = blk.v(x)
        if image_rotary_emb is not None:
            qi = _rope(q[:, text_len:].transpose(1, 2), image_rotary_emb).transpose(1, 2)
            ki = _rope(k[:, text_len:].transpose(1, 2), image_rotary_emb).transpose(1, 2)
            q = torch.cat([q[:, :text_len], qi], dim=1)
            k = torch.cat([k[:, :text_len], ki], dim=1)
        out = self.__dict__["_attention"](q.reshape(b, s, n * d), k.reshape(b, s, n * d), v, heads=n,
                                          transformer_options=transformer_options or {})
        out = blk.attn_out(out)
        enc, hid = out.split([text_len, s - text_len], dim=1)
        return hid, enc


class _NativeFF(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.__dict__["_b"] = block

    def forward(self, x):
        blk = self.__dict__["_b"]
        return blk.ff_out(F.gelu(blk.ff_proj(x), approximate="tanh"))


class NativeBlockView(nn.Module):
    """A native CogVideoX block seen through the diffusers block interface (``norm1, attn1, norm2, ff``)."""

    def __init__(self, block, attention: Callable | None = None):
        super().__init__()
        for need in ("norm1", "norm2", "q", "k", "v", "norm_q", "norm_k", "attn_out", "ff_proj", "ff_out"):
            if not hasattr(block, need):
                raise DualAdapterError(f"not a native CogVideoX block (no {need!r}); is this MODEL a CogVideoX?")
        self.__dict__["norm1"] = block.norm1
        self.__dict__["norm2"] = block.norm2
        self.__dict__["attn1"] = _NativeAttention(block, attention or sdpa_attention)
        self.__dict__["ff"] = _NativeFF(block)


def native_dims(blocks) -> tuple[int, int, int]:
    """(width D, block count, timestep-embedding width) of a native block list (from weight shapes)."""
    b0 = blocks[0]
    b0 = getattr(b0, "inner", b0)
    w = b0.norm1.linear.weight
    return int(w.shape[0]) // 6, len(blocks), int(w.shape[1])


def check_native_compatible(config: DualRealConfig, blocks) -> None:
    """Raise :class:`DualAdapterError` when adapters made for ``config`` do not fit these native blocks
    (names the adapters' and the model's width / block count / timestep-embedding width)."""
    check_dims(config, *native_dims(blocks), "this native CogVideoX MODEL")


class NativeDABlock(nn.Module):
    """Drop-in replacement of a native ``CogVideoXBlock`` running the DA-block (same call signature:
    ``(hidden_states [B, N, D], encoder_hidden_states [B, L, D], temb [B, T], image_rotary_emb,
    transformer_options) -> (hidden_states, encoder_hidden_states)``).

    ``inner`` is the block it wraps (the original, or an object patch already there: patches chain).
    Its sub-modules are registered here under their own names (shared, not copied), so
    ``blocks.{i}.q.weight`` still names the same tensor for core's weight patches. The adapters move
    to the hidden states' device / dtype if ComfyUI did not load them there.
    """

    def __init__(self, inner: nn.Module, adapters: nn.Module, index: int, group: int, ctx: DualRealContext,
                 controller: nn.Module | None = None, attention: Callable | None = None):
        super().__init__()
        for name, m in inner.named_children():
            self.add_module(name, m)
        base = inner
        while isinstance(base, NativeDABlock):  # a second DualReal set on the same block is refused
            raise DualAdapterError("this MODEL already has DualReal adapters applied; apply one DualReal set only")
        self.__dict__["inner"] = inner
        self.__dict__["all_adapters"] = adapters
        view = NativeBlockView(inner, attention)
        self.__dict__["da"] = DABlock(view, adapters, index, group, ctx, controller)
        self.__dict__["_dev"] = None
        self.num_heads = getattr(inner, "num_heads", None)
        self.head_dim = getattr(inner, "head_dim", None)

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, transformer_options=None):
        da = self.__dict__["da"]
        ad = da.adapters
        p = ad.id_attn_adapter.down_linear.weight
        dev = hidden_states.device
        if p.device != dev:
            ad.to(dev)
            if da.controller is not None:
                da.controller.to(dev)
        if self.__dict__["_dev"] != (p.device, p.dtype):
            da._cache.clear()  # cached fused weights live on the old device
            self.__dict__["_dev"] = (p.device, p.dtype)
        return da(hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                  attention_kwargs={"transformer_options": transformer_options})


def build_native_da_blocks(blocks, adapters_module, ctx: DualRealContext,
                           attention: Callable | None = None) -> list[NativeDABlock]:
    """One :class:`NativeDABlock` per native block (``blocks[i]``: the current object, possibly patched).

    ``adapters_module`` is a :class:`~dual_adapter.dualreal.adapters.DualRealAdapters`; block 0 gets the
    StageBlender controller, so it runs once per model call (core calls the blocks in order).

    Raises:
        DualAdapterError: adapters for another model, or DualReal already applied.
    """
    check_native_compatible(ctx.config, blocks)
    mod = adapters_module
    return [NativeDABlock(blocks[i], mod.transformer_blocks[i], i, mod.block_group[i], ctx,
                          mod.controller if i == 0 else None, attention) for i in range(len(blocks))]
