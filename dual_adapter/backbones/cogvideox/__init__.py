"""CogVideoX behind the :class:`~dual_adapter.backbones.base.VideoBackbone` interface: everything the
methods need to know about CogVideoX lives here.

Loading (a diffusers folder, the offline ``tiny`` variants; the shipped ``mini`` model and native single
files are resolved above, in :mod:`dual_adapter.models`), the
:class:`CogVideoXBundle` (what the nodes' ``VIDEO_MODEL`` carries for CogVideoX), T5 text encoding, frame-count
and size rules, the transformer call (RoPE), the schedulers and the training objective (v-prediction,
``1 / (1 - alphas_cumprod)`` weighted x0 error), the 3D VAE (encode / decode).

Layouts used throughout the library:
  * transformer latents: ``[B, F, C, h, w]`` (diffusers' CogVideoX layout), in the VAE's *scaled*
    latent space (``vae_latent * scaling_factor``);
  * ComfyUI LATENT: ``{"samples": [B, C, T, h, w]}``, the *unscaled* VAE latent (core ComfyUI's
    convention: ``samples = latents / scaling_factor``, see ``sampling.to_comfy_latent``);
  * text embeddings: ``[B, L, D_text]`` with ``L`` = the model's text length (226 on the real models).

Roles on CogVideoX: every ``transformer_blocks.{i}.attn1`` is a *joint* attention over the text
tokens and all visual tokens of all frames (so text enters every block through it); there is no
separate spatial, temporal or cross attention, and no skip connection (so no AH). Motion LoRAs (TAP)
target the joint attention.
"""
from __future__ import annotations

from .blocks import adapted_block_forward
from .bundle import CogVideoXBundle, DEFAULT_SCHEDULER_CONFIG, REQUIRED_PARTS
from .interface import CogVideoXBackbone, FAMILY, KIND, detect, for_denoiser, load, owns, tiny_names
from .loader import ModelInfo, inspect_model, load_cogvideox
from .loader import _read_json  # noqa: F401 (importable from dual_adapter.backbones.cogvideox)
from .objective import training_loss
from .schedulers import SCHEDULERS, make_noise_scheduler, make_scheduler
from .text import encode_prompt
from .tiny import BUILTIN_MODELS, BUILTIN_PRETRAINED, TINY_VARIANTS, build_tiny, build_tiny_tokenizer
from .transformer import (ARCHITECTURE_KEYS, check_video_size, config_fingerprint, image_conditioning, image_latent_frames,
                          latent_frames_for, rotary_embeddings, transformer_forward, transformer_width)
from .vae import decode_latents, encode_frames

__all__ = ["ARCHITECTURE_KEYS", "BUILTIN_MODELS", "BUILTIN_PRETRAINED", "CogVideoXBackbone", "CogVideoXBundle",
           "DEFAULT_SCHEDULER_CONFIG", "FAMILY", "KIND", "ModelInfo", "REQUIRED_PARTS", "SCHEDULERS", "TINY_VARIANTS",
           "adapted_block_forward", "build_tiny", "build_tiny_tokenizer", "check_video_size", "config_fingerprint",
           "decode_latents", "detect", "encode_frames", "encode_prompt", "for_denoiser", "image_conditioning",
           "image_latent_frames", "inspect_model", "latent_frames_for", "load", "load_cogvideox",
           "make_noise_scheduler", "make_scheduler", "owns", "rotary_embeddings", "tiny_names", "training_loss",
           "transformer_forward", "transformer_width"]
