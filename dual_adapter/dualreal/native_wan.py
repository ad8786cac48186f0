"""DualReal on core ComfyUI's native Wan blocks (``comfy/ldm/wan/model.py``), without ComfyUI imports.

Core's Wan block loop offers a block replace hook: ``transformer_options["patches_replace"]["dit"][("double_block",
i)]`` is called as ``replace({"img": x, "txt": context, "vec": e0, "pe": freqs, "transformer_options": ...},
{"original_block": ...}) -> {"img": x}``. :func:`build_native_wan_replacements` makes one such callable per block
that runs the pack's one Wan DA-block computation (:func:`dual_adapter.backbones.wan.adapted_block_forward`, the
same function the pack's own Wan model runs) on a :class:`NativeWanBlockView`: the native block's modules seen
under diffusers' ``WanTransformerBlock`` names:

  * ``scale_shift_table`` = the native ``modulation`` ``[1, 6, D]`` (cast to the call's device);
  * ``norm1`` = ``norm1``; ``norm2`` (diffusers' cross-attention norm) = native ``norm3``; ``norm3`` (diffusers'
    feed-forward norm) = native ``norm2``;
  * ``attn1(n, None, None, rotary_emb)`` = ``self_attn(n, freqs, transformer_options)``;
    ``attn2(n, text, None, None)`` = ``cross_attn(n, context, context_img_len=None, transformer_options)``;
  * ``ffn`` = ``ffn``.

The view holds the native modules themselves, so core's weight patches (LoRAs on
``diffusion_model.blocks.{i}.self_attn.q``...) and low-VRAM casting apply as to the unpatched block, and the
attention kernel is core's. The StageBlender reads Wan's sinusoidal timestep features, the input of the native
``time_embedding``: :class:`TimeFeatures` wraps that module (installed as an object patch by the bridge) and records
its input for the call. Image-to-video models (image tokens in the cross-attention) are refused.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import DualAdapterError
from .adapters import DualRealConfig
from .patch import DABlock, DualRealContext, check_dims

__all__ = ["NativeWanBlockView", "TimeFeatures", "native_wan_dims", "check_native_wan_compatible",
           "build_native_wan_replacements"]

_NEED = ("norm1", "norm2", "norm3", "self_attn", "cross_attn", "ffn", "modulation")


class _SelfAttention:
    def __init__(self, view):
        self.view = view

    def __call__(self, n, _enc=None, _mask=None, rotary_emb=None):
        return self.view.native.self_attn(n, rotary_emb, transformer_options=self.view.options)


class _CrossAttention:
    def __init__(self, view):
        self.view = view

    def __call__(self, n, text, _mask=None, _rotary=None):
        return self.view.native.cross_attn(n, text, context_img_len=None, transformer_options=self.view.options)


class NativeWanBlockView:
    """A native Wan ``WanAttentionBlock`` seen with diffusers' ``WanTransformerBlock`` names (module docstring).

    Raises:
        DualAdapterError: ``block`` is not a native Wan text-to-video block.
    """

    def __init__(self, block: nn.Module):
        for need in _NEED:
            if not hasattr(block, need):
                raise DualAdapterError(f"not a native Wan block (no {need!r}); is this MODEL a Wan model?")
        if hasattr(block.cross_attn, "k_img"):
            raise DualAdapterError("this native Wan MODEL is an image-to-video model (image tokens in the "
                                   "cross-attention); DualReal runs on Wan text-to-video models")
        self.native = block
        self.options: dict = {}
        self.norm1 = block.norm1
        self.norm2 = block.norm3  # diffusers' norm2 is the cross-attention norm: native norm3
        self.norm3 = block.norm2  # diffusers' norm3 is the feed-forward norm: native norm2
        self.ffn = block.ffn
        self.attn1 = _SelfAttention(self)
        self.attn2 = _CrossAttention(self)
        self._device = None

    @property
    def scale_shift_table(self) -> torch.Tensor:
        return self.native.modulation.to(self._device) if self._device is not None else self.native.modulation


class TimeFeatures(nn.Module):
    """Stand-in of the native ``time_embedding`` that records its input, Wan's sinusoidal timestep features
    ``[B, freq_dim]``, into ``state["time"]`` and runs the original. Its sub-modules are the original's under
    their own names (``time_embedding.0.weight`` still names the same tensor for core's weight patches)."""

    def __init__(self, inner: nn.Module, state: dict):
        super().__init__()
        for name, m in inner.named_children():
            self.add_module(name, m)
        self.__dict__["inner"] = inner
        self.__dict__["state"] = state

    def forward(self, x):
        self.__dict__["state"]["time"] = x
        return self.__dict__["inner"](x)


def native_wan_dims(diffusion_model) -> tuple[int, int, int]:
    """(width D, block count, ``freq_dim``) of a native Wan model (from its weights and config)."""
    blocks = diffusion_model.blocks
    return int(blocks[0].modulation.shape[-1]), len(blocks), int(diffusion_model.freq_dim)


def check_native_wan_compatible(config: DualRealConfig, diffusion_model) -> None:
    """Raise :class:`DualAdapterError` when adapters made for ``config`` do not fit this native Wan model (names the
    adapters' and the model's width / block count / timestep-feature width)."""
    check_dims(config, *native_wan_dims(diffusion_model), "this native Wan MODEL")


def build_native_wan_replacements(diffusion_model, adapters_module, ctx: DualRealContext) -> list:
    """One block replace callable per native Wan block (for ``patches_replace["dit"][("double_block", i)]``).

    ``adapters_module`` is a :class:`~dual_adapter.dualreal.adapters.DualRealAdapters`; block 0 runs the StageBlender
    controller. ``ctx.state["time"]`` must receive the timestep features on each model call (:class:`TimeFeatures`).
    The adapters move to the hidden states' device / dtype if ComfyUI did not load them there.

    Raises:
        DualAdapterError: adapters for another model, or not a native Wan text-to-video model.
    """
    from ..backbones._wan_blocks import adapted_block_forward

    check_native_wan_compatible(ctx.config, diffusion_model)
    mod = adapters_module
    out = []
    for i, block in enumerate(diffusion_model.blocks):
        view = NativeWanBlockView(block)

        def runner(_da, hooks, state, x, context, e, freqs, _view=view):
            return adapted_block_forward(_view, hooks, state, x, context, e, freqs)

        da = DABlock(nn.Module(), mod.transformer_blocks[i], i, mod.block_group[i], ctx,
                     mod.controller if i == 0 else None, runner=runner)
        out.append(_Replace(da, view))
    return out


class _Replace:
    """``replace(args, extra) -> {"img": x}`` running one DA-block on the native block (see module docstring)."""

    def __init__(self, da: DABlock, view: NativeWanBlockView):
        self.da, self.view = da, view
        self._dev = None

    def __call__(self, args: dict, extra: dict) -> dict:
        x = args["img"]
        da, ad = self.da, self.da.adapters
        p = ad.id_attn_adapter.down_linear.weight
        if p.device != x.device:
            ad.to(x.device)
            if da.controller is not None:
                da.controller.to(x.device)
        if self._dev != (p.device, p.dtype):
            da._cache.clear()  # cached fused weights live on the old device
            self._dev = (p.device, p.dtype)
        self.view.options = args.get("transformer_options") or {}
        self.view._device = x.device
        return {"img": da(x, args["txt"], args["vec"], args["pe"])}
