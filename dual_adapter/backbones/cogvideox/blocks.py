"""A CogVideoX transformer block with adapters (DualReal's DA-block, docs/dualreal.md).
"""
from __future__ import annotations

import torch


# --------------------------------------------------------------------------------------------
# a block with adapters (DualReal's DA-block, docs/dualreal.md)


def _joined(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a, b], 1)``, or without a copy the tensor ``a`` and ``b`` were split from (the
    attention processor splits one ``[B, L + N, D]`` output into text and visual parts)."""
    base = a._base
    if base is not None and b._base is base and a.dim() == 3 and b.dim() == 3 and base.is_contiguous():
        B, N, D = a.shape[0], a.shape[1] + b.shape[1], a.shape[2]
        if (base.numel() == B * N * D and b.shape[0] == B and b.shape[2] == D and a.stride() == b.stride() == (N * D, D, 1)
                and a.storage_offset() == base.storage_offset()
                and b.storage_offset() == base.storage_offset() + a.shape[1] * D):
            return base.view(B, N, D)
    return torch.cat([a, b], 1)


def adapted_block_forward(block, hooks, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                          temb: torch.Tensor, image_rotary_emb=None, attention_kwargs: dict | None = None):
    """``CogVideoXBlock.forward`` with adapter hooks (see :meth:`VideoBackbone.adapted_block_forward`): the
    adapters see the AdaLN-normalised ``[text; visual]`` tokens of each sub-layer in one pass and add to its
    output before the gates (text and visual streams with their own gates); the StageBlender pools the block
    input's text and visual tokens and reads ``temb``."""
    text_len = encoder_hidden_states.size(1)
    attention_kwargs = attention_kwargs or {}
    hooks.begin(hidden_states, encoder_hidden_states, temb)

    # attention sub-layer
    n_h, n_e, gate_msa, enc_gate_msa = block.norm1(hidden_states, encoder_hidden_states, temb)
    attn_h, attn_e = block.attn1(hidden_states=n_h, encoder_hidden_states=n_e, image_rotary_emb=image_rotary_emb,
                                 **attention_kwargs)
    p = hooks.params("attn", attn_h.dtype)
    if p is not None:  # one pass over the [text; visual] tokens
        attn = hooks.apply(_joined(attn_e, attn_h), torch.cat([n_e, n_h], dim=1), p)
        attn_e, attn_h = attn[:, :text_len], attn[:, text_len:]
    # the gated residual adds of CogVideoXBlock (h + g * x) as one fused op each (addcmul): the same sum,
    # one kernel launch instead of two, which offsets part of the adapters' own launches
    hidden_states = torch.addcmul(hidden_states, gate_msa, attn_h)
    encoder_hidden_states = torch.addcmul(encoder_hidden_states, enc_gate_msa, attn_e)

    # feed-forward sub-layer
    n_h, n_e, gate_ff, enc_gate_ff = block.norm2(hidden_states, encoder_hidden_states, temb)
    n = torch.cat([n_e, n_h], dim=1)
    ff = block.ff(n)
    p = hooks.params("ff", ff.dtype)
    ff = hooks.apply(ff, n, p)
    hidden_states = torch.addcmul(hidden_states, gate_ff, ff[:, text_len:])
    encoder_hidden_states = torch.addcmul(encoder_hidden_states, enc_gate_ff, ff[:, :text_len])
    return hidden_states, encoder_hidden_states
