"""CustomTTT's layer-selective LoRAs (docs/customttt.md): an appearance LoRA trained on subject photos (1-frame
videos) and a motion LoRA trained on clips, each only on the blocks the prompt-influence analysis picked.

Training is :func:`dual_adapter.lora.train_lora` with ``LoraSpec(blocks=...)`` on every backbone the LoRA
trainer serves (CogVideoX, Wan: blocks ``blocks.{i}``); :func:`selective_spec` and
:func:`selective_train_config` give this method's defaults, :func:`train_selective_lora` wraps both. (The
published AnimateDiff recipe, whose appearance LoRA trains without the motion modules, is
:mod:`dual_adapter.customttt.unet`.)
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..errors import DualAdapterError
from ..lora import parse_blocks

__all__ = ["parse_blocks", "selective_spec", "selective_train_config", "train_selective_lora"]


def selective_spec(kind: str, blocks: Sequence[int] | str | None, *, rank: int = 32, alpha: float | None = None,
                   dropout: float = 0.1, targets: str | Sequence[str] | None = None):
    """The :class:`~dual_adapter.lora.LoraSpec` of a CustomTTT LoRA on the chosen blocks only.

    Defaults (authors, sup): rank 32, dropout 0.1. Targets: ``"full"`` (attention q, k, v, out) for both
    kinds, because the authors' LoRAs adapt whole attention layers; a motion LoRA may use ``"tap"``
    (docs/tap.md). alpha defaults to rank (scale 1).

    Args:
        kind: ``"appearance"`` or ``"motion"`` (recorded by the caller; both have the same default targets).
        blocks: block indices (or ``"2,6"``); None = all blocks (not layer-selective).

    Raises:
        DualAdapterError: unknown kind, bad blocks, rank, alpha or dropout.
    """
    from ..lora import LoraSpec, resolve_targets

    if kind not in ("appearance", "motion"):
        raise DualAdapterError(f"kind={kind!r}: expected 'appearance' or 'motion'")
    b = parse_blocks(blocks) if isinstance(blocks, str) or blocks is None else sorted(set(int(x) for x in blocks))
    spec = LoraSpec(rank=int(rank), alpha=float(alpha if alpha is not None else rank), dropout=float(dropout),
                    targets=resolve_targets(targets or "full"), blocks=b)
    spec.validate()
    return spec


def selective_train_config(kind: str, optimizer: str = "adamw", **overrides):
    """:class:`~dual_adapter.training.TrainConfig` for a layer-selective LoRA.

    ``optimizer="lion"`` gives the authors' setting exactly (sup): Lion betas (0.9, 0.99), weight decay
    0.1, 500 steps, lr 1e-5 (appearance) / 5e-5 (motion); it needs the ``lion-pytorch`` package.
    ``optimizer="adamw"`` (default: works without extra packages) uses the usual Lion -> AdamW
    conversion (learning rate x10, weight decay /10): lr 1e-4 / 5e-4, weight decay 1e-2, betas
    (0.9, 0.999). Both: constant schedule, no warm-up, grad clip 1.0.

    Raises:
        DualAdapterError: unknown kind or optimizer.
    """
    from ..training import TrainConfig

    if kind not in ("appearance", "motion"):
        raise DualAdapterError(f"kind={kind!r}: expected 'appearance' or 'motion'")
    lion_lr = 1e-5 if kind == "appearance" else 5e-5
    if optimizer == "lion":
        kw = dict(lr=lion_lr, betas=(0.9, 0.99), weight_decay=0.1)
    elif optimizer in ("adamw", "adamw8bit", "auto"):
        kw = dict(lr=lion_lr * 10, betas=(0.9, 0.999), weight_decay=1e-2)
    else:
        raise DualAdapterError(f"optimizer={optimizer!r}: expected adamw, adamw8bit, auto or lion")
    kw.update(steps=500, optimizer=optimizer, lr_schedule="constant", warmup_steps=0, grad_clip=1.0)
    kw.update(overrides)
    cfg = TrainConfig(**kw)
    cfg.validate()
    return cfg


def train_selective_lora(bundle, kind: str, blocks: Sequence[int] | str | None, *, prompt: str,
                         photos: Sequence[torch.Tensor] | None = None, clips: Sequence[torch.Tensor] | None = None,
                         spec=None, cfg=None, **train_kw):
    """Train a layer-selective appearance LoRA (on ``photos``, each a 1-frame video) or motion LoRA (on
    ``clips``): :func:`dual_adapter.lora.train_lora` with :func:`selective_spec` / :func:`selective_train_config`
    defaults. Extra keywords go to ``train_lora`` (callback, checkpoint_path, num_frames, patches...).

    Returns:
        ``(LoraFile, TrainResult)``; the file's metadata records ``customttt_kind``.

    Raises:
        DualAdapterError: an appearance LoRA without photos, a motion LoRA without clips, or what
            ``train_lora`` raises.
    """
    from ..lora import train_lora

    if kind == "appearance" and not photos:
        raise DualAdapterError("an appearance LoRA needs subject photos (photos=)")
    if kind == "motion" and not clips:
        raise DualAdapterError("a motion LoRA needs motion clips (clips=)")
    spec = spec if spec is not None else selective_spec(kind, blocks)
    if spec.blocks is None and blocks is not None:
        spec = copy.deepcopy(spec)
        spec.blocks = parse_blocks(blocks) if isinstance(blocks, str) else list(blocks)
    cfg = cfg if cfg is not None else selective_train_config(kind)
    lf, res = train_lora(bundle, clips=clips if kind == "motion" else None, photos=photos if kind == "appearance" else None,
                         prompt=prompt, spec=spec, cfg=cfg, **train_kw)
    lf.metadata["customttt_kind"] = kind
    return lf, res
