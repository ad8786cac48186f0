"""diffusers / peft LoRA keys (and their alphas) <-> the pack's layout. Pure dict -> dict, no I/O.

Read: ``{prefix}.{m}.lora_A.weight`` / ``lora_B.weight`` (``prefix`` = ``transformer`` or ``unet``, diffusers),
``base_model.model.{m}.lora_A[.<adapter>].weight`` (peft), the older ``{m}.lora.down/up.weight`` and
``{m}.lora_linear_layer.down/up.weight``, ``lora_down/lora_up`` and ``.alpha`` tensors. Alpha, in this order: the
file's ``.alpha`` tensors, the pack's own metadata, diffusers' ``lora_adapter_metadata``, a peft
``adapter_config.json`` (read by the caller), else alpha = rank.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Mapping

import torch

from ...errors import DualAdapterError

#: the prefixes of the diffusers layout's keys, one per denoiser component
COMPONENT_PREFIXES = ("transformer.", "unet.")
_PEFT_SUFFIX = re.compile(r"^(?P<mod>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
                          r"lora_linear_layer\.down|lora_linear_layer\.up)(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")
_PREFIXES = ("base_model.model.", *COMPONENT_PREFIXES, "model.diffusion_model.", "diffusion_model.")
_DOWN = ("lora_A", "lora_down", "lora.down", "lora_linear_layer.down")


def alpha_number(v, where: str, name: str) -> float:
    """A LoRA alpha read from a file's metadata as a finite float, or :class:`DualAdapterError` naming it."""
    try:
        out = float(v)
    except (TypeError, ValueError):
        out = float("nan")
    if isinstance(v, bool) or not math.isfinite(out):
        raise DualAdapterError(f"{where}: its {name} is {v!r}; it must be a finite number (the LoRA scale alpha)")
    return out


def pattern_match(pattern: str, module: str) -> bool:
    """peft's rule: ``pattern`` matches ``module`` or a dotted suffix of it (regex; plain text if invalid)."""
    try:
        return re.match(rf"(.*\.)?({pattern})$", module) is not None
    except re.error:
        return module == pattern or module.endswith("." + pattern)


def layout_of(keys, ours: bool) -> str:
    """``"dual_adapter"`` (``ours``), ``"peft"`` or ``"diffusers"`` for keys that are not kohya's."""
    if ours:
        return "dual_adapter"
    if any(k.startswith("base_model.model.") for k in keys) or not any(k.startswith(COMPONENT_PREFIXES) for k in keys):
        return "peft"
    return "diffusers"


def peft_to_diffusers(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, ours: bool, where: str = "LoRA",
                      peft_config: Callable[[], dict] | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    """diffusers / peft keys -> ``(state_dict, alphas, skipped)``: ``transformer.{m}.lora_A/B.weight``, each module's
    alpha, and the text-encoder keys left out.

    Args:
        ours: the metadata is the pack's own (its ``alpha`` applies when diffusers' metadata is absent).
        peft_config: returns a peft ``adapter_config.json``'s content (asked only for a peft file without
            diffusers' metadata), or None.

    Raises:
        DualAdapterError: keys that are not LoRA weights, several adapters in one file, a non-numeric alpha.
    """
    fmt = layout_of(list(tensors), ours)
    skipped: list[str] = []
    unknown: list[str] = []
    sd: dict[str, torch.Tensor] = {}
    file_alpha: dict[str, float] = {}
    for k, v in tensors.items():
        if k.startswith("text_encoder") or k.startswith("base_model.model.text_encoder"):
            skipped.append(k)
            continue
        kk = k
        for p in _PREFIXES:
            if kk.startswith(p):
                kk = kk[len(p):]
        if kk.endswith(".alpha"):
            file_alpha[kk[:-len(".alpha")]] = float(v.float().item())
            continue
        m = _PEFT_SUFFIX.match(kk)
        if not m:
            unknown.append(k)
            continue
        half = "A" if m.group("kind") in _DOWN else "B"
        name = f"transformer.{m.group('mod')}.lora_{half}.weight"
        if name in sd:
            raise DualAdapterError(f"{where} holds several adapters or duplicate keys for {m.group('mod')} "
                                   f"({k!r}); save one adapter per file")
        sd[name] = v
    if unknown:
        raise DualAdapterError(f"{where} has keys that are not LoRA weights of a video model's denoiser: "
                               f"{unknown[:8]}" + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    ranks = {k[len("transformer."):-len(".lora_A.weight")]: int(v.shape[0]) for k, v in sd.items()
             if k.endswith(".lora_A.weight") and v.ndim == 2}
    alpha_all: float | None = None
    pattern: dict[str, float] = {}
    dm = meta.get("lora_adapter_metadata")
    if ours and not isinstance(dm, (str, dict)):
        alpha_all = alpha_number(meta.get("alpha") or 0, where, "alpha") or None
    else:
        if isinstance(dm, str):
            try:
                dm = json.loads(dm)
            except ValueError:
                dm = None
        cfg = {}
        if isinstance(dm, dict):
            cfg = {k.split(".", 1)[1] if k.startswith(COMPONENT_PREFIXES) else k: v for k, v in dm.items()}
        elif fmt == "peft" and peft_config is not None:
            cfg = peft_config()
        # peft semantics: alpha_pattern entry if one matches the module, else lora_alpha
        if cfg.get("lora_alpha") is not None:
            alpha_all = alpha_number(cfg["lora_alpha"], where, "lora_alpha")
            pattern = {str(k): alpha_number(v, where, f"alpha_pattern[{k!r}]")
                       for k, v in (cfg.get("alpha_pattern") or {}).items()}
    alphas: dict[str, float] = {}
    for mod, r in ranks.items():
        if mod in file_alpha:
            alphas[mod] = file_alpha[mod]
            continue
        hit = next((v for p, v in pattern.items() if pattern_match(p, mod)), None)
        alphas[mod] = hit if hit is not None else (alpha_all if alpha_all is not None else float(r))
    return sd, alphas, skipped


def diffusers_to_peft(lora) -> tuple[dict[str, torch.Tensor], dict]:
    """A :class:`~dual_adapter.lora.file.LoraFile` in peft's layout: ``(tensors, adapter_config)`` with keys
    ``base_model.model.{module}.lora_A.weight`` / ``lora_B.weight`` and the ``adapter_config.json`` content that
    gives each module's rank and alpha (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, exact names)."""
    sd = {}
    for mod in lora.modules:
        sd[f"base_model.model.{mod}.lora_A.weight"] = lora.tensor(mod, "A").contiguous()
        sd[f"base_model.model.{mod}.lora_B.weight"] = lora.tensor(mod, "B").contiguous()
    ranks, alphas = lora.ranks, lora.alphas
    cfg = {"peft_type": "LORA", "r": int(lora.rank), "lora_alpha": float(lora.alpha),
           "target_modules": sorted(ranks),
           "rank_pattern": {re.escape(m): r for m, r in ranks.items() if r != lora.rank},
           "alpha_pattern": {re.escape(m): a for m, a in alphas.items() if a != lora.alpha}}
    return sd, cfg
