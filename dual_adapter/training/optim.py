"""The optimiser (AdamW, 8-bit AdamW when bitsandbytes runs on the device, or Lion) and the learning-rate schedule
(linear warm-up, then cosine with restarts, cosine or constant).
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch

from ..errors import DualAdapterError
from .config import TrainConfig

log = logging.getLogger(__package__)


# --------------------------------------------------------------------------------------------
# optimiser and schedule


def _bnb_usable(params: list[torch.Tensor]) -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return all(p.device.type == "cuda" for p in params)


def make_optimizer(param_groups: Iterable, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    """Build the optimiser named by ``cfg.optimizer``. Returns ``(optimizer, name_used)``.

    ``"auto"`` takes bitsandbytes' 8-bit AdamW when it is installed and every parameter is on CUDA,
    else ``torch.optim.AdamW`` (its fused kernel when every parameter is on CUDA or the CPU).

    Raises:
        DualAdapterError: ``"adamw8bit"`` / ``"lion"`` asked for but their package is missing,
            or no trainable parameter.
    """
    groups = list(param_groups)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise DualAdapterError("nothing to train: no trainable parameters")
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    name = cfg.optimizer
    if name == "auto":
        name = "adamw8bit" if _bnb_usable(params) else "adamw"
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except Exception:
            raise DualAdapterError("optimizer 'adamw8bit' needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, eps=cfg.eps, **kw), name
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except Exception:
            raise DualAdapterError("optimizer 'lion' needs the lion-pytorch package (pip install lion-pytorch)") from None
        return Lion(groups, **kw), name
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, eps=cfg.eps, fused=fused or None, **kw), "adamw"


def make_lr_schedule(optimizer, cfg: TrainConfig):
    """Warm-up then cosine-with-restarts / cosine / constant (diffusers.optimization).

    The warm-up is ``cfg.warmup_steps`` as given, as in DualReal's released trainer (diffusers ``get_scheduler``
    with ``num_warmup_steps=lr_warmup_steps``): step ``k`` (0-based) of the warm-up runs at ``lr * k / warmup``,
    so a run of ``steps <= warmup_steps`` never reaches ``lr`` and peaks at ``lr * (steps - 1) / warmup_steps``
    (100 steps with the default 200 warm-up steps: 4.95e-4 for lr 1e-3). A warning says so.
    """
    from diffusers.optimization import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_cosine_with_hard_restarts_schedule_with_warmup,
    )

    warm = int(cfg.warmup_steps)
    if warm >= int(cfg.steps) > 0:
        log.warning("warm-up of %d steps in a %d-step run: the learning rate peaks at %.3g (lr x %d/%d), as in the "
                    "authors' schedule; lower the warm-up to reach lr", warm, int(cfg.steps),
                    float(cfg.lr) * (int(cfg.steps) - 1) / warm, int(cfg.steps) - 1, warm)
    total = max(int(cfg.steps), 1)
    if cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warm)
    if cfg.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warm, total)
    return get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, warm, total, num_cycles=int(cfg.num_cycles))
