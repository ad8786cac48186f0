"""Sampling on the U-Net video backbones (ZeroScope/ModelScope UNet3D, AnimateDiff): the shared
:func:`dual_adapter.sampling.sample` with the U-Net methods' defaults.

The loop of diffusers' ``TextToVideoSDPipeline`` / ``AnimateDiffPipeline``: classifier-free guidance
``eps = eps_u + cfg * (eps_c - eps_u)``, DDIM (the authors' sampler for both SMA and CustomTTT) or
DPM-Solver++, and model patches (LoRA, AH) applied to a weight-sharing copy of the U-Net for this
call only.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import sampling
from .errors import DualAdapterError

__all__ = ["sample", "Callback"]

Callback = Callable[[int, int, dict], None]


@torch.no_grad()
def sample(
    backbone,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = 25,
    cfg: float = 9.0,
    seed: int = 0,
    scheduler: str = "ddim",
    patches: Sequence = (),
    callback: Callback | None = None,
    latents: torch.Tensor | None = None,
    denoiser: torch.nn.Module | None = None,
    stop_after: int | None = None,
) -> torch.Tensor:
    """Generate video latents ``[B, C, F, h, w]`` (scaled latent space) on a U-Net backbone.

    Args:
        backbone: a U-Net :class:`~dual_adapter.backbones.base.VideoBackbone` (``unet3d`` / ``animatediff``).
        prompt_embeds: ``[B, 77, D_text]`` from ``backbone.encode_prompt``.
        negative_embeds: same shape (``None`` = the empty prompt); used when ``cfg > 1``.
        num_frames, height, width: video size (default: the model's); checked by the backbone.
        steps: denoising steps (>= 1); 25 with DDIM in CustomTTT, 30-50 in the SMA code.
        cfg: guidance scale (9 in CustomTTT, 12 in the SMA configs; 1 = none).
        seed: seeds the initial noise on a CPU generator (same result on every device).
        scheduler: ``ddim`` or ``dpm``.
        patches: model patches (``apply(unet)``) applied to a weight-sharing copy for this call.
        callback: ``callback(step, total, info)`` after every step (``info``: ``timestep``, ``latents``,
            ``prediction`` = the guided epsilon); may raise to stop.
        latents: initial noise ``[B, C, F, h, w]`` (overrides ``seed``).
        denoiser: an already patched U-Net to use instead (``patches`` are then ignored).
        stop_after: stop after this many steps and return the current latents (CustomTTT teachers).

    Raises:
        DualAdapterError: not a U-Net backbone; as :func:`dual_adapter.sampling.sample` (a size the model
            cannot take, bad steps, mismatched or non-finite embeddings, latents that become non-finite).
    """
    if getattr(backbone, "latent_layout", None) != "BCFHW":
        raise DualAdapterError(f"{backbone!r} is not a U-Net video backbone; use dual_adapter.sampling for CogVideoX")
    return sampling.sample(backbone, prompt_embeds, negative_embeds, num_frames=num_frames, height=height,
                           width=width, steps=steps, cfg=cfg, seed=seed, batch_size=prompt_embeds.shape[0],
                           scheduler=scheduler, patches=patches, callback=callback, latents=latents,
                           denoiser=denoiser, stop_after=stop_after)
