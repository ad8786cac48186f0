"""The :class:`CogVideoXBundle` (what the nodes' ``VIDEO_MODEL`` carries for CogVideoX: transformer, VAE, T5 encoder,
tokenizer and scheduler config of one loaded model), the parts a model folder must have and the released models'
scheduler config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..base import offloaded


REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

# Scheduler config of the released CogVideoX models (scheduler/scheduler_config.json of CogVideoX-2b);
# used for the tiny model and as the fallback when a folder's scheduler/ has no config.
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}


@dataclass
class CogVideoXBundle:
    """A loaded CogVideoX model: transformer, VAE, T5 encoder, tokenizer and scheduler config.

    Attributes:
        name: ``"tiny"`` or the folder it was loaded from.
        device: the execution device (``"cuda"``, ``"cpu"``...).
        dtype: weights dtype of the transformer (the VAE and T5 follow it except on CPU fp16).
        cpu_offload: keep parts on CPU and move each to ``device`` only while it runs.
        max_text_len: the text length the transformer was trained with (226 on real models).
    """

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    name: str = "tiny"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    cpu_offload: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.transformer.config

    @property
    def max_text_len(self) -> int:
        return int(self.transformer.config.max_text_seq_length)

    @property
    def vae_scale_spatial(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_scale_temporal(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.out_channels or self.transformer.config.in_channels)

    @property
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at: 49x480x720 on the real models."""
        c = self.transformer.config
        frames = int(c.sample_frames)
        return frames, int(c.sample_height) * self.vae_scale_spatial, int(c.sample_width) * self.vae_scale_spatial

    def use(self, part: str):
        """Context manager yielding ``self.<part>`` on the execution device (CPU-offload aware)."""
        return offloaded(getattr(self, part), self.device, self.cpu_offload)

    def release(self, *parts: str) -> None:
        """Move ``parts`` (e.g. ``"vae", "text_encoder"``) to CPU to free accelerator memory."""
        for p in parts:
            m = getattr(self, p, None)
            if m is not None and self.device != "cpu":
                m.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
