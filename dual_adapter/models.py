"""Model names: the one place that resolves ``tiny`` / ``mini`` / a folder / a native single file.

A model is named by a built-in tiny name (``tiny``, ``tiny-5b``, ``tiny-1.5``, ``tiny-unet3d``...), the built-in
pretrained ``mini`` (the miniature world's CogVideoX, :mod:`dual_adapter.miniworld.model`), a diffusers folder
of any backbone (a folder in the ``mini`` layout included), or, for CogVideoX, a folder plus a native ComfyUI
single-file transformer (:mod:`dual_adapter.native`). This module sits above the backbones, the miniature world
and the native interop, so none of them has to know the others (CONTRIBUTING.md, the layer order).

(The ``models/`` folder beside this file holds the shipped ``mini`` weights, package data, not code.)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .backbones import kind_of
from .backbones import load_backbone as _load_any_backbone
from .backbones.base import VideoBackbone, check_device, parse_dtype
from .backbones.cogvideox import (BUILTIN_MODELS, BUILTIN_PRETRAINED, TINY_VARIANTS, CogVideoXBackbone,
                                  CogVideoXBundle, ModelInfo, build_tiny)
from .backbones.cogvideox import inspect_model as _inspect_cogvideox
from .backbones.cogvideox import load_cogvideox as _load_cogvideox_folder
from .errors import DualAdapterError
from .miniworld.model import MINI_DIR, is_mini_folder, load_mini, mini_available
from .native import load_native_transformer

__all__ = ["BUILTIN_MODELS", "BUILTIN_PRETRAINED", "TINY_VARIANTS", "inspect_model", "load_cogvideox", "load_model",
           "load_backbone", "load_video_model"]

log = logging.getLogger("dual_adapter.backbone")


def refuse_other_backbone(name: str | os.PathLike) -> None:
    """Refuse a built-in model name of another backbone (e.g. ``tiny-unet3d``) where a CogVideoX model is needed.

    Raises:
        DualAdapterError: ``name`` is a built-in name of a non-CogVideoX backbone (names its family).
    """
    from .backbones import backbone_modules, tiny_names

    other = tiny_names().get(str(name))
    if other is not None and other != "cogvideox":
        names = ", ".join(repr(n) for n in BUILTIN_MODELS)
        raise DualAdapterError(f"model {str(name)!r} is a built-in {backbone_modules()[other].FAMILY} model, not "
                               f"CogVideoX; this command runs CogVideoX models only: {names} or a diffusers CogVideoX "
                               f"folder")


def inspect_model(name_or_path: str | os.PathLike, transformer_file: str | os.PathLike | None = None) -> ModelInfo:
    """Read and check a CogVideoX model's configs without loading any weights (seconds, not minutes).

    ``name_or_path``: a tiny variant, ``"mini"`` (the shipped folder, reported under its built-in name) or a
    diffusers CogVideoX folder; see :func:`dual_adapter.backbones.cogvideox.inspect_model` for the checks.

    Raises:
        DualAdapterError: the shipped ``mini`` folder is missing (names the command that makes it); a config is
            missing or wrong (naming the file and the value); a built-in name of another backbone.
    """
    refuse_other_backbone(name_or_path)
    if str(name_or_path) in BUILTIN_PRETRAINED:  # the shipped pretrained folder, under its built-in name
        if not mini_available():
            raise DualAdapterError(f"the built-in model {str(name_or_path)!r} is missing its folder {str(MINI_DIR)!r}; "
                                   f"make it with 'python -m dual_adapter miniworld pretrain --out {MINI_DIR}'")
        info = _inspect_cogvideox(MINI_DIR)
        return ModelInfo(str(name_or_path), info.config, info.vae_config, info.scheduler_config)
    return _inspect_cogvideox(name_or_path, transformer_file=transformer_file)


def load_cogvideox(folder: str | os.PathLike, dtype: str | torch.dtype = "bf16", device: str | None = None,
                   vae_tiling: bool = True, vae_slicing: bool = True, cpu_offload: bool = False,
                   transformer_file: str | os.PathLike | None = None) -> CogVideoXBundle:
    """Load CogVideoX-2B / -5B / 1.5-5B from a local diffusers folder, optionally with a native ComfyUI
    single-file transformer (``transformer_file``, read by :func:`dual_adapter.native.load_native_transformer`)
    instead of ``folder/transformer/``. Arguments and errors as
    :func:`dual_adapter.backbones.cogvideox.load_cogvideox`; the folder's configs and ``device`` are checked
    before the file is read.

    Raises:
        DualAdapterError: as :func:`dual_adapter.backbones.cogvideox.load_cogvideox`; the file does not load.
    """
    transformer = None
    if transformer_file:
        root = Path(folder).expanduser()
        _inspect_cogvideox(root, transformer_file=transformer_file)
        check_device(device)
        try:
            transformer = load_native_transformer(transformer_file, dtype=parse_dtype(dtype))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise DualAdapterError(f"could not load CogVideoX from {str(root)!r}: {type(e).__name__}: {e}") from None
    return _load_cogvideox_folder(folder, dtype=dtype, device=device, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                                  cpu_offload=cpu_offload, transformer_file=transformer_file, transformer=transformer)


def load_model(name_or_path: str, dtype: str | torch.dtype | None = None, device: str | None = None,
               seed: int = 0, **kw) -> CogVideoXBundle:
    """``"tiny"`` / ``"tiny-5b"`` / ``"tiny-1.5"`` -> :func:`~dual_adapter.backbones.cogvideox.build_tiny`;
    ``"mini"`` -> the shipped pretrained miniature model (:func:`dual_adapter.miniworld.model.load_mini`);
    anything else is a diffusers folder (:func:`load_cogvideox`).

    A folder in the ``mini`` layout (its ``vae/config.json`` names the mini's VAE substitute, e.g. one written
    by ``python -m dual_adapter miniworld pretrain``) also loads with :func:`~dual_adapter.miniworld.model.load_mini`.

    ``dtype`` defaults to fp32 for tiny / mini models and bf16 for real ones. ``**kw`` goes to
    :func:`load_cogvideox` (``transformer_file``, ``cpu_offload``); built-in and ``mini`` models have no use for
    them: ``cpu_offload`` is ignored there (with a log line; they fit anywhere), ``transformer_file`` is refused.

    Raises:
        DualAdapterError: ``transformer_file`` with a built-in or ``mini`` model (a native transformer file needs a
            real CogVideoX diffusers folder for its VAE and T5); a built-in name of another backbone
            (:func:`refuse_other_backbone`); the errors of :func:`load_cogvideox`.
    """
    refuse_other_backbone(name_or_path)
    mini = name_or_path in BUILTIN_PRETRAINED or is_mini_folder(name_or_path)  # is_mini_folder reads vae/config.json
    builtin = mini or name_or_path in TINY_VARIANTS
    if builtin and kw.get("transformer_file"):
        raise DualAdapterError(f"transformer file {str(kw['transformer_file'])!r} with model {str(name_or_path)!r}: a "
                               f"native transformer file needs a real CogVideoX diffusers folder (for its VAE and "
                               f"T5), not a built-in or mini model")
    if builtin and kw.get("cpu_offload"):
        log.info("cpu_offload is not used for %s (built-in and mini models fit anywhere)", name_or_path)
    if mini:
        folder = None if name_or_path in BUILTIN_PRETRAINED else name_or_path
        return load_mini(folder, device=check_device(device) or "cpu", dtype=dtype or "fp32")
    if name_or_path in TINY_VARIANTS:
        return build_tiny(name_or_path, seed=seed, device=check_device(device) or "cpu", dtype=dtype or "fp32")
    return load_cogvideox(name_or_path, dtype=dtype or "bf16", device=device, **kw)


def load_backbone(name_or_path: str, *, kind: str | None = None, dtype=None, device=None, **kw) -> VideoBackbone:
    """Any model name as a :class:`~dual_adapter.backbones.base.VideoBackbone`: CogVideoX names and folders
    (``mini`` and native single files included) through :func:`load_model`, every other backbone through
    :func:`dual_adapter.backbones.load_backbone`.

    Raises:
        DualAdapterError: unknown name, wrong ``kind``, or an incomplete folder.
    """
    if kind in (None, "cogvideox") and (name_or_path in BUILTIN_PRETRAINED or kw.get("transformer_file") or
                                        kind_of(name_or_path) == "cogvideox"):
        return CogVideoXBackbone(load_model(name_or_path, dtype=dtype, device=device, **kw))
    return _load_any_backbone(name_or_path, kind=kind, dtype=dtype, device=device, **kw)


def load_video_model(name_or_path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str | None = None,
                     *, vae_tiling: bool = True, vae_slicing: bool = True, cpu_offload: bool = False,
                     transformer_file: str | os.PathLike | None = None):
    """Any video model by name or folder, the backbone decided by the name or the folder's contents: a built-in
    tiny name of any backbone (``tiny``, ``tiny-5b``, ``tiny-1.5``, ``tiny-wan``, ``tiny-unet3d``,
    ``tiny-animatediff``), ``mini`` or a folder in the ``mini`` layout, or a diffusers folder of CogVideoX, Wan,
    ZeroScope / ModelScope (UNet3D) or AnimateDiff (docs/backbones.md).

    Returns a :class:`~dual_adapter.backbones.cogvideox.CogVideoXBundle` for CogVideoX (what the DualReal
    functions take) and a :class:`~dual_adapter.backbones.base.VideoBackbone` for every other backbone.
    ``dtype``: None = each backbone's default (fp32 for built-in models; bf16 for CogVideoX and Wan, fp16 for
    U-Nets on a GPU). ``vae_tiling`` / ``vae_slicing`` are read by CogVideoX only; ``cpu_offload`` by CogVideoX
    and Wan; ``transformer_file`` (a native ComfyUI single-file transformer) by CogVideoX folders only.

    Raises:
        DualAdapterError: ``transformer_file`` with a model that is not a CogVideoX folder; an unknown name or an
            incomplete folder (naming what is missing); the errors of :func:`load_model`.
    """
    from .backbones import backbone_modules, identify_folder, tiny_names

    name = str(name_or_path)
    mini = name in BUILTIN_PRETRAINED or is_mini_folder(name)
    kind = "cogvideox" if mini else tiny_names().get(name) or identify_folder(name) or "cogvideox"
    if kind == "cogvideox":
        if mini or name in TINY_VARIANTS:
            return load_model(name, dtype=dtype, device=device, transformer_file=transformer_file)
        return load_cogvideox(name, dtype=dtype or "bf16", device=device, vae_tiling=vae_tiling,
                              vae_slicing=vae_slicing, cpu_offload=cpu_offload, transformer_file=transformer_file)
    if transformer_file:
        raise DualAdapterError(f"native_transformer: a native single-file transformer is read for CogVideoX only (its "
                               f"diffusers folders); {name!r} is a {backbone_modules()[kind].FAMILY} model: set it to none")
    kw = {"cpu_offload": cpu_offload} if kind == "wan" else {}
    return _load_any_backbone(name, kind=kind, dtype=dtype, device=device, **kw)
