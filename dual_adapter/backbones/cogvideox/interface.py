"""CogVideoX behind the :class:`~dual_adapter.backbones.base.VideoBackbone` interface: the registry's functions
(``tiny_names``, ``detect``, ``owns``, ``load``, ``for_denoiser``) and :class:`CogVideoXBackbone`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ...errors import DualAdapterError
from ..base import BlockInfo, VideoBackbone, check_device, check_role
from .blocks import adapted_block_forward
from .bundle import DEFAULT_SCHEDULER_CONFIG, CogVideoXBundle
from .loader import load_cogvideox
from .objective import _pad_time, training_loss
from .schedulers import make_noise_scheduler, make_scheduler
from .text import encode_prompt
from .tiny import BUILTIN_PRETRAINED, TINY_VARIANTS, build_tiny
from .transformer import (
    ARCHITECTURE_KEYS,
    check_video_size,
    config_fingerprint,
    image_conditioning,
    image_latent_frames,
    latent_frames_for,
    transformer_forward,
    transformer_width,
)
from .vae import decode_latents, encode_frames


KIND = "cogvideox"
FAMILY = "CogVideoX (2B, 5B, 1.5-5B; diffusers CogVideoXTransformer3DModel)"


# --------------------------------------------------------------------------------------------
# the backbone interface


def tiny_names() -> tuple[str, ...]:
    return tuple(TINY_VARIANTS)


def detect(folder: Path) -> bool:
    """A diffusers CogVideoX folder: ``transformer/config.json`` naming a CogVideoX transformer."""
    cfg = Path(folder) / "transformer" / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "CogVideoX" in str(json.loads(cfg.read_text()).get("_class_name", ""))
    except ValueError:
        return False


def owns(denoiser: nn.Module) -> bool:
    """A CogVideoX transformer (diffusers', or a patched / trainable copy of one)."""
    return type(denoiser).__name__.startswith("CogVideoX") or hasattr(denoiser, "transformer_blocks")


def load(name_or_path: str, dtype=None, device=None, seed: int = 0, **kw) -> "CogVideoXBackbone":
    """A tiny variant (:func:`build_tiny`) or a diffusers folder (:func:`load_cogvideox`) wrapped in
    :class:`CogVideoXBackbone`. The built-in ``mini``, ``mini``-layout folders and native single files load
    through :func:`dual_adapter.models.load_backbone` (the one place that resolves every model name).

    Raises:
        DualAdapterError: ``name_or_path`` is a built-in pretrained name; the errors of :func:`load_cogvideox`.
    """
    if name_or_path in BUILTIN_PRETRAINED:
        raise DualAdapterError(f"the built-in model {name_or_path!r} loads with dual_adapter.models.load_model or "
                               f"dual_adapter.models.load_backbone")
    if name_or_path in TINY_VARIANTS:
        return CogVideoXBackbone(build_tiny(name_or_path, seed=seed, device=check_device(device) or "cpu",
                                            dtype=dtype or "fp32"))
    return CogVideoXBackbone(load_cogvideox(name_or_path, dtype=dtype or "bf16", device=device, **kw))


def for_denoiser(denoiser: nn.Module, scheduler_config: dict | None = None) -> "CogVideoXBackbone":
    """A :class:`CogVideoXBackbone` for a bare transformer (no VAE / text encoder): structure, objective,
    noise scheduler (``scheduler_config``, default the released models')."""
    return CogVideoXBackbone(None, denoiser=denoiser, scheduler_config=scheduler_config)


class CogVideoXBackbone(VideoBackbone):
    """A :class:`CogVideoXBundle` (kept as :attr:`bundle`) seen through the interface; ``bundle`` may be None
    for a bare transformer (:func:`for_denoiser`), which then offers structure and objective only."""

    kind = KIND
    family = FAMILY
    latent_layout = "BFCHW"
    prediction_type = "v_prediction"
    motion_role = "joint"

    def __init__(self, bundle: CogVideoXBundle | None, *, denoiser: nn.Module | None = None,
                 scheduler_config: dict | None = None):
        self.bundle = bundle
        if bundle is not None:
            self.name, self.device, self.dtype = bundle.name, bundle.device, bundle.dtype
            self.denoiser = bundle.transformer
            self.vae, self.text_encoder, self.tokenizer = bundle.vae, bundle.text_encoder, bundle.tokenizer
            self.scheduler_config = bundle.scheduler_config
        else:
            self.denoiser = denoiser
            self.vae = self.text_encoder = self.tokenizer = None
            self.scheduler_config = dict(scheduler_config if scheduler_config is not None else DEFAULT_SCHEDULER_CONFIG)
            p = next(denoiser.parameters(), None) if denoiser is not None else None
            if p is not None:
                self.device, self.dtype = str(p.device), p.dtype

    def _need_bundle(self, what: str) -> CogVideoXBundle:
        if self.bundle is None:
            raise DualAdapterError(f"{what} needs the whole CogVideoX model (VAE, text encoder), not a bare transformer")
        return self.bundle

    # structure
    def blocks(self, denoiser: nn.Module | None = None) -> list[BlockInfo]:
        d = self.pick_denoiser(denoiser)
        return [BlockInfo(f"transformer_blocks.{i}", "joint", i, b, True) for i, b in enumerate(d.transformer_blocks)]

    def attention_modules(self, role: str, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        if check_role(role) != "joint":
            return {}
        return {f"{b.name}.attn1": b.module.attn1 for b in self.blocks(denoiser)}

    def text_entry_points(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        return self.attention_modules("joint", denoiser)

    def width(self, denoiser: nn.Module | None = None) -> int:
        return transformer_width(self.pick_denoiser(denoiser))

    def architecture(self, denoiser: nn.Module | None = None) -> dict:
        c = dict(self.pick_denoiser(denoiser).config)
        return {k: c.get(k) for k in ARCHITECTURE_KEYS}

    def fingerprint(self, denoiser: nn.Module | None = None) -> str:
        return config_fingerprint(self.pick_denoiser(denoiser))

    def time_patch(self, denoiser: nn.Module | None = None) -> int:
        return int(getattr(self.pick_denoiser(denoiser).config, "patch_size_t", None) or 1)

    def adapter_dims(self, denoiser: nn.Module | None = None) -> tuple[int, int, int]:
        """(width, ``num_layers``, ``time_embed_dim``): the StageBlender reads the blocks' own ``temb``."""
        c = self.pick_denoiser(denoiser).config
        return int(c.num_attention_heads) * int(c.attention_head_dim), int(c.num_layers), int(c.time_embed_dim)

    def adapted_block_forward(self, block, hooks, state, *args, **kwargs):
        return adapted_block_forward(block, hooks, *args, **kwargs)

    def pad_latent_frames(self, latents: torch.Tensor, denoiser: nn.Module | None = None) -> torch.Tensor:
        return _pad_time(latents, getattr(getattr(self.pick_denoiser(denoiser), "config", None), "patch_size_t", None))

    # text
    def encode_prompt(self, prompts: str | Sequence[str], on_long: str = "truncate") -> torch.Tensor:
        return encode_prompt(self._need_bundle("encode_prompt"),
                             list(prompts) if not isinstance(prompts, str) else prompts, on_long=on_long)

    @property
    def text_length(self) -> int:
        return int((self.denoiser).config.max_text_seq_length)

    # objective / schedulers
    def noise_scheduler(self):
        return make_noise_scheduler(self.scheduler_config)

    def make_scheduler(self, name: str = "dpm"):
        return make_scheduler(self.scheduler_config, name)

    def training_loss(self, denoiser, noise_scheduler, latents, text, **kw) -> torch.Tensor:
        net = self.pick_denoiser(denoiser)
        if kw.get("cond") is None:
            kw["cond"] = self.training_conditioning(latents, net)
        return training_loss(net, noise_scheduler, latents, text, **kw)

    def predict(self, latents, t, text, denoiser=None, cond=None):
        return transformer_forward(denoiser if denoiser is not None else self.denoiser, latents, text, t,
                                   None if cond is None else cond.concat)

    # image-to-video
    @property
    def image_to_video(self) -> bool:
        """CogVideoX-5B-I2V / 1.5-5B-I2V: the transformer takes twice the latent channels."""
        c = self.denoiser.config
        return int(c.in_channels) != int(c.out_channels or c.in_channels)

    def image_conditioning(self, image, num_frames, height, width):
        """See :func:`image_conditioning` (the image latents joined on the channels)."""
        return image_conditioning(self._need_bundle("image_conditioning"), image, num_frames, height, width)

    def training_conditioning(self, latents, denoiser=None):
        """The clip's first latent frame as the image's, then zeros (:func:`image_latent_frames`)."""
        d = self.pick_denoiser(denoiser)
        c = d.config
        if int(c.in_channels) == int(c.out_channels or c.in_channels):
            return None
        from ..base import ImageConditioning

        return ImageConditioning(concat=image_latent_frames(latents[:, :1], latents.shape[1], c.patch_size_t))

    def scheduler_step(self, scheduler, prediction, timesteps, i, latents, state=None, **kw):
        """As diffusers' ``CogVideoXPipeline`` steps: CogVideoXDPMScheduler also takes the previous step's x0
        prediction (``state``, its ``old_pred_original_sample``) and timestep; the latents keep their dtype."""
        from diffusers import CogVideoXDPMScheduler

        if isinstance(scheduler, CogVideoXDPMScheduler):
            return scheduler.step(prediction, state, timesteps[i], timesteps[i - 1] if i > 0 else None, latents,
                                  return_dict=False, **kw)
        return scheduler.step(prediction, timesteps[i], latents, return_dict=False, **kw)[0], None

    # VAE and sizes
    @property
    def default_size(self):
        return self._need_bundle("default_size").default_size

    @property
    def vae_scale(self) -> int:
        return self._need_bundle("vae_scale").vae_scale_spatial

    @property
    def latent_channels(self) -> int:
        c = self.denoiser.config
        return int(c.out_channels or c.in_channels)

    def latent_frames(self, num_frames: int) -> int:
        return latent_frames_for(self.bundle, num_frames)

    def frame_step(self) -> int:
        """Valid frame counts are ``frame_step * k + 1`` (4 on CogVideoX; the VAE compresses time by 4)."""
        return int(self._need_bundle("frame_step").vae_scale_temporal)

    def check_video_size(self, num_frames, height, width):
        check_video_size(self._need_bundle("check_video_size"), num_frames, height, width)

    def encode_frames(self, frames, **kw):
        return encode_frames(self._need_bundle("encode_frames"), frames, **kw)

    def decode_latents(self, latents, **kw):
        return decode_latents(self._need_bundle("decode_latents"), latents, **kw)

    def use(self, part: str):
        return self._need_bundle("use").use("transformer" if part == "denoiser" else part)

    def release(self, *parts: str) -> None:
        self._need_bundle("release").release(*("transformer" if p == "denoiser" else p for p in parts))

    @property
    def cpu_offload(self) -> bool:
        return bool(self.bundle is not None and self.bundle.cpu_offload)
