"""The sampler of every backbone: denoising loop and classifier-free guidance, written against the
:class:`~dual_adapter.backbones.base.VideoBackbone` interface (the model call is the backbone's
``predict``, the scheduler its ``make_scheduler``, one step its ``scheduler_step``, the initial noise
its ``latent_shape``); :mod:`dual_adapter.unet_sampling` is its U-Net defaults.

On CogVideoX the loop is diffusers' ``CogVideoXPipeline`` (CogVideoXDPMScheduler or CogVideoXDDIMScheduler
with trailing spacing, v-prediction, CFG on a [negative; positive] batch, 1.5-model frame padding); on the
U-Nets ``TextToVideoSDPipeline`` / ``AnimateDiffPipeline`` (DDIM or DPM-Solver++, epsilon). It is written out
so that it can take *model patches*, report progress every step and stop cleanly.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Callable, Sequence

import torch

from .backbones import as_backbone
from .errors import DualAdapterError
from .limits import MAX_SAMPLING_STEPS, check_int
from .patches import ModelPatch, patched_copy
from .seeds import seed_generator

log = logging.getLogger(__name__)

__all__ = ["check_finite", "make_scheduler", "sample", "decode_latents", "encode_frames", "to_comfy_latent",
           "from_comfy_latent", "latent_scale"]


# callback(step, total, info) -> None; may raise InterruptedByUser to stop.
Callback = Callable[[int, int, dict], None]

_COMPILED: dict = {}


def _compiled_model(base, patches, backend):
    """The patched copy of ``base`` compiled with ``torch.compile``, kept for the next ``sample()`` call with
    the same model, patch objects and backend (a new copy per call would recompile every time)."""
    import weakref

    key = (id(base), tuple(id(p) for p in patches), str(backend))
    hit = _COMPILED.get(key)
    if hit is None or hit[0]() is not base:
        model = patched_copy(base, patches)
        kw = {} if backend is True else {"backend": backend}
        # hold the patches so their ids stay theirs while cached; one compiled model at a time
        hit = (weakref.ref(base), tuple(patches), torch.compile(model, dynamic=False, **kw))
        while len(_COMPILED) >= 2:  # at most two compiled models (Wan 2.2 A14B's experts take turns)
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = hit
    return hit[2]


class _Denoisers:
    """The (patched) denoiser of each sampling step: the one the backbone says serves the step's timestep
    (``denoiser_for``; Wan 2.2 A14B switches from its high- to its low-noise expert at the boundary), with the
    patches for it (:func:`~dual_adapter.patches.patches_for`). A denoiser is moved in (``use``) when its first
    step comes and out when another takes over; ``denoiser`` (already patched) serves every step."""

    def __init__(self, bb, patches, compile, denoiser):
        import contextlib

        self.bb, self.patches, self.compile, self.fixed = bb, list(patches or ()), compile, denoiser
        self.name, self.net, self.stack = None, None, contextlib.ExitStack()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def __call__(self, t):
        if self.fixed is not None:
            return self.fixed
        name = self.bb.denoiser_for(t)
        if name != self.name:
            import contextlib

            from .patches import patches_for

            self.stack.close()
            self.stack = contextlib.ExitStack()
            base = self.stack.enter_context(self.bb.use(name))
            patches = patches_for(self.patches, name)
            self.net = _compiled_model(base, patches, self.compile) if self.compile else patched_copy(base, patches)
            self.name = name
        return self.net


def make_scheduler(model, name: str | None = None):
    """A fresh sampling scheduler of ``model`` (a backbone or CogVideoX bundle): its
    :meth:`~dual_adapter.backbones.base.VideoBackbone.make_scheduler` (``None`` = the backbone's default,
    ``dpm`` on CogVideoX, ``ddim`` on the U-Nets). Raises DualAdapterError for an unknown name."""
    bb = as_backbone(model)
    return bb.make_scheduler() if name is None else bb.make_scheduler(name)


def decode_latents(model, latents: torch.Tensor, **kw) -> torch.Tensor:
    """``model``'s :meth:`~dual_adapter.backbones.base.VideoBackbone.decode_latents`: scaled latents in its
    ``latent_layout`` -> frames ``[B, F, H, W, 3]`` (0..1); ``kw`` go to the backbone (CogVideoX: ``callback``)."""
    return as_backbone(model).decode_latents(latents, **kw)


def encode_frames(model, frames: torch.Tensor, **kw) -> torch.Tensor:
    """``model``'s :meth:`~dual_adapter.backbones.base.VideoBackbone.encode_frames`: frames ``[F, H, W, 3]``
    (0..1) -> scaled latents in its ``latent_layout`` (CogVideoX ``[1, F', C, h, w]``).

    Raises:
        DualAdapterError: frames with NaN / inf values or not in 0..1 (:func:`dual_adapter.media.check_frame_values`).
    """
    from .media import check_frame_values

    return as_backbone(model).encode_frames(check_frame_values(frames, "frames to encode"), **kw)


def latent_scale(bundle_or_vae) -> float:
    """The VAE's ``scaling_factor`` (1.15258426 on 2B, 0.7 on 5B / 1.5-5B; the tiny VAE's default otherwise)."""
    vae = getattr(bundle_or_vae, "vae", bundle_or_vae)
    return float(getattr(getattr(vae, "config", None), "scaling_factor", 1.0) or 1.0)


def to_comfy_latent(latents: torch.Tensor, scale: float = 1.0) -> dict:
    """``[B, F, C, h, w]`` transformer latents -> ComfyUI LATENT ``{"samples": [B, C, F, h, w]}``.

    Latent convention (docs/native_comfyui.md): a LATENT holds the *unscaled* VAE latent, as core ComfyUI
    does (core's CogVideoX model multiplies by the scale itself), so pass ``scale`` = :func:`latent_scale`
    of the model: the samples are ``latents / scale``.
    """
    return {"samples": (latents / scale if scale != 1.0 else latents).permute(0, 2, 1, 3, 4).contiguous()}


def from_comfy_latent(latent: dict | torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """ComfyUI LATENT (``{"samples": [B, C, T, h, w]}``, unscaled VAE latent) -> ``[B, T, C, h, w]``
    transformer latents (``samples * scale``, ``scale`` = :func:`latent_scale` of the model).

    Raises:
        DualAdapterError: not a 5-D video latent.
    """
    x = latent["samples"] if isinstance(latent, dict) else latent
    if not torch.is_tensor(x) or x.ndim != 5:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise DualAdapterError(f"latent must be a video LATENT with samples [B, C, T, H, W], got {shape}")
    x = x.permute(0, 2, 1, 3, 4)
    return x * scale if scale != 1.0 else x


def _expand_embeds(e: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if e.ndim != 3:
        raise DualAdapterError(f"{name} must be text embeddings [B, L, D], got shape {tuple(e.shape)}")
    if e.shape[0] == batch:
        return e
    if e.shape[0] == 1:
        return e.expand(batch, -1, -1)
    raise DualAdapterError(f"{name} has batch {e.shape[0]}, expected 1 or {batch}")


@torch.no_grad()
def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise :class:`DualAdapterError` naming ``name`` when tensor ``x`` holds NaN or Inf values."""
    if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DualAdapterError(f"{name} contain {bad} non-finite value(s) (NaN/Inf) of {x.numel()}; "
                               f"they would give a black or noise video")


def sample(
    model,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = 50,
    cfg: float = 6.0,
    seed: int = 0,
    batch_size: int = 1,
    scheduler: str = "dpm",
    patches: Sequence[ModelPatch] = (),
    callback: Callback | None = None,
    latents: torch.Tensor | None = None,
    use_dynamic_cfg: bool = False,
    return_all: bool = False,
    compile: bool | str | Callable = False,
    denoiser: torch.nn.Module | None = None,
    stop_after: int | None = None,
    image: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate video latents.

    Args:
        model: a :class:`~dual_adapter.backbones.base.VideoBackbone` or a CogVideoX bundle (the defaults
            below are CogVideoX's; :func:`dual_adapter.unet_sampling.sample` has the U-Nets').
        prompt_embeds: ``[1 or B, L, D_text]`` from the backbone's ``encode_prompt``.
        negative_embeds: same shape; ``None`` = the empty prompt's embedding. Used when ``cfg > 1``.
        num_frames, height, width: video size in frames / pixels; default: the model's training size
            (49 x 480 x 720 on the released CogVideoX models, 9 x 64 x 96 on ``tiny``). Checked with the
            backbone's ``check_video_size`` (CogVideoX: 4k+1 frames, multiples of 16 px).
        steps: denoising steps (>= 1). cfg: guidance scale (1 = no guidance; 6 in the papers).
        seed: seeds the initial noise (a CPU generator, so results match across devices); any integer in
            ``-2**63 .. 2**64 - 1``, mapped by :mod:`dual_adapter.seeds` (``seed mod 2**64``).
        batch_size: videos B; the embeddings have batch 1 (expanded) or B.
        scheduler: a name the backbone's ``make_scheduler`` takes: ``"dpm"`` (CogVideoXDPMScheduler, the
            CogVideoX default) or ``"ddim"``.
        patches: model patches applied to a weight-sharing copy for this call only (the model's
            denoiser is never modified); on a model with several denoisers (Wan 2.2 A14B's experts), each step
            runs the denoiser that serves its timestep, with a :class:`~dual_adapter.patches.PerDenoiser`'s patch
            for it and every other patch.
        callback: ``callback(step, total, info)`` after every step (1-based; ``info``: ``timestep``,
            ``latents``, ``prediction`` = the guided denoiser output); may raise
            :class:`~dual_adapter.errors.InterruptedByUser` to stop.
        latents: optional initial noise of the backbone's ``latent_shape`` (CogVideoX ``[B, F, C, h, w]``;
            overrides ``seed``).
        use_dynamic_cfg: the CogVideoX cosine CFG schedule.
        compile: run the (patched) denoiser through ``torch.compile`` (True, or a backend name /
            callable). The compiled model is kept for the next call with the same model and patch
            objects, so repeated calls do not recompile. Off by default (the first call compiles, which
            takes minutes at 5B; worth it for many samples).
        denoiser: an already patched denoiser to use instead (``patches`` and ``compile`` are then ignored).
        stop_after: stop after this many steps and return the current latents (CustomTTT teachers).
        image: the conditioning image of an image-to-video model (the video's first frame): ``[H, W, 3]`` or
            ``[1, H, W, 3]`` float 0..1 (a ComfyUI IMAGE of one picture), resized to cover the video size keeping
            its aspect ratio, then centre-cropped; the backbone's ``image_conditioning`` turns it into what the
            denoiser takes (docs/backbones.md, "Image-to-video"). The same image serves every video of the batch.

    Returns:
        denoised latents in the scaled latent space and the backbone's ``latent_layout`` (CogVideoX
        ``[B, F, C, h, w]``, F = 13 for 49 frames; the extra frames that 1.5 models pad are removed).

    Raises:
        DualAdapterError: invalid size, steps or embeddings; a non-finite ``cfg``, embedding or initial
            latent; an ``image`` with a text-to-video model (none with an image-to-video one), or not one RGB image in 0..1; latents that become non-finite while sampling (names the step and the patches).
    """
    bb = as_backbone(model)
    f0, h0, w0 = bb.default_size
    num_frames, height, width = num_frames or f0, height or h0, width or w0
    bb.check_video_size(num_frames, height, width)
    check_int("steps", steps, 1, MAX_SAMPLING_STEPS)
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
        raise DualAdapterError(f"cfg={cfg!r}: the guidance scale must be a finite number (1 = no guidance, 6 typical)")
    check_finite(prompt_embeds, "prompt embeddings")
    if negative_embeds is not None:
        check_finite(negative_embeds, "negative prompt embeddings")
    if latents is not None:
        check_finite(latents, "initial latents")
    device, dtype = bb.device, bb.dtype
    B = batch_size
    pos = _expand_embeds(prompt_embeds.to(device=device, dtype=dtype), B, "prompt embeddings")
    do_cfg = cfg > 1.0
    if do_cfg:
        neg = negative_embeds if negative_embeds is not None else bb.encode_prompt("")
        neg = _expand_embeds(neg.to(device=device, dtype=dtype), B, "negative prompt embeddings")
        if neg.shape[1:] != pos.shape[1:]:
            raise DualAdapterError(f"negative embeddings {tuple(neg.shape)} do not match prompt embeddings "
                                   f"{tuple(pos.shape)}")
        text = torch.cat([neg, pos], 0)
    else:
        text = pos

    cond = cond_in = None
    if image is None and bb.needs_image:
        raise DualAdapterError(f"model {bb.name!r} is an image-to-video model: give it a conditioning image (the "
                               f"video's first frame; --image on the command line, the Image To Video node)")
    if image is not None:
        cond = bb.image_conditioning(image, num_frames, height, width).to(device, dtype).expand(B)
        cond_in = cond.expand(2 * B) if do_cfg else cond
    cond_kw = {} if cond_in is None else {"cond": cond_in}

    sched = bb.make_scheduler(scheduler)
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps

    T = bb.latent_frames(num_frames)
    shape = bb.latent_shape(B, num_frames, height, width)
    f_dim = bb.latent_layout.index("F")
    extra = shape[f_dim] - T  # frames padded in front (CogVideoX 1.5), dropped at the end
    if latents is None:
        g = seed_generator(seed)
        latents = torch.randn(shape, generator=g, dtype=torch.float32)
    elif tuple(latents.shape) != shape:
        raise DualAdapterError(f"initial latents have shape {tuple(latents.shape)}, expected {shape}")
    latents = (latents.to(device=device, dtype=torch.float32) * getattr(sched, "init_noise_sigma", 1.0)).to(dtype)

    step_kw = {}
    if "generator" in inspect.signature(sched.step).parameters:
        step_kw["generator"] = seed_generator(seed, 1)
    n = len(timesteps) if stop_after is None else min(len(timesteps), int(stop_after))
    state = None
    with _Denoisers(bb, patches, compile, denoiser) as nets:
        for i, t in enumerate(timesteps[:n]):
            net = nets(t)
            x_in = torch.cat([latents] * 2) if do_cfg else latents
            if hasattr(sched, "scale_model_input"):  # flow-matching schedulers have none (Wan)
                x_in = sched.scale_model_input(x_in, t)
            tt = t.expand(x_in.shape[0])
            v = bb.predict(x_in, tt, text, denoiser=net, **cond_kw).float()
            scale = cfg
            if use_dynamic_cfg:
                scale = 1 + cfg * ((1 - math.cos(math.pi * ((steps - t.item()) / steps) ** 5.0)) / 2)
            if do_cfg:
                v_u, v_c = v.chunk(2)
                v = v_u + scale * (v_c - v_u)
            latents, state = bb.scheduler_step(sched, v, timesteps, i, latents, state, **step_kw)
            latents = latents.to(dtype)
            if not bool(torch.isfinite(latents).all()):
                names = ", ".join(repr(p) for p in patches if p is not None) or "none"
                raise DualAdapterError(f"sampling produced non-finite values (NaN/Inf) at step {i + 1}/{n} "
                                       f"(timestep {int(t)}); model patches: {names}. A diverged adapter or LoRA, "
                                       f"a non-finite reference embedding or an fp16 overflow are the usual causes")
            if callback is not None:
                callback(i + 1, n, {"timestep": int(t), "latents": latents, "prediction": v})
    return bb.finish_sample(latents, cond).narrow(f_dim, extra, T)
