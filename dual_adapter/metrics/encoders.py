"""The encoders the metrics use, loaded **offline** from local files only.

=========  =================================================  ======================================
kind       what to put there                                   default name (in a search folder)
=========  =================================================  ======================================
``clip``   a transformers CLIP folder (``config.json``,       ``clip-vit-base-patch32/`` (a copy of
           ``model.safetensors``, tokenizer files,             ``openai/clip-vit-base-patch32``)
           ``preprocessor_config.json``)
``dino``   a transformers ViT folder of DINO (``config.json``, ``dino-vits16/`` (a copy of
           ``model.safetensors``, ``preprocessor_config.json``) ``facebook/dino-vits16``)
``raft``   a torchvision RAFT-large state dict (``.pth`` read  ``raft_large_C_T_SKHT_V2-ff5fadd5.pth``
           with ``torch.load(weights_only=True)``, or         (torchvision ``Raft_Large_Weights``);
           ``.safetensors``)                                   see :data:`RAFT_FILES` for the others
=========  =================================================  ======================================

Search folders (:func:`default_search_dirs`): ``$DUAL_ADAPTER_MODELS/metrics`` and
``$DUAL_ADAPTER_MODELS/clip_vision`` (``DUAL_ADAPTER_MODELS`` defaults to ``./models``); inside
ComfyUI the nodes pass ``ComfyUI/models/metrics`` and ``ComfyUI/models/clip_vision``. Nothing is
ever downloaded: a missing file raises :class:`~dual_adapter.errors.DualAdapterError` naming the
file expected and where to put it.

Images are preprocessed in torch following the folder's ``preprocessor_config.json`` (resize,
optional centre crop, normalisation), which matches the transformers image processors up to
resampling round-off.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import DualAdapterError
from .definitions import Callback, _noop

__all__ = [
    "DEFAULT_NAMES",
    "RAFT_FILES",
    "default_device",
    "default_search_dirs",
    "locate",
    "ImagePreprocess",
    "ClipEncoder",
    "DinoEncoder",
    "RaftFlow",
]

#: default file/folder name searched for each kind
DEFAULT_NAMES = {
    "clip": "clip-vit-base-patch32",
    "dino": "dino-vits16",
    "raft": "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
}
#: RAFT-large files accepted, in the order they are searched. ``raft_large_C_T_V1`` is
#: torchvision's port of the original ``raft-things.pth`` that VBench uses; the others are
#: torchvision's own trainings (``C_T_SKHT_V2`` is the documented default).
RAFT_FILES = (
    "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
    "raft_large_C_T_V1-22a6c225.pth",
    "raft_large_C_T_V2-1bb1363a.pth",
    "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
    "raft_large.safetensors",
)
_WHAT = {
    "clip": (
        "CLIP",
        "a transformers CLIP folder (config.json, model.safetensors, tokenizer.json or vocab.json + "
        "merges.txt, preprocessor_config.json), e.g. a copy of openai/clip-vit-base-patch32",
    ),
    "dino": (
        "DINO",
        "a transformers ViT folder of DINO ViT-S/16 (config.json, model.safetensors, "
        "preprocessor_config.json), e.g. a copy of facebook/dino-vits16",
    ),
    "raft": (
        "RAFT-large",
        "torchvision's RAFT-large state dict raft_large_C_T_SKHT_V2-ff5fadd5.pth (from "
        "torchvision.models.optical_flow.Raft_Large_Weights; raft_large_C_T_V1-22a6c225.pth, the port of "
        "the raft-things weights VBench uses, is accepted too)",
    ),
}

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_search_dirs() -> list[Path]:
    """``$DUAL_ADAPTER_MODELS/metrics`` and ``$DUAL_ADAPTER_MODELS/clip_vision`` (default ``./models``)."""
    root = Path(os.environ.get("DUAL_ADAPTER_MODELS", "models"))
    return [root / "metrics", root / "clip_vision"]


def locate(kind: str, name: str | os.PathLike | None = None, search_dirs: Sequence[os.PathLike] | None = None) -> Path:
    """Find the weights of ``kind`` (``"clip"``, ``"dino"``, ``"raft"``).

    Args:
        name: an existing path (file or folder), or a name looked up inside ``search_dirs``;
            ``None`` = :data:`DEFAULT_NAMES` (for RAFT: every name in :data:`RAFT_FILES`).
        search_dirs: folders to search; ``None`` = :func:`default_search_dirs`.

    Returns:
        the path (a folder for CLIP/DINO, a file for RAFT).

    Raises:
        DualAdapterError: nothing found; the message names the file expected and where to put it.
    """
    if kind not in _WHAT:
        raise DualAdapterError(f"unknown encoder kind {kind!r}; expected one of {sorted(_WHAT)}")
    dirs = [Path(d) for d in (search_dirs if search_dirs is not None else default_search_dirs())]
    label, what = _WHAT[kind]
    names: list[str]
    if name is not None and str(name).strip():
        p = Path(name).expanduser()
        if p.exists():
            return _check_layout(kind, p)
        names = [str(name)]
    else:
        names = list(RAFT_FILES) if kind == "raft" else [DEFAULT_NAMES[kind]]
    for n in names:
        for d in dirs:
            if (d / n).exists():
                return _check_layout(kind, d / n)
    if kind == "raft" and (name is None or not str(name).strip()):
        for d in dirs:
            if d.is_dir():
                hits = sorted(p for p in d.glob("raft_large*") if p.suffix in (".pth", ".pt", ".safetensors"))
                if hits:
                    return hits[0]
    where = ", ".join(str(d) for d in dirs) or "(no search folder)"
    first = names[0]
    target = dirs[0] / first if dirs else Path(first)
    raise DualAdapterError(
        f"{label} weights not found: looked for {first!r} in {where}. Put {what} at {str(target)!r} "
        f"(or pass its path explicitly). Nothing is downloaded automatically."
    )


def _check_layout(kind: str, p: Path) -> Path:
    label, what = _WHAT[kind]
    if kind in ("clip", "dino"):
        if not p.is_dir() or not (p / "config.json").is_file():
            raise DualAdapterError(f"{label} path {str(p)!r} is not a transformers model folder with config.json; expected {what}")
    else:
        if not p.is_file():
            raise DualAdapterError(f"{label} path {str(p)!r} is not a file; expected {what}")
    return p


# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------
@dataclass
class ImagePreprocess:
    """Resize / centre-crop / normalise images in torch, like a transformers image processor.

    ``shortest_edge`` (resize the short side, keep aspect) or ``size`` ``(h, w)`` (exact resize);
    then an optional ``crop`` ``(h, w)`` centre crop; ``mode`` is ``"bicubic"`` or ``"bilinear"``.
    """

    shortest_edge: int | None = None
    size: tuple | None = (224, 224)
    crop: tuple | None = None
    mean: tuple = _IMAGENET_MEAN
    std: tuple = _IMAGENET_STD
    mode: str = "bilinear"
    normalize: bool = True
    antialias: bool = True

    @classmethod
    def from_folder(cls, folder: Path, default: "ImagePreprocess") -> "ImagePreprocess":
        """Read ``preprocessor_config.json`` in ``folder``; fields it lacks come from ``default``."""
        f = Path(folder) / "preprocessor_config.json"
        if not f.is_file():
            return default
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise DualAdapterError(f"{str(f)!r} is not valid JSON: {e}") from None
        out = ImagePreprocess(**{k: getattr(default, k) for k in default.__dataclass_fields__})
        if cfg.get("do_resize", True) and "size" in cfg:
            s = cfg["size"]
            if isinstance(s, int):
                out.shortest_edge, out.size = s, None
            elif isinstance(s, dict) and "shortest_edge" in s:
                out.shortest_edge, out.size = int(s["shortest_edge"]), None
            elif isinstance(s, dict) and "height" in s:
                out.shortest_edge, out.size = None, (int(s["height"]), int(s["width"]))
        elif not cfg.get("do_resize", True):
            out.shortest_edge, out.size = None, None
        if cfg.get("do_center_crop", False) and "crop_size" in cfg:
            c = cfg["crop_size"]
            out.crop = (c, c) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        elif "do_center_crop" in cfg and not cfg["do_center_crop"]:
            out.crop = None
        if "image_mean" in cfg:
            out.mean = tuple(cfg["image_mean"])
        if "image_std" in cfg:
            out.std = tuple(cfg["image_std"])
        if "do_normalize" in cfg:
            out.normalize = bool(cfg["do_normalize"])
        rs = cfg.get("resample")
        if rs in (2, 3):
            out.mode = "bilinear" if rs == 2 else "bicubic"
        return out

    def __call__(self, images) -> torch.Tensor:
        """``[N, H, W, 3]`` float 0..1 (or a list of ``[H, W, 3]`` of any sizes) -> ``[N, 3, h, w]``."""
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            groups = [images]
        else:
            groups = [im[None] if im.ndim == 3 else im for im in images]
        out = [self._one(g) for g in groups]
        return torch.cat(out, 0)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise DualAdapterError(f"images must be [N, H, W, 3] (ComfyUI IMAGE layout), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        x = x.to(torch.float32).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        if self.shortest_edge:
            s = self.shortest_edge
            if h <= w:
                nh, nw = s, int(s * w / h)
            else:
                nh, nw = int(s * h / w), s
            x = self._resize(x, nh, nw)
        elif self.size:
            x = self._resize(x, *self.size)
        if self.crop:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            if h < ch or w < cw:  # like transformers: pad with zeros then crop
                ph, pw = max(ch - h, 0), max(cw - w, 0)
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2  # as transformers' center_crop
            x = x[..., top : top + ch, left : left + cw]
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def _resize(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (h, w):
            return x
        y = F.interpolate(x, size=(h, w), mode=self.mode, align_corners=False, antialias=self.antialias)
        return y.clamp(0.0, 1.0) if self.mode == "bicubic" else y


def _features(out) -> torch.Tensor:
    """transformers <5 returns a tensor from get_*_features, >=5 an output with ``pooler_output``."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield i, min(i + bs, n)


