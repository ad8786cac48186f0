"""Compatibility layer: the CogVideoX code moved to :mod:`dual_adapter.backbones.cogvideox` (the CogVideoX
backbone module) and the dtype / device helpers to :mod:`dual_adapter.backbones.base`.

The names below stay importable from here for older code, nodes and scripts; new method code reaches a
model through :class:`~dual_adapter.backbones.base.VideoBackbone` (:func:`dual_adapter.backbones.as_backbone`,
:func:`dual_adapter.backbones.backbone_for`) instead.
"""
from __future__ import annotations

from .backbones.base import check_device, parse_dtype
from .backbones.cogvideox import (BUILTIN_MODELS, BUILTIN_PRETRAINED, DEFAULT_SCHEDULER_CONFIG, REQUIRED_PARTS,
                                  SCHEDULERS, TINY_VARIANTS, CogVideoXBundle, ModelInfo, build_tiny,
                                  build_tiny_tokenizer, check_video_size, config_fingerprint, encode_prompt,
                                  inspect_model, latent_frames_for, load_cogvideox, load_model, rotary_embeddings,
                                  transformer_forward, transformer_width)

__all__ = [
    "CogVideoXBundle",
    "TINY_VARIANTS",
    "BUILTIN_PRETRAINED",
    "BUILTIN_MODELS",
    "build_tiny",
    "build_tiny_tokenizer",
    "load_cogvideox",
    "load_model",
    "encode_prompt",
    "config_fingerprint",
    "check_video_size",
    "latent_frames_for",
    "rotary_embeddings",
    "transformer_forward",
    "parse_dtype",
    "check_device",
    "ModelInfo",
    "inspect_model",
    "DEFAULT_SCHEDULER_CONFIG",
    "REQUIRED_PARTS",
    "SCHEDULERS",
    "transformer_width",
]
