"""The CogVideoX 3D VAE: decode latents to frames and encode frames to latents.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...errors import DualAdapterError
from .bundle import CogVideoXBundle


# --------------------------------------------------------------------------------------------
# VAE


@torch.no_grad()
def decode_latents(bundle: CogVideoXBundle, latents: torch.Tensor,
                   callback: Callable[[int, int, dict], None] | None = None) -> torch.Tensor:
    """Decode ``[B, F, C, h, w]`` scaled latents to frames ``[B, 4(F-1)+1, H, W, 3]`` float 0..1.

    One video at a time (``callback(i, B, {})`` after each); the VAE's tiling applies when enabled.
    """
    if latents.ndim != 5:
        raise DualAdapterError(f"latents must be [B, F, C, h, w], got {tuple(latents.shape)}")
    if latents.shape[2] != bundle.vae.config.latent_channels:
        raise DualAdapterError(f"latents have {latents.shape[2]} channels, the VAE expects "
                               f"{bundle.vae.config.latent_channels} (is this latent from another model?)")
    out = []
    with bundle.use("vae") as vae:
        dev = next(vae.parameters()).device
        vdt = next(vae.parameters()).dtype
        for i in range(latents.shape[0]):
            z = latents[i: i + 1].permute(0, 2, 1, 3, 4).to(dev, vdt) / vae.config.scaling_factor
            video = vae.decode(z).sample  # [1, 3, F, H, W] in -1..1
            if not bool(torch.isfinite(video).all()):
                raise DualAdapterError(f"VAE decoding of video {i} gave non-finite values (NaN/Inf); the latents "
                                       f"were finite, so the VAE overflowed (try --dtype bf16 or fp32)"
                                       if bool(torch.isfinite(z).all()) else
                                       f"latents of video {i} contain NaN/Inf; nothing to decode")
            out.append(((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu())
            if callback is not None:
                callback(i + 1, latents.shape[0], {})
    return torch.cat(out, 0)


@torch.no_grad()
def encode_frames(bundle: CogVideoXBundle, frames: torch.Tensor, sample_posterior: bool = False,
                  generator: torch.Generator | None = None, return_std: bool = False):
    """Encode frames ``[F, H, W, 3]`` (or a batch ``[B, F, H, W, 3]``) float 0..1 to scaled latents
    ``[B, (F-1)//4+1, C, H/8, W/8]``.

    ``F`` should be 4k+1 (extra frames past the last 4k+1 are dropped by the VAE's temporal
    compression). ``sample_posterior=False`` uses the posterior mode (deterministic).
    ``return_std=True`` returns ``(mean, std)`` of the (diagonal Gaussian) posterior instead, both
    scaled like the latents, so that callers can draw ``mean + std * eps`` themselves (DualReal draws
    a fresh sample every training step, as the authors do). The posterior mode is its mean.

    Raises:
        DualAdapterError: wrong layout, or sizes the model cannot patch.
    """
    if frames.ndim == 4:
        frames = frames.unsqueeze(0)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise DualAdapterError(f"frames must be [F, H, W, 3] or [B, F, H, W, 3] (0..1), got {tuple(frames.shape)}")
    if frames.shape[1] < 1:
        raise DualAdapterError("frames: empty batch (0 frames); expected at least 1 frame")
    m = bundle.vae_scale_spatial * int(bundle.config.patch_size)
    if frames.shape[2] % m or frames.shape[3] % m:
        raise DualAdapterError(f"frames are {frames.shape[2]}x{frames.shape[3]} px; height and width must be "
                               f"multiples of {m} (resize with dual_adapter.media.fit_frames)")
    out, stds = [], []
    with bundle.use("vae") as vae:
        dev = next(vae.parameters()).device
        vdt = next(vae.parameters()).dtype
        sf = vae.config.scaling_factor
        for i in range(frames.shape[0]):
            x = frames[i: i + 1].permute(0, 4, 1, 2, 3).to(dev, vdt) * 2 - 1  # [1, 3, F, H, W]
            dist = vae.encode(x).latent_dist
            z = dist.sample(generator) if sample_posterior and not return_std else dist.mode()
            out.append((z * sf).permute(0, 2, 1, 3, 4))
            if return_std:
                stds.append((dist.std * sf).permute(0, 2, 1, 3, 4))
    mean = torch.cat(out, 0).to(bundle.device, bundle.dtype)
    if return_std:
        return mean, torch.cat(stds, 0).to(bundle.device, bundle.dtype)
    return mean