class _ImageEncoder:
    device: str
    dtype: torch.dtype
    preprocess: ImagePreprocess
    name: str = ""

    def _encode_pixels(self, pixels: torch.Tensor, vbench: bool = False) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    vbench_preprocess: ImagePreprocess | None = None

    def encode_images(self, images, batch_size: int = 16, callback: Callback | None = None) -> torch.Tensor:
        """Image features: ``[N, H, W, 3]`` float 0..1 (or a list of ``[H, W, 3]``) -> ``[N, D]``
        float32 on CPU (not normalised), preprocessed like the folder's image processor
        (DreamVideo's metrics). ``callback(step, total, info)`` after each batch."""
        return self._encode(images, batch_size, callback, self.preprocess, False)

    def encode_images_vbench(self, images, batch_size: int = 16, callback: Callback | None = None) -> torch.Tensor:
        """Like :meth:`encode_images` but with VBench's transform (``vbench/utils.py``): short side
        resized to the model's input size without antialiasing (CLIP: bicubic + centre crop; DINO:
        bilinear, no crop, position embeddings interpolated to the frame's aspect)."""
        return self._encode(images, batch_size, callback, self.vbench_preprocess or self.preprocess, True)

    def _encode(self, images, batch_size, callback, preprocess, vbench) -> torch.Tensor:
        cb = callback or _noop
        items = list(images) if not isinstance(images, torch.Tensor) else images
        if isinstance(items, torch.Tensor) and items.ndim == 3:
            items = items[None]
        n = len(items)
        if n == 0:
            raise DualAdapterError("no images to encode")
        total = math.ceil(n / batch_size)
        feats = []
        with torch.inference_mode():
            for k, (a, b) in enumerate(_batches(n, batch_size)):
                chunk = items[a:b]
                if isinstance(chunk, torch.Tensor):
                    chunk = chunk.to(self.device)
                else:
                    chunk = [c.to(self.device) for c in chunk]
                px = preprocess(chunk).to(self.device, self.dtype)
                feats.append(self._encode_pixels(px, vbench).to("cpu", torch.float32))
                cb(k + 1, total, {"encoder": self.name, "images": b})
        return torch.cat(feats, 0)


