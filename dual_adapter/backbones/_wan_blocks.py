"""DualReal's DA-block on a Wan block (docs/wan.md): ``WanTransformerBlock.forward`` with the adapter hooks, and the
forward hook that captures the StageBlender's timestep features. Used by :class:`~dual_adapter.backbones.wan.WanBackbone`
and by the native ComfyUI Wan patch (:mod:`dual_adapter.dualreal.native_wan`)."""
from __future__ import annotations

import torch

from ..errors import DualAdapterError


def _capture_time(module, args, output) -> None:
    module.__dict__["_adapter_state"]["time"] = output


def adapted_block_forward(block, hooks, state: dict, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                          temb: torch.Tensor, rotary_emb) -> torch.Tensor:
    """``WanTransformerBlock.forward`` with adapter hooks (see :meth:`VideoBackbone.adapted_block_forward`).

    The adapters see the video tokens only (Wan's text enters through the cross-attention ``attn2``): the
    attention pair reads the modulated ``norm1`` output and adds to the self-attention output before its gate
    ``gate_msa``; the feed-forward pair reads the modulated ``norm3`` output and adds to the FFN output before
    ``c_gate_msa``; the cross-attention sub-layer (ungated) is left as it is. The StageBlender pools the block
    input's video tokens and the projected text tokens, and reads the sinusoidal timestep features (the last
    token's, where Wan 2.2 TI2V gives every token its own timestep).
    """
    if temb.ndim == 4:  # Wan 2.2 TI2V: batch, tokens, 6, D
        mods = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (m.squeeze(2) for m in mods)
    else:
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            block.scale_shift_table + temb.float()).chunk(6, dim=1)
    time = state.get("time")
    if time is None:
        raise DualAdapterError("a Wan block with adapters ran outside its model's forward (no timestep features)")
    B = hidden_states.shape[0]
    if time.shape[0] != B:
        time = time.reshape(B, -1, time.shape[-1])[:, -1]
    hooks.begin(hidden_states, encoder_hidden_states, time)

    # 1. self-attention
    n = (block.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
    attn = block.attn1(n, None, None, rotary_emb)
    p = hooks.params("attn", attn.dtype)
    if p is not None:
        attn = hooks.apply(attn, n, p)
    hidden_states = (hidden_states.float() + attn * gate_msa).type_as(hidden_states)

    # 2. cross-attention (the text)
    n = block.norm2(hidden_states.float()).type_as(hidden_states)
    hidden_states = hidden_states + block.attn2(n, encoder_hidden_states, None, None)

    # 3. feed-forward
    n = (block.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(hidden_states)
    ff = block.ffn(n)
    p = hooks.params("ff", ff.dtype)
    if p is not None:
        ff = hooks.apply(ff, n, p)
    return (hidden_states.float() + ff.float() * c_gate_msa).type_as(hidden_states)
