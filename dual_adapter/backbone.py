"""Deprecated: import from :mod:`dual_adapter.models` (``load_model``, ``load_cogvideox``, ``inspect_model``),
:mod:`dual_adapter.backbones.cogvideox` (the CogVideoX bundle, tiny builder, text encoding, sizes, transformer
call) and :mod:`dual_adapter.backbones.base` (``check_device``, ``parse_dtype``) instead.

This thin re-export keeps scripts written against the older module working; it warns once on import
(``DeprecationWarning``). No module of the package imports it (``tests/project/test_layers.py`` checks that).
"""
from __future__ import annotations

import warnings

from .backbones.base import check_device, parse_dtype
from .backbones.cogvideox import (BUILTIN_MODELS, BUILTIN_PRETRAINED, DEFAULT_SCHEDULER_CONFIG, REQUIRED_PARTS,
                                  SCHEDULERS, TINY_VARIANTS, CogVideoXBundle, ModelInfo, build_tiny,
                                  build_tiny_tokenizer, check_video_size, config_fingerprint, encode_prompt,
                                  latent_frames_for, rotary_embeddings, transformer_forward, transformer_width)
from .models import inspect_model, load_cogvideox, load_model

warnings.warn("dual_adapter.backbone is deprecated: import dual_adapter.models (load_model, load_cogvideox, "
              "inspect_model), dual_adapter.backbones.cogvideox and dual_adapter.backbones.base instead",
              DeprecationWarning, stacklevel=2)

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
