"""kohya / musubi-tuner LoRA names <-> diffusers module names. Pure dict -> dict, no I/O.

kohya writes one layer per ``lora_unet_{module with '_' for '.'}`` with ``.lora_down.weight`` ``[r, in]``,
``.lora_up.weight`` ``[out, r]`` and an optional 0-d ``.alpha``. The underscores cannot be turned back into dots
without knowing the model's layer names: :func:`kohya_to_diffusers` takes them (a table of module names, e.g. the
Linear layers of the model the LoRA is for, or a backbone's known layer list).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import torch

from ...errors import DualAdapterError

#: the element names of one kohya layer
KOHYA_ELEMENTS = ("lora_down.weight", "lora_up.weight", "alpha")


def underscore_table(modules: Iterable[str]) -> dict[str, str]:
    """``{"transformer_blocks_0_attn1_to_q": "transformer_blocks.0.attn1.to_q", ...}`` for ``modules``."""
    return {n.replace(".", "_"): n for n in modules}


def double_underscore_to_kohya(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VideoX-Fun's ``lora_unet__transformer_blocks_...`` (double underscore) -> the single-underscore names."""
    return {("lora_unet_" + k[len("lora_unet__"):] if k.startswith("lora_unet__") else k): v for k, v in tensors.items()}


def rename_kohya(tensors: Mapping[str, torch.Tensor], rename: Callable[[str, str], str | None],
                 message: str) -> dict[str, torch.Tensor]:
    """Rename every ``lora_unet_{rest}.{elem}`` key to ``rename(rest, elem)`` (other keys pass); a None name raises
    ``message`` with the keys."""
    out, bad = {}, []
    for k, v in tensors.items():
        layer, _, elem = k.partition(".")
        if not layer.startswith("lora_unet_"):
            out[k] = v
            continue
        new = rename(layer[len("lora_unet_"):], elem)
        if new is None:
            bad.append(k)
            continue
        out[new] = v
    if bad:
        raise DualAdapterError(f"{message}: {bad[:8]}")
    return out


def kohya_to_diffusers(tensors: Mapping[str, torch.Tensor], resolve: Callable[[str], str | None], where: str = "LoRA",
                       model: str = "this model") -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    """kohya keys -> ``(state_dict, alphas, skipped)``.

    ``state_dict`` holds ``transformer.{module}.lora_A.weight`` / ``lora_B.weight`` (conv-shaped weights flattened
    to 2-D), ``alphas`` the module's alpha (its ``.alpha`` tensor, else its rank: scale 1), ``skipped`` the
    text-encoder keys (``lora_te*``). ``resolve(rest)`` turns ``rest`` of ``lora_unet_{rest}`` into a module name
    (None: unknown).

    Raises:
        DualAdapterError: a key that is not a kohya LoRA element, or a layer ``resolve`` does not know (names them).
    """
    layers: dict[str, dict[str, torch.Tensor]] = {}
    skipped: list[str] = []
    unknown: list[str] = []
    for k, v in tensors.items():
        if k.startswith("lora_te"):
            skipped.append(k)
            continue
        layer, _, elem = k.partition(".")
        if not layer.startswith("lora_unet_") or elem not in KOHYA_ELEMENTS:
            unknown.append(k)
            continue
        layers.setdefault(layer, {})[elem] = v
    sd: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for layer, d in layers.items():
        mod = resolve(layer[len("lora_unet_"):])
        if mod is None:
            unknown.append(layer)
            continue
        if "lora_down.weight" in d:
            sd[f"transformer.{mod}.lora_A.weight"] = d["lora_down.weight"].reshape(d["lora_down.weight"].shape[0], -1)
        if "lora_up.weight" in d:
            sd[f"transformer.{mod}.lora_B.weight"] = d["lora_up.weight"].reshape(d["lora_up.weight"].shape[0], -1)
        if "alpha" in d:
            alphas[mod] = float(d["alpha"].float().item())
    if unknown:
        raise DualAdapterError(f"{where} (kohya format) has keys that name no {model} layer: "
                               f"{unknown[:8]}" + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    for k, a in sd.items():
        mod = k[len("transformer."):-len(".lora_A.weight")]
        if k.endswith(".lora_A.weight") and mod not in alphas:
            alphas[mod] = float(a.shape[0])
    return sd, alphas, skipped


def block_resolver(block: Mapping[str, str], top: Mapping[str, str], block_prefix: str) -> Callable[[str], str | None]:
    """A ``resolve`` for :func:`kohya_to_diffusers` from tables of underscored names: ``{block_prefix}_{i}_{sub}`` ->
    ``{block_prefix}.{i}.{block[sub]}``, other names -> ``top[name]``."""
    pat = re.compile(rf"^{re.escape(block_prefix)}_(\d+)_(.+)$")

    def resolve(rest: str) -> str | None:
        m = pat.match(rest)
        if m:
            sub = block.get(m.group(2))
            return f"{block_prefix}.{m.group(1)}.{sub}" if sub else None
        return top.get(rest)

    return resolve


def diffusers_to_kohya(lora) -> dict[str, torch.Tensor]:
    """A :class:`~dual_adapter.lora.file.LoraFile` with kohya names: ``lora_unet_{module_}.lora_down.weight``,
    ``.lora_up.weight`` and ``.alpha`` (0-d float32, the module's alpha)."""
    out: dict[str, torch.Tensor] = {}
    for mod in lora.modules:
        k = "lora_unet_" + mod.replace(".", "_")
        out[f"{k}.lora_down.weight"] = lora.tensor(mod, "A").contiguous()
        out[f"{k}.lora_up.weight"] = lora.tensor(mod, "B").contiguous()
        out[f"{k}.alpha"] = torch.tensor(float(lora.alphas.get(mod, lora.ranks[mod])), dtype=torch.float32)
    return out
