"""The training objective every trainer shares: the backbone's noise scheduler, per-step random generators, the
diffusion loss of a batch (:func:`diffusion_loss`), and the same loss run as micro-batches for gradient accumulation
and data parallelism (:func:`batch_diffusion_loss`).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..errors import DualAdapterError
from .distributed import dist_rank_world, micro_batches


# --------------------------------------------------------------------------------------------
# objective


def make_noise_scheduler(bundle_or_config):
    """The training noise scheduler of a loaded model (its backbone's ``noise_scheduler()``); a bare
    scheduler config (a mapping) is taken as CogVideoX's, the pack's default backbone."""
    from ..backbones import as_backbone, backbone_modules

    if not isinstance(bundle_or_config, Mapping):
        try:
            return as_backbone(bundle_or_config).noise_scheduler()
        except DualAdapterError:  # something else that carries a config (e.g. a ModelInfo)
            bundle_or_config = bundle_or_config.scheduler_config
    return backbone_modules()["cogvideox"].for_denoiser(None, bundle_or_config).noise_scheduler()


def step_generator(seed: int, step: int, device: str = "cpu") -> torch.Generator:
    """The random generator of training step ``step`` (deterministic in ``seed`` and ``step``)."""
    return torch.Generator(device).manual_seed((int(seed) * 1_000_003 + int(step) * 7919) % (2 ** 63 - 1))


def diffusion_loss(
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
    """The training objective of ``model``'s backbone (:meth:`VideoBackbone.training_loss
    <dual_adapter.backbones.base.VideoBackbone.training_loss>`, found by :func:`dual_adapter.backbones.backbone_for`).

    On CogVideoX (docs/training.md, "The training objective"): ``t ~ U[0, 1000)``, ``x_t = add_noise(x_0, eps, t)``,
    ``v = model(x_t, t)``, ``x0_pred = scheduler.get_velocity(v, x_t, t)``,
    ``loss = mean(1 / (1 - alphas_cumprod[t]) * (x0_pred - x_0)^2)``.

    Args:
        latents: clean scaled latents ``x_0`` in the backbone's layout (``[B, F, C, h, w]`` on CogVideoX).
        prompt_embeds: ``[B or 1, L, D_text]``.
        generator: CPU generator for ``t`` and ``eps`` (ignored for what is given explicitly).
        timesteps: optional ``[B]`` integer timesteps. noise: optional ``eps`` like ``latents``.
        reduce: return the scalar mean (default) or the per-sample loss ``[B]``.
        error_fn: maps the prediction error ``d = x0_pred - x_0`` (after 1.5-model padding) to the
            per-element error; default ``d ** 2``. MotionDirector's appearance-debiased loss uses it
            (see :mod:`dual_adapter.lora`).
        cond: the image conditioning of an image-to-video model (:class:`~dual_adapter.backbones.base.ImageConditioning`,
            batch 1 or B); None: the backbone's own (:meth:`~dual_adapter.backbones.base.VideoBackbone.training_conditioning`,
            the clip's first frame on image-to-video models, nothing on text-to-video ones).
    """
    from ..backbones import backbone_for

    extra = {} if cond is None else {"cond": cond}
    return backbone_for(model).training_loss(model, noise_scheduler, latents, prompt_embeds, generator=generator,
                                             timesteps=timesteps, noise=noise, reduce=reduce, error_fn=error_fn,
                                             **extra)


def batch_diffusion_loss(
    model: torch.nn.Module,
    noise_scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator,
    *,
    grad_accum: int = 1,
    error_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    before: Callable[[torch.Tensor], None] | None = None,
    after: Callable[[], None] | None = None,
    cond=None,
) -> torch.Tensor:
    """The loss of one training batch (:func:`diffusion_loss`), run as micro-batches when asked to.

    Gradient accumulation and data parallelism share this: the batch's timesteps and noise are drawn from
    ``generator`` exactly as :func:`diffusion_loss` draws them for the whole batch (so every process draws
    the same global batch), the batch is cut by :func:`micro_batches`, and each of this process's
    micro-batches runs forward and backward with its loss weighted by its share of the batch
    (``b_i / B``): the gradients then sum to the whole batch's, over micro-batches and processes.

    Args:
        latents: ``[B, F, C, h, w]`` clean latents of the global batch. prompt_embeds: ``[1 or B, L, D]``.
        grad_accum: micro-batches per process (capped at the batch).
        error_fn: as :func:`diffusion_loss`.
        before: ``before(idx)`` is called before each micro-batch's forward with its sample indices ``[b_i]``
            (a trainer sets per-sample conditioning, e.g. DualReal's reference embeddings).
        after: called after each micro-batch's forward (e.g. to collect a value the forward left behind).
        cond: the batch's image conditioning (:class:`~dual_adapter.backbones.base.ImageConditioning`, batch 1 or
            B; each micro-batch gets its samples'), e.g. precomputed by the trainer with
            :meth:`~dual_adapter.backbones.base.VideoBackbone.item_conditioning`; None: as :func:`diffusion_loss`.

    Returns:
        With ``grad_accum`` 1 in one process: the loss with its graph (the caller, e.g. :func:`train_loop`,
        runs backward). Otherwise this process's share of the loss, already backpropagated, detached
        (``train_loop`` then skips backward and sums the shares over the processes).
    """
    B = latents.shape[0]
    if min(int(grad_accum), B) <= 1 and dist_rank_world()[1] == 1:
        if before is not None:
            before(torch.arange(B))
        loss = diffusion_loss(model, noise_scheduler, latents, prompt_embeds, generator=generator, error_fn=error_fn,
                              cond=cond)
        if after is not None:
            after()
        return loss
    from ..backbones import backbone_for

    p_t = backbone_for(model).time_patch(model)  # the noise covers the padded frames, as diffusion_loss draws it
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (B,), generator=generator)
    pad = (-latents.shape[1]) % p_t
    noise = torch.randn((B, latents.shape[1] + pad, *latents.shape[2:]), generator=generator, dtype=torch.float32)
    total = torch.zeros((), device=latents.device)
    for part in micro_batches(B, grad_accum):
        if before is not None:
            before(part)
        emb = prompt_embeds[part.to(prompt_embeds.device)] if prompt_embeds.shape[0] == B > 1 else prompt_embeds
        loss = diffusion_loss(model, noise_scheduler, latents[part.to(latents.device)], emb, timesteps=t[part],
                              noise=noise[part], error_fn=error_fn,
                              cond=None if cond is None else cond.select(part)) * (len(part) / B)
        if after is not None:
            after()
        with torch.autocast(latents.device.type, enabled=False):  # backward as train_loop runs it: outside autocast
            loss.backward()
        total = total + loss.detach()
    return total
