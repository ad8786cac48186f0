"""Sampling on the U-Net video backbones (ZeroScope/ModelScope UNet3D, AnimateDiff).

The loop of diffusers' ``TextToVideoSDPipeline`` / ``AnimateDiffPipeline`` written against the
:class:`~dual_adapter.backbones.base.VideoBackbone` interface: classifier-free guidance
``eps = eps_u + cfg * (eps_c - eps_u)``, DDIM (the authors' sampler for both SMA and CustomTTT) or
DPM-Solver++, and model patches (LoRA, AH) applied to a weight-sharing copy of the U-Net for this
call only.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch

from .errors import DualAdapterError
from .patches import patched_copy

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
        callback: ``callback(step, total, info)`` after every step; may raise to stop.
        latents: initial noise ``[B, C, F, h, w]`` (overrides ``seed``).
        denoiser: an already patched U-Net to use instead (``patches`` are then ignored).
        stop_after: stop after this many steps and return the current latents (CustomTTT teachers).

    Raises:
        DualAdapterError: a size the model cannot take, bad steps, mismatched embeddings.
    """
    if getattr(backbone, "latent_layout", None) != "BCFHW":
        raise DualAdapterError(f"{backbone!r} is not a U-Net video backbone; use dual_adapter.sampling for CogVideoX")
    f0, h0, w0 = backbone.default_size
    num_frames, height, width = num_frames or f0, height or h0, width or w0
    backbone.check_video_size(num_frames, height, width)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DualAdapterError(f"steps={steps!r}: must be an integer >= 1")
    dev, dt = backbone.device, backbone.dtype
    pos = prompt_embeds.to(dev, dt)
    B = pos.shape[0]
    do_cfg = cfg > 1.0
    if do_cfg:
        neg = negative_embeds if negative_embeds is not None else backbone.encode_prompt("")
        neg = neg.to(dev, dt)
        if neg.shape[0] == 1 and B > 1:
            neg = neg.expand(B, -1, -1)
        if neg.shape != pos.shape:
            raise DualAdapterError(f"negative embeddings {tuple(neg.shape)} do not match prompt embeddings "
                                   f"{tuple(pos.shape)}")
        text = torch.cat([neg, pos], 0)
    else:
        text = pos
    sched = backbone.make_scheduler(scheduler)
    sched.set_timesteps(steps, device=dev)
    s = backbone.vae_scale
    shape = (B, backbone.latent_channels, backbone.latent_frames(num_frames), height // s, width // s)
    if latents is None:
        g = torch.Generator("cpu").manual_seed(int(seed))
        latents = torch.randn(shape, generator=g, dtype=torch.float32)
    elif tuple(latents.shape) != shape:
        raise DualAdapterError(f"initial latents have shape {tuple(latents.shape)}, expected {shape}")
    latents = (latents.to(dev, torch.float32) * sched.init_noise_sigma).to(dt)
    step_kw = {}
    if "generator" in inspect.signature(sched.step).parameters:
        step_kw["generator"] = torch.Generator("cpu").manual_seed(int(seed) + 1)
    model = denoiser if denoiser is not None else patched_copy(backbone.denoiser, patches)
    timesteps = sched.timesteps
    n = len(timesteps) if stop_after is None else min(len(timesteps), int(stop_after))
    for i, t in enumerate(timesteps[:n]):
        x_in = torch.cat([latents] * 2) if do_cfg else latents
        x_in = sched.scale_model_input(x_in, t)
        eps = backbone.predict(x_in, t.expand(x_in.shape[0]).to(dev), text, denoiser=model).float()
        if do_cfg:
            e_u, e_c = eps.chunk(2)
            eps = e_u + cfg * (e_c - e_u)
        latents = sched.step(eps, t, latents.float(), return_dict=False, **step_kw)[0].to(dt)
        if callback is not None:
            callback(i + 1, n, {"timestep": int(t), "latents": latents, "eps": eps})
    return latents
