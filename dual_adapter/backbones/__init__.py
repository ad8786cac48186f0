"""Video backbones behind one interface (:class:`~dual_adapter.backbones.base.VideoBackbone`).

Every public module here (``cogvideox``, ``unet3d``, ``animatediff``) is one backbone and defines
``KIND``, ``FAMILY``, ``tiny_names()``, ``detect(folder) -> bool`` and ``load(name_or_path, dtype,
device, **kw)``. Modules are found automatically, so adding a backbone is adding one module.

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
           "identify_folder", "tiny_names", "as_backbone"]


def backbone_modules() -> dict[str, ModuleType]:
    """``KIND`` -> module, for every backbone module of this package (sorted by module name)."""
    out: dict[str, ModuleType] = {}
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("_") or m.name == "base":
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        out[mod.KIND] = mod
    return out


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
    if type(bundle).__name__ == "CogVideoXBundle":
        from .cogvideox import CogVideoXBackbone

        return CogVideoXBackbone(bundle)
    raise DualAdapterError(f"expected a video model (CogVideoX, UNet3D or AnimateDiff), got {type(model).__name__}")
