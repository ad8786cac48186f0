"""ComfyUI native LoRA names (what core ``LoraLoaderModelOnly`` reads for native CogVideoX / Wan models). Pure
dict -> dict, no I/O.

Native keys: ``diffusion_model.{native module}.lora_down.weight`` ``[r, in]`` / ``.lora_up.weight`` ``[out, r]``
(also ``lora_A`` / ``lora_B``) and a 0-d ``.alpha``; core applies ``lora_up @ lora_down * alpha / rank``, as the pack.
``.diff`` / ``.diff_b`` (full weight / bias differences, written by core's trainer) are not low-rank and are refused.
The module names are the backbone's native ones: :mod:`.cogvideox` and :mod:`.wan` hold the tables.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from ...errors import DualAdapterError

NATIVE_PARAM = re.compile(r"^(?:model\.)?diffusion_model\.(?P<mod>.+?)\.(?P<kind>lora_up\.weight|lora_down\.weight|"
                          r"lora_A\.weight|lora_B\.weight|alpha|diff|diff_b|lora_mid\.weight)$")


def refuse_diffs(tensors: Mapping[str, torch.Tensor], where: str, tail: str) -> None:
    """Raise :class:`DualAdapterError` (``where`` ... ``tail``) when ``tensors`` hold ``.diff`` / ``.diff_b`` keys."""
    diffs = [k for k in tensors if k.endswith((".diff", ".diff_b"))]
    if diffs:
        raise DualAdapterError(f"{where} holds full weight differences ({len(diffs)} '.diff' / '.diff_b' keys, "
                               f"e.g. {diffs[:3]}){tail}")


def native_pairs_to_diffusers(tensors: Mapping[str, torch.Tensor], to_module: Callable[[str], str | None],
                              message: str) -> dict[str, torch.Tensor]:
    """Native dotted LoRA keys -> ``transformer.{diffusers module}.lora_A/lora_B.weight`` / ``.alpha`` with
    ``to_module`` (native module -> diffusers module or None); unknown keys raise ``message`` + the keys."""
    out, bad = {}, []
    for k, v in tensors.items():
        m = NATIVE_PARAM.match(k)
        dmod = to_module(m.group("mod")) if m else None
        if dmod is None or m.group("kind") == "lora_mid.weight":
            bad.append(k)
            continue
        kind = {"lora_up.weight": "lora_B.weight", "lora_down.weight": "lora_A.weight"}.get(m.group("kind"),
                                                                                        m.group("kind"))
        out[f"transformer.{dmod}.{kind}"] = v
    if bad:
        raise DualAdapterError(message + f"{bad[:8]}" + (f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""))
    return out
