"""Reference-image embeddings for DualReal's motion adapters (docs/dualreal.md).

The authors use OpenCLIP ViT-H/14 (laion2B): the projected image embedding, 1024-d. Here:

* :class:`ReferenceEncoder` loads a ``transformers`` ``CLIPVisionModelWithProjection`` from a local
  folder (e.g. ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` converted to transformers; ComfyUI's
  ``clip_vision_h`` is the same network) and maps images ``[N, H, W, 3]`` 0..1 to ``image_embeds
  [N, 1024]``;
* :func:`build_tiny_reference_encoder` is a random, offline encoder of the same interface for the
  tiny test model;
* :class:`PixelStatsEncoder` (``"mini"``) is a fixed stand-in for the ``mini`` world whose embedding does
  change with appearance (global colour and texture statistics, no learned weights);
* :func:`as_reference_embedding` accepts a precomputed embedding (tensor) or any object with an
  ``image_embeds`` attribute (ComfyUI's ``CLIP_VISION_OUTPUT``) and returns ``[B, 1, 1024]``;
* :func:`encode_reference` runs any of these encoders (or a callable, or ComfyUI's CLIP_VISION
  object, whose ``encode_image`` returns a CLIP_VISION_OUTPUT).

Without any encoder DualReal still trains and samples: the motion adapters' ``W_cond`` term is
skipped (docs/dualreal.md: without an embedding the W_cond term is skipped).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import DualAdapterError

__all__ = ["REFERENCE_DIM", "ReferenceEncoder", "PixelStatsEncoder", "build_tiny_reference_encoder",
           "load_reference_encoder", "load_clip_vision", "builtin_encoder_name", "as_reference_embedding",
           "encode_reference"]

REFERENCE_DIM = 1024
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def as_reference_embedding(x: Any, name: str = "reference embedding") -> torch.Tensor:
    """Normalise a reference embedding to ``[B, 1, 1024]`` float32 on CPU.

    Accepts a tensor ``[1024]``, ``[B, 1024]`` or ``[B, 1, 1024]``, or an object with an
    ``image_embeds`` attribute (ComfyUI CLIP_VISION_OUTPUT, transformers outputs).

    Raises:
        DualAdapterError: not a tensor, wrong rank, last dimension not 1024 (e.g. a ViT-L/14
            encoder, whose embedding is 768-d), or NaN/Inf values.
    """
    if not torch.is_tensor(x) and hasattr(x, "image_embeds"):
        x = x.image_embeds
    if not torch.is_tensor(x):
        raise DualAdapterError(f"{name} must be a tensor [B, 1024] or a CLIP vision output with .image_embeds, "
                               f"got {type(x).__name__}")
    x = x.detach()
    if x.ndim == 1:
        x = x.view(1, 1, -1)
    elif x.ndim == 2:
        x = x.unsqueeze(1)
    elif x.ndim != 3 or x.shape[1] != 1:
        raise DualAdapterError(f"{name} must have shape [1024], [B, 1024] or [B, 1, 1024], got {list(x.shape)}")
    if x.shape[-1] != REFERENCE_DIM:
        raise DualAdapterError(f"{name} is {x.shape[-1]}-d; DualReal needs the 1024-d projected image embedding "
                               f"of OpenCLIP ViT-H/14 (ComfyUI: clip_vision_h)")
    if x.shape[0] < 1:
        raise DualAdapterError(f"{name} is empty")
    if not bool(torch.isfinite(x).all()):
        raise DualAdapterError(f"{name} contains NaN/Inf values; encode the reference image again (a finite "
                               f"1024-d embedding is needed)")
    return x.to("cpu", torch.float32).clone()  # a fresh normal tensor (also out of inference mode)


class ReferenceEncoder:
    """``CLIPVisionModelWithProjection`` + CLIP preprocessing; ``__call__(images) -> [N, 1024]``.

    Args:
        model: a ``transformers.CLIPVisionModelWithProjection`` whose ``projection_dim`` is 1024.
        image_size: input size (square); default the model config's ``image_size`` (224).
        mean, std: normalisation (CLIP's by default).
        device: where to run (default: the model's device).
        name: shown in messages / stored in adapter metadata.

    Raises:
        DualAdapterError: the model's projection is not 1024-d.
    """

    def __init__(self, model, image_size: int | None = None, mean=_CLIP_MEAN, std=_CLIP_STD,
                 device: str | None = None, name: str = "clip-vision"):
        dim = int(getattr(model.config, "projection_dim", 0) or 0)
        if dim != REFERENCE_DIM:
            raise DualAdapterError(f"reference encoder {name!r} gives {dim}-d embeddings; DualReal needs the 1024-d "
                                   f"projected embedding of OpenCLIP ViT-H/14")
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(image_size or model.config.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.device = device
        self.name = name

    def preprocess(self, images: torch.Tensor, crop: bool = True) -> torch.Tensor:
        """``[N, H, W, 3]`` 0..1 -> ``[N, 3, S, S]`` normalised: shorter side resized to S (bicubic),
        centre crop, CLIP mean/std (what ``CLIPImageProcessor`` does). ``crop=False``: the whole image is
        resized to ``S x S`` instead (ComfyUI's CLIP Vision Encode with crop "none")."""
        if not torch.is_tensor(images) or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise DualAdapterError(f"reference image must be [H, W, 3] or [N, H, W, 3] (0..1), got "
                                   f"{list(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if images.ndim == 3:
            images = images.unsqueeze(0)
        x = images.float().permute(0, 3, 1, 2)
        S = self.image_size
        h, w = x.shape[-2:]
        if not crop:
            x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            return (x - self.mean) / self.std
        s = S / min(h, w)
        nh, nw = max(S, round(h * s)), max(S, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - S) // 2, (nw - S) // 2
        x = x[..., top: top + S, left: left + S]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, crop: bool = True) -> torch.Tensor:
        """Images ``[N, H, W, 3]`` (or ``[H, W, 3]``) 0..1 -> embeddings ``[N, 1024]`` float32 CPU."""
        p = next(self.model.parameters())
        dev = self.device or p.device
        x = self.preprocess(images, crop=crop).to(dev, p.dtype)
        out = self.model(pixel_values=x).image_embeds
        return out.float().cpu()

    def encode_image(self, images: torch.Tensor, crop: bool = True):
        """ComfyUI's CLIP_VISION interface: an output whose ``image_embeds`` is ``[N, 1024]`` float32 CPU."""
        from types import SimpleNamespace

        return SimpleNamespace(image_embeds=self(images, crop=crop))


def build_tiny_reference_encoder(seed: int = 0) -> ReferenceEncoder:
    """A random tiny CLIP vision encoder (32 px input, 1024-d projection) for tests and the tiny model."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=REFERENCE_DIM)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(cfg)
    return ReferenceEncoder(model, name="tiny")


class PixelStatsEncoder:
    """A fixed, training-free stand-in for the CLIP image embedding, for the ``mini`` world (``"mini"``).

    DualReal feeds the motion adapters the embedding of a clip frame so that they can attribute the clip's
    appearance to it rather than learn it (docs/dualreal.md, joint training), and at inference the embedding of a
    subject photo. That needs an embedding that differs with appearance; the random tiny CLIP's does not (on
    the mini world's star photos and orbit clips, cosine similarity 0.93-0.996 whatever the sprite, docs/results/miniworld.md). This encoder summarises an image's appearance globally, with no position: per RGB
    channel the mean, standard deviation and the 2, 10, 25, 50, 75, 90, 98% quantiles, and the mean absolute
    horizontal and vertical difference of neighbouring pixels (texture): 33 numbers, centred (``(f - 0.5) * 4``)
    and multiplied by a fixed Gaussian matrix ``[33, 1024] / sqrt(33)`` (seeded), so distances are kept.

    ``__call__(images [N, H, W, 3] or [H, W, 3], 0..1) -> [N, 1024]`` float32 CPU. Deterministic.

    Raises:
        DualAdapterError: images that are not ``[N, H, W, 3]`` / ``[H, W, 3]``.
    """

    name = "mini"

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(int(seed))
        self.projection = torch.randn(33, REFERENCE_DIM, generator=g) / 33 ** 0.5

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise DualAdapterError(f"reference image must be [H, W, 3] or [N, H, W, 3] (0..1), got "
                                   f"{list(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        img = images.float().cpu()
        if img.ndim == 3:
            img = img.unsqueeze(0)
        px = img.reshape(img.shape[0], -1, 3)
        qs = torch.tensor([0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])
        q = torch.quantile(px, qs, dim=1).permute(1, 0, 2).reshape(img.shape[0], -1)  # [N, 21]
        gx = (img[:, :, 1:] - img[:, :, :-1]).abs().mean((1, 2))  # [N, 3]
        gy = (img[:, 1:] - img[:, :-1]).abs().mean((1, 2))
        f = torch.cat([px.mean(1), px.std(1), q, gx, gy], 1)
        return ((f - 0.5) * 4) @ self.projection


def load_reference_encoder(name_or_path: str | os.PathLike, device: str | None = None,
                           dtype: str | torch.dtype = "fp32") -> "ReferenceEncoder | PixelStatsEncoder":
    """``"tiny"`` -> :func:`build_tiny_reference_encoder`; ``"mini"`` -> :class:`PixelStatsEncoder` (the
    ``mini`` world's stand-in); else a local transformers folder holding a
    ``CLIPVisionModelWithProjection`` (``config.json`` + ``*.safetensors``; ``preprocessor_config.json``
    is read for size / mean / std when present).

    Raises:
        DualAdapterError: the folder is missing or incomplete, or the projection is not 1024-d.
    """
    if str(name_or_path) == "tiny":
        return build_tiny_reference_encoder()
    if str(name_or_path) == "mini":
        return PixelStatsEncoder()
    from transformers import CLIPVisionModelWithProjection

    from .backbones.base import parse_dtype

    root = Path(name_or_path).expanduser()
    if not root.is_dir() or not (root / "config.json").exists():
        raise DualAdapterError(f"reference encoder folder {str(root)!r} does not exist or has no config.json "
                               f"(expected a transformers CLIPVisionModelWithProjection folder, OpenCLIP ViT-H/14)")
    if not any(root.glob("*.safetensors")):
        raise DualAdapterError(f"reference encoder folder {str(root)!r} has no *.safetensors weights")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(root, torch_dtype=parse_dtype(dtype),
                                                              use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DualAdapterError(f"could not load the reference encoder from {str(root)!r}: {e}") from None
    kw: dict = {}
    pp = root / "preprocessor_config.json"
    if pp.exists():
        cfg = json.loads(pp.read_text())
        if "image_mean" in cfg:
            kw["mean"] = tuple(cfg["image_mean"])
        if "image_std" in cfg:
            kw["std"] = tuple(cfg["image_std"])
        crop = cfg.get("crop_size")
        if isinstance(crop, dict):
            crop = crop.get("height")
        if crop:
            kw["image_size"] = int(crop)
    if device:
        model.to(device)
    return ReferenceEncoder(model, device=device, name=str(root), **kw)


def load_clip_vision(path: str | os.PathLike, device: str | None = None) -> ReferenceEncoder:
    """A CLIP vision encoder from ComfyUI's ``models/clip_vision`` (what the headless runner's CLIPVisionLoader
    stand-in loads): a single ``.safetensors`` file in transformers' key layout (``vision_model.*`` and
    ``visual_projection.weight``, as ComfyUI's ``clip_vision_h.safetensors``), or a transformers folder
    (:func:`load_reference_encoder`).

    A file holds no config: the sizes are read from the tensors (width, depth, MLP width, patch, image size,
    projection), with 16 attention heads (OpenCLIP ViT-H/14, ViT-L/14 and ViT-bigG/14 all have 16; 12 for a
    768-wide ViT-B) and GELU (quick-GELU for the 1024-wide OpenAI ViT-L/14), as ComfyUI's own configs.

    Returns:
        a :class:`ReferenceEncoder` (``encode_image(images [N, H, W, 3] 0..1, crop=True)`` returns an output
        whose ``image_embeds`` is ``[N, projection]``).

    Raises:
        DualAdapterError: no such file; an OpenCLIP-layout file (``visual.transformer.*``: convert it to the
            transformers layout first); a file that is not a CLIP vision model; a projection other than
            1024-d (DualReal needs ViT-H/14's).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .io import load_safetensors

    p = Path(path)
    if p.is_dir():
        return load_reference_encoder(p, device=device)
    tensors, _ = load_safetensors(p)
    what = f"CLIP vision file {str(p)!r}"
    if any(k.startswith("visual.transformer.") for k in tensors):
        raise DualAdapterError(f"{what} is in OpenCLIP's layout (visual.transformer.*); save it in transformers' "
                               f"layout (CLIPVisionModelWithProjection, e.g. ComfyUI's clip_vision_h.safetensors)")
    pre = "vision_model."
    need = [pre + "embeddings.patch_embedding.weight", pre + "embeddings.position_embedding.weight",
            pre + "encoder.layers.0.mlp.fc1.weight", "visual_projection.weight"]
    missing = [k for k in need if k not in tensors]
    if missing:
        raise DualAdapterError(f"{what} is not a CLIP vision model in transformers' layout: no {missing[:2]}")
    patch = tensors[need[0]]
    width, channels, ps = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[-1])
    grid = int(round((tensors[need[1]].shape[0] - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[3]) for k in tensors if k.startswith(pre + "encoder.layers."))
    heads = 12 if width == 768 else 16
    if width % heads:
        raise DualAdapterError(f"{what}: width {width} is not that of a known CLIP vision model (ViT-B/L/H/bigG)")
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=int(tensors[need[2]].shape[0]),
                           num_hidden_layers=layers, num_attention_heads=heads, num_channels=channels,
                           image_size=grid * ps, patch_size=ps, projection_dim=int(tensors[need[3]].shape[0]),
                           hidden_act="quick_gelu" if width == 1024 else "gelu", layer_norm_eps=1e-5)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cfg)
    tensors.pop(pre + "embeddings.position_ids", None)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise DualAdapterError(f"{what} does not match a CLIP vision model of its sizes: {detail}") from None
    model.vision_model.embeddings.register_buffer("position_ids", torch.arange(grid * grid + 1).unsqueeze(0),
                                                  persistent=False)
    model = model.float()
    if device:
        model.to(device)
    return ReferenceEncoder(model, device=device, name=str(p))


def builtin_encoder_name(model_name: str | None) -> str | None:
    """The reference encoder that goes with a built-in CPU-sized model, by the model's name (a bundle's
    ``name``, or what ``--model`` was given): ``"tiny"`` (the random tiny CLIP) for the random tiny models (``tiny-wan`` included),
    ``"mini"`` (:class:`PixelStatsEncoder`) for the pretrained ``mini`` (also a ``mini`` folder that
    ``miniworld pretrain`` wrote: it loads under the name ``"mini"``), else ``None``: a real CogVideoX needs
    the real encoder (OpenCLIP ViT-H/14), which is not built in. Pass the result to
    :func:`load_reference_encoder`. Used where no encoder is given: ``train-dualreal``, the demo, the
    Train DualReal and Apply DualReal nodes."""
    from .backbones.cogvideox import BUILTIN_PRETRAINED, TINY_VARIANTS
    from .backbones.wan import TINY_NAMES as WAN_TINY
    from .backbones.wan_a14b import TINY_NAMES as A14B_TINY

    name = str(model_name or "")
    if name in TINY_VARIANTS or name in WAN_TINY or name in A14B_TINY:
        return "tiny"
    if name in BUILTIN_PRETRAINED:
        return "mini"
    return None


def encode_reference(encoder: Any, images: torch.Tensor) -> torch.Tensor:
    """Embed images with ``encoder`` -> ``[N, 1024]`` float32 CPU.

    ``encoder`` may be a :class:`ReferenceEncoder`, a callable returning a tensor or an object with
    ``image_embeds``, or ComfyUI's CLIP_VISION (anything with ``encode_image(images)``).

    Raises:
        DualAdapterError: the encoder's embedding is not 1024-d.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if hasattr(encoder, "encode_image") and not isinstance(encoder, ReferenceEncoder):
        out = encoder.encode_image(images)
    elif callable(encoder):
        out = encoder(images)
    else:
        raise DualAdapterError(f"reference encoder must be callable or have encode_image(), got "
                               f"{type(encoder).__name__}")
    e = as_reference_embedding(out, "reference encoder output")
    return e[:, 0]
