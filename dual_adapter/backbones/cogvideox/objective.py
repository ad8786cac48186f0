"""The CogVideoX training objective (:func:`training_loss`): v-prediction, ``1 / (1 - alphas_cumprod)`` weighted x0
error.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...errors import DualAdapterError
from .transformer import image_latent_frames, transformer_forward


def _pad_time(x: torch.Tensor, p_t: int | None) -> torch.Tensor:
    # CogVideoX 1.5 patches time by 2: pad at the front with copies of the first frame, as the pipeline pads noise.
    if p_t and x.shape[1] % p_t:
        n = p_t - x.shape[1] % p_t
        x = torch.cat([x[:, :1].expand(-1, n, -1, -1, -1), x], 1)
    return x


def training_loss(
    model: torch.nn.Module,
    noise_scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    reduce: bool = True,
    error_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond=None,
) -> torch.Tensor:
    """The CogVideoX training objective (docs/training.md, "The training objective"); :func:`dual_adapter.training.diffusion_loss`
    calls it for CogVideoX denoisers.

    ``t ~ U[0, 1000)``, ``x_t = add_noise(x_0, eps, t)``, ``v = model(x_t, t)``,
    ``x0_pred = scheduler.get_velocity(v, x_t, t)``,
    ``loss = mean(1 / (1 - alphas_cumprod[t]) * (x0_pred - x_0)^2)``.

    Args:
        latents: clean scaled latents ``x_0`` ``[B, F, C, h, w]``.
        prompt_embeds: ``[B or 1, L, D_text]``.
        generator: CPU generator for ``t`` and ``eps`` (ignored for what is given explicitly).
        timesteps: optional ``[B]`` integer timesteps. noise: optional ``eps`` like ``latents``.
        reduce: return the scalar mean (default) or the per-sample loss ``[B]``.
        error_fn: maps the prediction error ``d = x0_pred - x_0`` (``[B, F', C, h, w]``, after 1.5-model
            padding) to the per-element error; default ``d ** 2``. MotionDirector's appearance-debiased
            loss uses it (see :mod:`dual_adapter.lora`).
        cond: an image-to-video model's :class:`~dual_adapter.backbones.base.ImageConditioning`; None there: the
            clip's first latent frame as the image's (:func:`image_latent_frames`).
    """
    B = latents.shape[0]
    p_t = getattr(getattr(model, "config", None), "patch_size_t", None)
    c = model.config
    image_latents = None
    if int(c.in_channels) != int(c.out_channels or c.in_channels):
        image_latents = (cond.expand(B).concat if cond is not None else
                         image_latent_frames(latents[:, :1], latents.shape[1], p_t))
    elif cond is not None:
        raise DualAdapterError("a conditioning image was given to a text-to-video CogVideoX model")
    x0 = _pad_time(latents, p_t)
    n_train = noise_scheduler.config.num_train_timesteps
    if timesteps is None:
        timesteps = torch.randint(0, n_train, (B,), generator=generator)
    timesteps = timesteps.to(x0.device, non_blocking=True).long()  # host -> GPU without waiting for the GPU
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    noise = _pad_time(noise, p_t).to(x0.device, x0.dtype, non_blocking=True)
    x_t = noise_scheduler.add_noise(x0, noise, timesteps)
    if prompt_embeds.shape[0] == 1 and B > 1:
        prompt_embeds = prompt_embeds.expand(B, -1, -1)
    v = transformer_forward(model, x_t, prompt_embeds, timesteps, image_latents)
    x0_pred = noise_scheduler.get_velocity(v.float(), x_t.float(), timesteps)
    ac = noise_scheduler.alphas_cumprod.to(x0.device)[timesteps].float()
    w = 1.0 / (1.0 - ac)
    d = x0_pred - x0.float()
    err = d ** 2 if error_fn is None else error_fn(d)
    per = (w.view(B, *([1] * (err.ndim - 1))) * err).reshape(B, -1).mean(1)
    return per.mean() if reduce else per