class ClipEncoder(_ImageEncoder):
    """CLIP image and text features (transformers ``CLIPModel`` + its tokenizer).

    Use :meth:`from_pretrained` with a local folder; :meth:`encode_images` /
    :meth:`encode_text` return the projected embeddings (``projection_dim`` wide) that CLIP-T,
    CLIP-I, T-Cons and VBench background consistency compare."""

    name = "clip"

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, device: str = "cpu", dtype=torch.float32):
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.device, self.dtype = device, dtype

    @classmethod
    def from_pretrained(cls, path, device: str | None = None, dtype: torch.dtype = torch.float32) -> "ClipEncoder":
        """Load a CLIP folder offline (``local_files_only``). Raises DualAdapterError when files are missing."""
        from transformers import AutoTokenizer, CLIPModel

        path = _check_layout("clip", Path(path))
        device = device or default_device()
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
        except Exception as e:
            raise DualAdapterError(f"could not load CLIP from {str(path)!r}: {e}. Expected {_WHAT['clip'][1]}") from None
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            raise DualAdapterError(
                f"could not load the CLIP tokenizer from {str(path)!r} (tokenizer.json, or vocab.json + merges.txt, "
                f"and tokenizer_config.json expected; needed for CLIP-T): {e}"
            ) from None
        model = model.to(device).eval()
        vis = model.config.vision_config.image_size
        default = ImagePreprocess(shortest_edge=vis, size=None, crop=(vis, vis), mean=_CLIP_MEAN, std=_CLIP_STD, mode="bicubic")
        enc = cls(model, tok, ImagePreprocess.from_folder(path, default), device, dtype)
        enc.vbench_preprocess = ImagePreprocess(
            shortest_edge=vis, size=None, crop=(vis, vis), mean=_CLIP_MEAN, std=_CLIP_STD, mode="bicubic", antialias=False
        )
        return enc

    def _encode_pixels(self, pixels: torch.Tensor, vbench: bool = False) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Text features: a string or list of ``T`` strings -> ``[T, D]`` float32 on CPU.
        Prompts longer than the text tower's context (77 tokens for OpenAI CLIP) are truncated."""
        if isinstance(texts, str):
            texts = [texts]
        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < max_len:
            max_len = tml
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device) if "attention_mask" in enc else None,
            )
        return _features(out).to("cpu", torch.float32)


