"""CogVideoX behind the :class:`~dual_adapter.backbones.base.VideoBackbone` interface.

A thin delegate: loading, text encoding, the VAE and the transformer call stay in
:mod:`dual_adapter.backbone` and :mod:`dual_adapter.sampling` (the existing CogVideoX code, which
the DualReal, TAP and CustomTTT ports use directly today); this module only answers the
interface's questions about a :class:`~dual_adapter.backbone.CogVideoXBundle`.

Roles on CogVideoX: every ``transformer_blocks.{i}.attn1`` is a *joint* attention over the text
tokens and all visual tokens of all frames (so text enters every block through it); there is no
separate spatial, temporal or cross attention, and no skip connection (so no AH).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .base import BlockInfo, VideoBackbone, check_role

KIND = "cogvideox"
FAMILY = "CogVideoX (2B, 5B, 1.5-5B; diffusers CogVideoXTransformer3DModel)"


def tiny_names() -> tuple[str, ...]:
    from .. import backbone

    return tuple(backbone.TINY_VARIANTS)


def detect(folder: Path) -> bool:
    """A diffusers CogVideoX folder: ``transformer/config.json`` naming a CogVideoX transformer."""
    import json

    cfg = Path(folder) / "transformer" / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "CogVideoX" in str(json.loads(cfg.read_text()).get("_class_name", ""))
    except ValueError:
        return False


def load(name_or_path: str, dtype=None, device=None, **kw) -> "CogVideoXBackbone":
    """:func:`dual_adapter.backbone.load_model` wrapped in :class:`CogVideoXBackbone`."""
    from .. import backbone

    return CogVideoXBackbone(backbone.load_model(name_or_path, dtype=dtype, device=device, **kw))


class CogVideoXBackbone(VideoBackbone):
    """Wraps a :class:`~dual_adapter.backbone.CogVideoXBundle` (kept as :attr:`bundle`)."""

    kind = KIND
    family = FAMILY
    latent_layout = "BFCHW"
    prediction_type = "v_prediction"

    def __init__(self, bundle):
        self.bundle = bundle
        self.name, self.device, self.dtype = bundle.name, bundle.device, bundle.dtype
        self.denoiser = bundle.transformer
        self.vae, self.text_encoder, self.tokenizer = bundle.vae, bundle.text_encoder, bundle.tokenizer

    def blocks(self, denoiser: nn.Module | None = None) -> list[BlockInfo]:
        d = denoiser or self.denoiser
        return [BlockInfo(f"transformer_blocks.{i}", "joint", i, b, True) for i, b in enumerate(d.transformer_blocks)]

    def attention_modules(self, role: str, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        if check_role(role) != "joint":
            return {}
        return {f"{b.name}.attn1": b.module.attn1 for b in self.blocks(denoiser)}

    def text_entry_points(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        return self.attention_modules("joint", denoiser)

    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        from .. import backbone

        return backbone.encode_prompt(self.bundle, list(prompts) if not isinstance(prompts, str) else prompts)

    def noise_scheduler(self):
        from ..training import make_noise_scheduler

        return make_noise_scheduler(self.bundle)

    def make_scheduler(self, name: str = "dpm"):
        from ..sampling import make_scheduler

        return make_scheduler(self.bundle, name)

    def predict(self, latents, t, text, denoiser=None):
        from ..backbone import transformer_forward

        return transformer_forward(denoiser or self.denoiser, latents, text, t)

    @property
    def default_size(self):
        return self.bundle.default_size

    def latent_frames(self, num_frames: int) -> int:
        from ..backbone import latent_frames_for

        return latent_frames_for(self.bundle, num_frames)

    def check_video_size(self, num_frames, height, width):
        from ..backbone import check_video_size

        check_video_size(self.bundle, num_frames, height, width)

    def encode_frames(self, frames):
        from ..sampling import encode_frames

        return encode_frames(self.bundle, frames)

    def decode_latents(self, latents):
        from ..sampling import decode_latents

        return decode_latents(self.bundle, latents)
