"""T5 text encoding of prompts into ``[B, L, D_text]`` embeddings (:func:`encode_prompt`).
"""
from __future__ import annotations

import logging

import torch

from ...errors import DualAdapterError
from .bundle import CogVideoXBundle

log = logging.getLogger("dual_adapter.backbone")


# --------------------------------------------------------------------------------------------
# text


@torch.no_grad()
def encode_prompt(bundle: CogVideoXBundle, prompts: str | list[str], on_long: str = "truncate") -> torch.Tensor:
    """Encode prompts with T5, padded / truncated to the model's text length.

    Args:
        prompts: one prompt or a list.
        on_long: ``"truncate"`` (default: drop the tokens past the model's text length, with a
            logged warning naming what was dropped, as the official pipeline does) or ``"error"``.

    Returns:
        ``[B, L, D_text]`` in the transformer's dtype on the execution device (L = 226 on the real models).

    Raises:
        DualAdapterError: a prompt is not a string, or is too long with ``on_long="error"``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise DualAdapterError(f"prompt must be a string or a list of strings, got {type(prompts).__name__}")
    L = bundle.max_text_len
    tok = bundle.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=L, truncation=True, add_special_tokens=True,
              return_tensors="pt").input_ids
    full = tok(list(prompts), padding="longest", add_special_tokens=True, return_tensors="pt").input_ids
    if full.shape[-1] > L:
        for i, p in enumerate(prompts):
            n = int((full[i] != tok.pad_token_id).sum())
            if n > L:
                dropped = tok.decode(full[i, L - 1: n - 1])
                msg = f"prompt {i} ({p[:40]!r}...) has {n} tokens, more than the model's {L}"
                if on_long == "error":
                    raise DualAdapterError(msg + "; shorten it")
                log.warning("%s; truncated, dropping: %r", msg, dropped)
    with bundle.use("text_encoder") as te:
        dev = next(te.parameters()).device
        emb = te(ids.to(dev))[0]
    return emb.to(device=bundle.device, dtype=bundle.dtype)
