"""LoRA file layouts beyond diffusers / peft: core ComfyUI native names, VideoX-Fun kohya, finetrainers.

:func:`normalize_lora_tensors` runs inside :func:`dual_adapter.lora.load_lora` before its converter and
rewrites the layouts below into ones the converter reads (diffusers / kohya names):

  * **ComfyUI native** (what core ``LoraLoaderModelOnly`` loads for native CogVideoX, and what core
    TrainLoraNode writes): ``diffusion_model.blocks.{i}.q.lora_up.weight`` / ``.lora_down.weight`` /
    ``.alpha`` (also ``lora_A/lora_B`` and ``lora_unet_blocks_{i}_q.*``). ``.diff`` / ``.diff_b``
    (full weight / bias differences) are refused with a message: they are not low-rank, so the pack's
    LoRA layers cannot carry them; core ``LoraLoaderModelOnly`` (or *Apply LoRA to MODEL*) applies them.
  * **VideoX-Fun kohya**: ``lora_unet__transformer_blocks_{i}_attn1_to_q.lora_down.weight`` (double
    underscore) -> the single-underscore kohya names.
  * **finetrainers**: alpha in the ``lora_config`` JSON metadata (``lora_alpha``, ``r``) -> used as
    diffusers' ``lora_adapter_metadata`` when that is absent.
  * **Wan, ComfyUI native / original Wan names** (core ComfyUI's Wan LoRAs, DiffSynth-Studio):
    ``diffusion_model.blocks.{i}.self_attn.q.lora_down.weight`` / ``lora_up`` (or ``lora_A`` / ``lora_B``) /
    ``.alpha``; ``cross_attn.{q,k,v,o,k_img,v_img}``, ``ffn.0``, ``ffn.2`` and the top layers likewise
    (:data:`WAN_NATIVE_TO_DIFFUSERS`, diffusers' own conversion table) -> diffusers' Wan names
    (``blocks.{i}.attn1.to_q``).
  * **Wan, musubi-tuner / kohya**: ``lora_unet_blocks_{i}_self_attn_q.lora_down.weight`` / ``.alpha`` (the
    native names with ``_`` for ``.``, as ComfyUI's key map reads them) -> the native names above.

Alpha, as every one of those tools applies it: the update is ``lora_up @ lora_down * alpha / rank`` with the
file's ``.alpha`` per module, and ``alpha = rank`` (scale 1) where a file has none (diffusers folds
``alpha / rank`` into the weights when it converts; ComfyUI and musubi-tuner scale at apply time): one file, one
delta, in every loader.

:func:`native_lora_state_dict` / :func:`save_lora_native` write a LoRA with native key names (alpha per
module as a ``.alpha`` tensor, so core applies ``alpha / rank`` exactly as the pack does).
:func:`with_alpha` overrides a LoRA's alpha (for 1/rank-scaled files such as DimensionX, trained with
alpha 1: ``with_alpha(lf, 1.0)`` is strength 1/rank without a tiny strength value).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import DualAdapterError
from .native import diffusers_to_native_module, native_to_diffusers_module

__all__ = ["normalize_lora_tensors", "native_lora_state_dict", "save_lora_native", "with_alpha", "NATIVE_BLOCK_LINEARS",
           "WAN_NATIVE_TO_DIFFUSERS", "wan_native_to_diffusers_module", "wan_diffusers_to_native_module",
           "wan_native_to_diffusers", "wan_kohya_to_native", "wan_native_to_kohya", "kohya_lora_state_dict"]

#: Linear layers of a native CogVideoX block (module names relative to ``blocks.{i}``).
NATIVE_BLOCK_LINEARS = ("q", "k", "v", "attn_out", "ff_proj", "ff_out", "norm1.linear", "norm2.linear")
_NATIVE_TOP_LINEARS = ("patch_embed.proj", "patch_embed.text_proj", "time_embedding_linear_1",
                       "time_embedding_linear_2", "ofs_embedding_linear_1", "ofs_embedding_linear_2",
                       "norm_out.linear", "proj_out")
_NATIVE_PARAM = re.compile(r"^(?:model\.)?diffusion_model\.(?P<mod>.+?)\.(?P<kind>lora_up\.weight|lora_down\.weight|"
                           r"lora_A\.weight|lora_B\.weight|alpha|diff|diff_b|lora_mid\.weight)$")


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
_WAN_NATIVE_HINT = re.compile(r"^(?:model\.)?diffusion_model\.blocks\.\d+\.(?:self_attn|cross_attn|ffn)\.")
_WAN_KOHYA_HINT = re.compile(r"^lora_unet_blocks_\d+_(?:self_attn|cross_attn|ffn)_")


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

    return _rename_kohya(tensors, rename, "Wan LoRA (musubi-tuner / kohya names) has keys that name no Wan layer")


def _rename_kohya(tensors: Mapping[str, torch.Tensor], rename, message: str) -> dict[str, torch.Tensor]:
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


def wan_native_to_kohya(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native dotted Wan keys -> musubi-tuner / kohya keys (the inverse of :func:`wan_kohya_to_native`)."""
    out = {}
    for k, v in tensors.items():
        m = _NATIVE_PARAM.match(k)
        out[f"lora_unet_{m.group('mod').replace('.', '_')}.{m.group('kind')}" if m else k] = v
    return out