class DinoEncoder(_ImageEncoder):
    """DINO image features: the CLS token of the last layer (``last_hidden_state[:, 0]``, after
    the final LayerNorm), as DreamVideo's DINO-I and VBench's subject consistency use.

    DINO v1 ViT-S/16 (``facebook/dino-vits16``) is a transformers ``ViTModel``; other backbones
    that ``AutoModel`` loads and that return ``last_hidden_state`` (e.g. DINOv2) work too."""

    name = "dino"

    def __init__(self, model, preprocess: ImagePreprocess, device: str = "cpu", dtype=torch.float32):
        self.model, self.preprocess, self.device, self.dtype = model, preprocess, device, dtype
        self.input_size = int(getattr(model.config, "image_size", 224))

    @classmethod
    def from_pretrained(cls, path, device: str | None = None, dtype: torch.dtype = torch.float32) -> "DinoEncoder":
        """Load a DINO folder offline (``local_files_only``)."""
        from transformers import AutoConfig, AutoModel, ViTModel

        path = _check_layout("dino", Path(path))
        device = device or default_device()
        try:
            cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
            if cfg.model_type == "vit":
                model = ViTModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False, torch_dtype=dtype)
            else:
                model = AutoModel.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
        except Exception as e:
            raise DualAdapterError(f"could not load DINO from {str(path)!r}: {e}. Expected {_WHAT['dino'][1]}") from None
        model = model.to(device).eval()
        size = int(getattr(model.config, "image_size", 224))
        default = ImagePreprocess(shortest_edge=None, size=(size, size), crop=None, mode="bilinear")
        enc = cls(model, ImagePreprocess.from_folder(path, default), device, dtype)
        enc.vbench_preprocess = ImagePreprocess(shortest_edge=size, size=None, crop=None, mode="bilinear", antialias=False)
        return enc

    def _encode_pixels(self, pixels: torch.Tensor, vbench: bool = False) -> torch.Tensor:
        kw = {}
        if tuple(pixels.shape[-2:]) != (self.input_size, self.input_size) and getattr(self.model.config, "model_type", "") == "vit":
            kw["interpolate_pos_encoding"] = True
        return self.model(pixel_values=pixels, **kw).last_hidden_state[:, 0]


