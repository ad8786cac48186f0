"""What a method needs from a video backbone (the interface every backbone module implements).

A method (TAP / AH motion LoRA, CustomTTT, ...) talks to a backbone only through
:class:`VideoBackbone`; it never names ``transformer_blocks``, ``attn1`` or ``down_blocks``
itself. One module per backbone implements it (``cogvideox.py``, ``unet3d.py``,
``animatediff.py``); :mod:`dual_adapter.backbones` finds them, so adding a backbone touches
one new module and nothing else.

The interface, in the terms of the issue that asked for it:

* **blocks** - :meth:`VideoBackbone.blocks`: the denoiser's blocks in forward order
  (:class:`BlockInfo`: name, stage ``down``/``mid``/``up``/``joint``, stage index, module);
* **attention modules by role** - :meth:`VideoBackbone.attention_modules` with a role of
  :data:`ROLES`: ``spatial`` (self-attention within a frame), ``temporal`` (attention across
  frames at one position), ``cross`` (attention to the text), ``joint`` (CogVideoX: one attention
  over text + all frames and positions);
* **where text enters** - :meth:`VideoBackbone.text_entry_points`: the modules that read the
  text embedding, and :meth:`VideoBackbone.encode_prompt`;
* **training objective and scheduler** - :attr:`VideoBackbone.prediction_type`
  (``epsilon`` / ``v_prediction``), :meth:`VideoBackbone.training_target`,
  :meth:`VideoBackbone.make_scheduler`, :meth:`VideoBackbone.noise_scheduler`;
* **latent layout and VAE** - :attr:`VideoBackbone.latent_layout` (``"BCFHW"`` or ``"BFCHW"``),
  :meth:`VideoBackbone.encode_frames`, :meth:`VideoBackbone.decode_latents`,
  :meth:`VideoBackbone.predict` (one denoiser call in the backbone's own layout);
* **frame-count rules** - :meth:`VideoBackbone.check_video_size`,
  :meth:`VideoBackbone.latent_frames`, :attr:`VideoBackbone.default_size`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError

__all__ = ["ROLES", "BlockInfo", "VideoBackbone", "check_role"]

#: Attention roles a backbone can report (see the module docstring).
ROLES = ("spatial", "temporal", "cross", "joint")


def check_role(role: str) -> str:
    """Return ``role`` or raise :class:`DualAdapterError` listing :data:`ROLES`."""
    if role not in ROLES:
        raise DualAdapterError(f"attention role {role!r} is not one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class BlockInfo:
    """One block of the denoiser, in forward order.

    Attributes:
        name: module name inside the denoiser (``down_blocks.2``, ``transformer_blocks.7``).
        stage: ``down`` / ``mid`` / ``up`` (U-Nets) or ``joint`` (transformers).
        index: index within its stage (``up_blocks.1`` -> 1).
        module: the block itself.
        has_text: whether text enters this block (a cross- or joint attention reads it).
    """

    name: str
    stage: str
    index: int
    module: nn.Module
    has_text: bool


class VideoBackbone:
    """A loaded text-to-video model seen through the roles a method needs.

    Subclasses set :attr:`kind` and implement every method below. Instances carry the parts
    (``denoiser``, ``vae``, ``text_encoder``, ``tokenizer``) and the execution ``device`` / ``dtype``.

    Layouts: video latents are in the VAE's *scaled* latent space. Frames (input and output of the
    VAE) are ``[F, H, W, 3]`` float in 0..1 (ComfyUI IMAGE). Text embeddings are ``[B, L, D_text]``.
    """

    #: short name used on the command line, in file metadata and in error messages
    kind: str = "?"
    #: human-readable family name, e.g. "ZeroScope / ModelScope T2V (UNet3D)"
    family: str = "?"
    #: ``"BCFHW"`` (U-Nets, ComfyUI LATENT) or ``"BFCHW"`` (CogVideoX transformer)
    latent_layout: str = "BCFHW"
    #: what the denoiser predicts: ``"epsilon"`` or ``"v_prediction"``
    prediction_type: str = "epsilon"

    name: str = "?"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    denoiser: nn.Module
    vae: Any
    text_encoder: Any
    tokenizer: Any

    # ---------------------------------------------------------------- structure
    def blocks(self, denoiser: nn.Module | None = None) -> list[BlockInfo]:
        """The denoiser's blocks in forward order (of ``denoiser``, default :attr:`denoiser`)."""
        raise NotImplementedError

    def attention_modules(self, role: str, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        """Module name -> attention module (diffusers ``Attention``) of ``role`` (see :data:`ROLES`)."""
        raise NotImplementedError

    def text_entry_points(self, denoiser: nn.Module | None = None) -> dict[str, nn.Module]:
        """Module name -> module that reads the text embedding (cross or joint attention)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- text
    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Text embeddings ``[B, L, D_text]`` of ``prompts`` on the execution device."""
        raise NotImplementedError

    # ---------------------------------------------------------------- objective / schedulers
    def noise_scheduler(self):
        """The training noise scheduler (``add_noise``, ``alphas_cumprod``, ``num_train_timesteps``)."""
        raise NotImplementedError

    def make_scheduler(self, name: str = "ddim"):
        """A sampling scheduler of this model's noise schedule (``ddim``, ``dpm``...)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output at ``x_t = add_noise(x0, noise, t)``."""
        if self.prediction_type == "epsilon":
            return noise
        return self.noise_scheduler().get_velocity(x0, noise, t)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                denoiser: nn.Module | None = None) -> torch.Tensor:
        """One denoiser call: ``latents`` in :attr:`latent_layout`, timesteps ``[B]``, text ``[B, L, D]``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- VAE and sizes
    @property
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at."""
        raise NotImplementedError

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` video."""
        raise NotImplementedError

    def check_video_size(self, num_frames: int, height: int, width: int) -> None:
        """Raise :class:`DualAdapterError` naming the input and valid values if the size does not fit."""
        raise NotImplementedError

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[F, H, W, 3]`` (0..1) -> scaled latents ``[1, C, F', h, w]`` (U-Nets) in :attr:`latent_layout`."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents in :attr:`latent_layout` -> frames ``[B, F, H, W, 3]`` (0..1)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, kind={self.kind!r}, device={self.device!r})"