def wan_native_to_diffusers(tensors: Mapping[str, torch.Tensor], where: str = "LoRA") -> dict[str, torch.Tensor]:
    """Native dotted Wan keys -> diffusers keys the pack's converter reads: ``transformer.blocks.0.attn1.to_q.
    lora_A.weight`` / ``lora_B.weight`` / ``.alpha`` (kept per module, applied as ``alpha / rank``). Pure dict -> dict.

    Raises:
        DualAdapterError: ``.diff`` / ``.diff_b`` keys (full differences, not low-rank), or a key that names no
            Wan Linear layer (both named in the message).
    """
    diffs = [k for k in tensors if k.endswith((".diff", ".diff_b"))]
    if diffs:
        raise DualAdapterError(
            f"{where} holds full weight differences ({len(diffs)} '.diff' / '.diff_b' keys, e.g. {diffs[:3]}); the "
            f"pack's LoRA layers carry only low-rank pairs. Core ComfyUI's LoRA loader applies them to a native MODEL")
    return _native_pairs_to_diffusers(tensors, wan_native_to_diffusers_module,
                                      f"{where} (Wan native names) has keys that are not LoRA pairs of a Wan Linear "
                                      f"layer: ")


def _native_pairs_to_diffusers(tensors: Mapping[str, torch.Tensor], to_module, message: str) -> dict[str, torch.Tensor]:
    """Native dotted LoRA keys -> ``transformer.{diffusers module}.lora_A/lora_B.weight`` / ``.alpha`` with
    ``to_module`` (native module -> diffusers module or None); unknown keys raise ``message`` + the keys."""
    out, bad = {}, []
    for k, v in tensors.items():
        m = _NATIVE_PARAM.match(k)
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


def _native_kohya_module(rest: str) -> str | None:
    """``blocks_3_ff_proj`` -> ``blocks.3.ff_proj``; ``time_embedding_linear_1`` -> itself (None if unknown)."""
    m = re.match(r"^blocks_(\d+)_(.+)$", rest)
    if m:
        sub = {n.replace(".", "_"): n for n in NATIVE_BLOCK_LINEARS}.get(m.group(2))
        return f"blocks.{m.group(1)}.{sub}" if sub else None
    return {n.replace(".", "_"): n for n in _NATIVE_TOP_LINEARS}.get(rest)