class RaftFlow:
    """Optical flow with torchvision's RAFT (``raft_large``; ``raft_small`` state dicts load too).

    ``flow = RaftFlow.from_file(path)(img1, img2)``: images ``[B, 3, H, W]`` float ``0..1`` ->
    flow ``[B, 2, H, W]`` in pixels, from ``img1`` to ``img2``. Like VBench's RAFT call, inputs
    are replicate-padded to a multiple of 8 (centred) and 20 refinement iterations are run; frames
    smaller than the 128 px torchvision's correlation pyramid needs are padded further. The flow
    is cropped back to ``H x W``.
    """

    name = "raft"

    def __init__(self, model, device: str = "cpu", iters: int = 20, min_size: int = 128):
        self.model, self.device, self.iters, self.min_size = model, device, int(iters), int(min_size)

    @classmethod
    def from_file(cls, path, device: str | None = None, iters: int = 20) -> "RaftFlow":
        """Load a RAFT state dict offline: ``.safetensors``, or ``.pth``/``.pt`` read with
        ``torch.load(weights_only=True)`` (no code is unpickled)."""
        from torchvision.models.optical_flow import raft_large, raft_small

        path = _check_layout("raft", Path(path))
        device = device or default_device()
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise DualAdapterError(f"could not read RAFT weights {str(path)!r}: {e}. Expected {_WHAT['raft'][1]}") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise DualAdapterError(f"RAFT weights {str(path)!r} do not hold a state dict")
        sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
        errors = []
        for build in (raft_large, raft_small):
            model = build(weights=None, progress=False)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                errors.append(str(e).splitlines()[0])
                continue
            return cls(model.to(device).eval(), device, iters)
        raise DualAdapterError(
            f"{str(path)!r} is not a torchvision RAFT state dict ({errors[0]}). The original princeton-vl "
            f"raft-things.pth uses other key names; use torchvision's raft_large_C_T_V1-22a6c225.pth (its port) "
            f"or raft_large_C_T_SKHT_V2-ff5fadd5.pth"
        )

    @torch.no_grad()
    def __call__(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        if img1.shape != img2.shape or img1.ndim != 4 or img1.shape[1] != 3:
            raise DualAdapterError(f"RAFT takes two [B, 3, H, W] images of one shape, got {tuple(img1.shape)} and {tuple(img2.shape)}")
        dev = img1.device
        h, w = img1.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        top, left = ph // 2, pw // 2
        pad = [left, pw - left, top, ph - top]
        H, W = h + ph, w + pw
        if H < self.min_size:
            pad[3] += self.min_size - H
        if W < self.min_size:
            pad[1] += self.min_size - W
        x = torch.cat([img1, img2], 0).to(self.device, torch.float32) * 2.0 - 1.0
        x = F.pad(x, pad, mode="replicate")
        a, b = x.chunk(2, 0)
        with torch.inference_mode():
            flow = self.model(a.contiguous(), b.contiguous(), num_flow_updates=self.iters)[-1]
        return flow[..., top : top + h, left : left + w].to(dev, torch.float32)
