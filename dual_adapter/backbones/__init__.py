"""Video backbones behind one interface (:class:`~dual_adapter.backbones.base.VideoBackbone`).

Every public module or package here (``cogvideox``, ``unet3d``, ``animatediff``) is one backbone and defines
``KIND``, ``FAMILY``, ``tiny_names()``, ``detect(folder) -> bool``, ``load(name_or_path, dtype,
device, **kw)``, ``owns(denoiser) -> bool`` and ``for_denoiser(denoiser, scheduler_config=None)``.
Modules and packages are found automatically, so adding a backbone is adding one module or package (or, from outside the
package, :func:`register_backbone` with a module or namespace that defines the same names).

Methods reach a model only through the interface: :func:`as_backbone` for a loaded model,
:func:`backbone_for` for a bare denoiser (a trainable copy inside a trainer).

Use :func:`load_backbone` to load any of them by a built-in tiny name or a local folder;
:func:`kind_of` tells which backbone a name or folder belongs to, and :func:`identify_folder`
names the backbone of a folder for error messages.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from ..errors import DualAdapterError
from .base import ROLES, BlockInfo, VideoBackbone

__all__ = ["ROLES", "BlockInfo", "VideoBackbone", "backbone_modules", "kind_of", "load_backbone",
           "identify_folder", "tiny_names", "as_backbone", "backbone_for", "register_backbone",
           "unregister_backbone"]

_FOUND: dict[str, ModuleType] = {}
_REGISTERED: dict[str, ModuleType] = {}


def backbone_modules() -> dict[str, ModuleType]:
    """``KIND`` -> module, for every backbone module or subpackage of this package (sorted by name), then the
    ones added with :func:`register_backbone`."""
    if not _FOUND:
        for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if m.name.startswith("_") or m.name == "base":
                continue
            mod = importlib.import_module(f"{__name__}.{m.name}")
            _FOUND[mod.KIND] = mod
    return {**_FOUND, **_REGISTERED}


def register_backbone(module) -> None:
    """Add a backbone defined outside this package (a module or namespace with ``KIND``, ``FAMILY``,
    ``tiny_names``, ``detect``, ``load``, ``owns``, ``for_denoiser``). Registering a ``KIND`` again
    replaces it; :func:`unregister_backbone` removes it.

    Raises:
        DualAdapterError: a name is missing, or ``KIND`` is a built-in backbone's.
    """
    need = ("KIND", "FAMILY", "tiny_names", "detect", "load", "owns", "for_denoiser")
    missing = [n for n in need if not hasattr(module, n)]
    if missing:
        raise DualAdapterError(f"backbone module {getattr(module, '__name__', module)!r} lacks {', '.join(missing)}")
    backbone_modules()
    if module.KIND in _FOUND:
        raise DualAdapterError(f"backbone kind {module.KIND!r} is built in; choose another KIND")
    _REGISTERED[module.KIND] = module


def unregister_backbone(kind: str) -> None:
    """Remove a backbone added with :func:`register_backbone` (no-op for unknown kinds)."""
    _REGISTERED.pop(kind, None)


def backbone_for(denoiser, scheduler_config: dict | None = None) -> VideoBackbone:
    """The :class:`VideoBackbone` of a bare denoiser (e.g. a trainer's trainable copy): the registered
    backbones are asked first, then the built-in ones; CogVideoX is the fallback (the pack's default).

    ``scheduler_config``: the model's noise-scheduler config, where the backbone needs one for
    :meth:`VideoBackbone.noise_scheduler` (default: the backbone's own default).
    """
    if isinstance(denoiser, VideoBackbone):
        return denoiser
    mods = backbone_modules()
    for kind in [*_REGISTERED, *(k for k in _FOUND if k != "cogvideox")]:
        if mods[kind].owns(denoiser):
            return mods[kind].for_denoiser(denoiser, scheduler_config)
    return mods["cogvideox"].for_denoiser(denoiser, scheduler_config)


def tiny_names() -> dict[str, str]:
    """Built-in tiny model name -> backbone kind."""
    return {n: k for k, mod in backbone_modules().items() for n in mod.tiny_names()}


def identify_folder(folder: str | Path) -> str | None:
    """The kind of backbone a diffusers folder holds, or ``None`` when no backbone recognises it."""
    for k, mod in backbone_modules().items():
        try:
            if mod.detect(Path(folder) if "::" not in str(folder) else folder):
                return k
        except OSError:
            continue
    return None


def kind_of(name_or_path: str, default: str | None = "cogvideox") -> str:
    """Which backbone ``name_or_path`` (a tiny name or a folder) belongs to.

    Unknown folders give ``default`` (CogVideoX, whose loader then says what is missing).
    """
    tn = tiny_names()
    if name_or_path in tn:
        return tn[name_or_path]
    k = identify_folder(name_or_path)
    if k is None and default is None:
        raise DualAdapterError(f"{name_or_path!r} is neither a built-in tiny model ({', '.join(tn)}) nor a folder "
                               f"of a known backbone ({', '.join(m.FAMILY for m in backbone_modules().values())})")
    return k or default


def load_backbone(name_or_path: str, *, kind: str | None = None, dtype=None, device=None, **kw) -> VideoBackbone:
    """Load any backbone as a :class:`VideoBackbone`.

    Args:
        name_or_path: a built-in tiny name (``tiny``, ``tiny-unet3d``, ``tiny-animatediff``...) or a folder.
        kind: expected backbone kind; a folder of another kind raises an error naming both.

    Raises:
        DualAdapterError: unknown name, wrong kind, or an incomplete folder.
    """
    mods = backbone_modules()
    actual = kind_of(name_or_path)
    if kind is not None and kind not in mods:
        raise DualAdapterError(f"backbone kind {kind!r} is not one of {', '.join(mods)}")
    if kind is not None and actual != kind and (name_or_path in tiny_names() or identify_folder(name_or_path)):
        raise DualAdapterError(f"{name_or_path!r} is a {mods[actual].FAMILY} model, not {mods[kind].FAMILY}")
    return mods[kind or actual].load(name_or_path, dtype=dtype, device=device, **kw)


def as_backbone(model) -> VideoBackbone:
    """A :class:`VideoBackbone` for ``model``: a backbone, a CogVideoX bundle or a ``PatchedModel`` of one."""
    if isinstance(model, VideoBackbone):
        return model
    bundle = getattr(model, "bundle", model)
    if isinstance(bundle, VideoBackbone):
        return bundle
    from .cogvideox import CogVideoXBackbone, CogVideoXBundle

    if isinstance(bundle, CogVideoXBundle):
        return CogVideoXBackbone(bundle)
    raise DualAdapterError(f"expected a video model (CogVideoX, UNet3D or AnimateDiff), got {type(model).__name__}")