def normalize_lora_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                           path: str | Path = "LoRA") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rewrite native / VideoX-Fun / finetrainers layouts into diffusers or kohya names (see module doc).

    Other layouts pass through unchanged.

    Raises:
        DualAdapterError: native ``.diff`` / ``.diff_b`` keys (names them and says what loads them), or a
            native key that names no CogVideoX layer.
    """
    where = f"LoRA file {str(path)!r}"
    t = dict(tensors)
    md = dict(meta or {})
    keys = list(t)
    # finetrainers: alpha in the lora_config metadata
    lc = md.get("lora_config")
    if lc is not None and md.get("lora_adapter_metadata") is None:
        if isinstance(lc, str):
            try:
                lc = json.loads(lc)
            except ValueError:
                lc = None
        if isinstance(lc, dict):
            cfg = lc.get("transformer", lc) if isinstance(lc.get("transformer"), dict) else lc
            if cfg.get("lora_alpha") is not None:
                md["lora_adapter_metadata"] = json.dumps({k: v for k, v in cfg.items()
                                                          if k in ("r", "lora_alpha", "alpha_pattern",
                                                                   "rank_pattern", "target_modules")})
    # VideoX-Fun kohya: lora_unet__transformer_blocks_... (double underscore)
    if any(k.startswith("lora_unet__") for k in keys):
        t = {("lora_unet_" + k[len("lora_unet__"):] if k.startswith("lora_unet__") else k): v for k, v in t.items()}
        keys = list(t)
    # Wan: musubi-tuner / kohya names, then native / original names
    if any(_WAN_KOHYA_HINT.match(k) for k in keys):
        t = wan_kohya_to_native(t)
        keys = list(t)
    if any(_WAN_NATIVE_HINT.match(k) for k in keys):
        return wan_native_to_diffusers(t, where), md
    # native kohya names: lora_unet_blocks_{i}_q...
    if any(re.match(r"^lora_unet_blocks_\d+_", k) for k in keys):
        def rename(rest: str, elem: str) -> str | None:
            nat = _native_kohya_module(rest)
            dmod = native_to_diffusers_module(nat) if nat else None
            return f"lora_unet_{dmod.replace('.', '_')}.{elem}" if dmod else None

        out = _rename_kohya(t, rename, f"{where} (native kohya names) has keys that name no CogVideoX layer")
        t, keys = out, list(out)
    # native dotted names: diffusion_model.blocks.{i}.q.lora_up.weight
    if any(re.match(r"^(model\.)?diffusion_model\.blocks\.\d+\.", k) for k in keys):
        diffs = [k for k in keys if k.endswith((".diff", ".diff_b"))]
        if diffs:
            raise DualAdapterError(
                f"{where} holds full weight differences ({len(diffs)} '.diff' / '.diff_b' keys, e.g. {diffs[:3]}), "
                f"written by core ComfyUI's trainer; the pack's LoRA layers carry only low-rank pairs. Load it with "
                f"core 'LoraLoaderModelOnly' on a native MODEL (or the pack's 'Apply LoRA to MODEL'), which applies them")
        t = _native_pairs_to_diffusers(t, native_to_diffusers_module, f"{where} (ComfyUI native names) has keys "
                                       f"that are not LoRA pairs of a CogVideoX layer: ")
    return t, md


def native_lora_state_dict(lora) -> dict[str, torch.Tensor]:
    """A :class:`~dual_adapter.lora.LoraFile` with core ComfyUI's native names.

    Keys: ``diffusion_model.{native module}.lora_down.weight`` ``[r, in]``, ``.lora_up.weight``
    ``[out, r]`` and ``.alpha`` (0-d float32, the module's alpha; core applies ``alpha / r`` as the pack).

    Raises:
        DualAdapterError: a module with no native equivalent.
    """
    out: dict[str, torch.Tensor] = {}
    ranks, alphas = lora.ranks, lora.alphas
    for mod in lora.modules:
        wan = mod.startswith("blocks.") or mod in _WAN_TOP.values()  # diffusers' Wan names (CogVideoX: transformer_blocks.)
        nat = wan_diffusers_to_native_module(mod) if wan else diffusers_to_native_module(mod)
        if nat is None:
            raise DualAdapterError(f"LoRA module {mod!r} has no native ComfyUI {'Wan' if wan else 'CogVideoX'} equivalent")
        a = lora.state_dict[f"transformer.{mod}.lora_A.weight"]
        b = lora.state_dict[f"transformer.{mod}.lora_B.weight"]
        out[f"diffusion_model.{nat}.lora_down.weight"] = a.contiguous()
        out[f"diffusion_model.{nat}.lora_up.weight"] = b.contiguous()
        out[f"diffusion_model.{nat}.alpha"] = torch.tensor(float(alphas.get(mod, ranks[mod])), dtype=torch.float32)
    return out


def kohya_lora_state_dict(lora) -> dict[str, torch.Tensor]:
    """A Wan :class:`~dual_adapter.lora.LoraFile` with musubi-tuner / kohya names
    (``lora_unet_blocks_0_self_attn_q.lora_down.weight``, ``.lora_up.weight``, ``.alpha``), which musubi-tuner,
    ComfyUI and diffusers read. Raises DualAdapterError for a module with no Wan native name."""
    return wan_native_to_kohya(native_lora_state_dict(lora))


def save_lora_native(path: str | Path, lora, *, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write ``lora`` with native key names (for core ``LoraLoaderModelOnly`` on a native CogVideoX MODEL),
    atomically; the pack's :func:`~dual_adapter.lora.load_lora` reads it back to the same LoRA.

    Raises:
        DualAdapterError: the file exists and not ``overwrite``; a module with no native name.
    """
    from .io import save_safetensors

    sd = native_lora_state_dict(lora)
    if dtype is not None:
        sd = {k: (v if k.endswith(".alpha") else v.to(dtype)) for k, v in sd.items()}
    md = {k: v for k, v in (lora.metadata or {}).items() if k != "lora_adapter_metadata"}
    md["key_format"] = "comfyui_native"
    md["rank"] = int(lora.rank)
    md["alpha"] = float(lora.alpha)
    return save_safetensors(sd, path, md, overwrite=overwrite)


def with_alpha(lora, alpha: float):
    """A copy of ``lora`` whose every module uses ``alpha`` (scale ``alpha / rank``).

    For files trained with another convention than they state, e.g. DimensionX-style LoRAs trained with
    alpha 1 but saved without it (apply with ``alpha=1``: the same as strength ``1/rank``).

    Raises:
        DualAdapterError: alpha not a positive finite number.
    """
    a = float(alpha)
    if not (a > 0 and a < float("inf")):
        raise DualAdapterError(f"alpha override={alpha!r}: must be a positive number (e.g. 1 for 1/rank-scaled LoRAs)")
    md = dict(lora.metadata or {})
    md["alpha_override"] = a
    return dataclasses.replace(lora, alphas={m: a for m in lora.modules}, alpha=a, metadata=md)
