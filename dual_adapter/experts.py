"""Training and applying per denoiser on models with several (Wan 2.2 A14B: ``high_noise`` and ``low_noise``
experts switched at the boundary timestep; docs/wan.md "Wan 2.2 A14B").

Method-agnostic: a trainer (``train_lora``, ``train_dualreal``...) trains one denoiser; :func:`train_per_denoiser`
calls it once per denoiser on the backbone's :meth:`~dual_adapter.backbones.base.VideoBackbone.expert` (that
denoiser alone, its training timesteps cut to the ones it serves) and writes one file per denoiser
(:func:`denoiser_path`), the layout ComfyUI's Wan 2.2 templates load (one LoRA per expert model). At sampling time,
:class:`~dual_adapter.patches.PerDenoiser` maps each denoiser to its patch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .backbones import as_backbone
from .errors import DualAdapterError

__all__ = ["denoiser_path", "require_one_denoiser", "train_per_denoiser"]


def denoiser_path(out: str | Path, name: str) -> Path:
    """``X.safetensors`` -> ``X_<name>.safetensors`` (``X_high_noise.safetensors``, ``X_low_noise.safetensors``)."""
    p = Path(out)
    return p.with_name(f"{p.stem}_{name}{p.suffix or '.safetensors'}")


def require_one_denoiser(model, what: str) -> None:
    """Refuse a model with several denoisers where ``what`` trains one.

    Raises:
        DualAdapterError: the model has several (names them and how to train each).
    """
    names = as_backbone(model).denoiser_names()
    if len(names) > 1:
        raise DualAdapterError(f"{what}: this model has {len(names)} denoisers ({', '.join(names)}: Wan 2.2 A14B's "
                               f"experts), each trained on the timesteps it serves; train them one at a time with "
                               f"dual_adapter.experts.train_per_denoiser (one file per expert)")


def train_per_denoiser(model, train_fn: Callable, *, paths: dict | None = None, names=None, **kw) -> dict:
    """Run ``train_fn(expert_backbone, **paths_for_it, **kw)`` once per denoiser of ``model``.

    Args:
        model: a backbone (e.g. ``tiny-wan-a14b`` or a Wan 2.2 A14B folder, loaded); a one-denoiser model trains
            once, as ``train_fn(model, **paths, **kw)``.
        train_fn: a trainer taking the model first (``dual_adapter.lora.train_lora``,
            ``dual_adapter.dualreal.train_dualreal``...).
        paths: keyword -> ``X.safetensors`` (e.g. ``{"out": ...}``, ``{"checkpoint_path": ...}``); each denoiser
            gets :func:`denoiser_path` ``(X, name)``.
        names: the denoisers to train (default all, in the order they serve the steps).

    Returns:
        ``{name: train_fn's result}``.

    Raises:
        DualAdapterError: a name that is not one of the model's denoisers; what ``train_fn`` raises.
    """
    bb = as_backbone(model)
    all_names = bb.denoiser_names()
    names = tuple(all_names if names is None else names)
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise DualAdapterError(f"denoiser {', '.join(map(repr, unknown))} is not one of {', '.join(all_names)}")
    several = len(all_names) > 1
    res = {}
    for name in names:
        where = {k: (denoiser_path(v, name) if several else v) for k, v in (paths or {}).items() if v is not None}
        res[name] = train_fn(bb.expert(name), **where, **kw)
    return res
