"""Stand-ins for the few ComfyUI *core* nodes that the pack's workflows use, for the headless runner
(``python -m dual_adapter run``). Inside ComfyUI the real core nodes run instead: this module is
not registered with ComfyUI (nodes/__init__.py skips it).

Implemented: LoadImage, SaveImage, PreviewImage, SaveAnimatedWEBP, SaveAnimatedPNG, PreviewAny,
CLIPVisionLoader, CLIPVisionEncode. Same input names, widget order and defaults as the core nodes,
so one API-format workflow runs in both places. Files are written to the output folder with
ComfyUI's ``prefix_NNNNN_.ext`` counter and never overwritten.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.io import atomic_write

from . import bridge
from .common import image_batch, unique_output


def _pil_frames(images):
    from PIL import Image

    x = image_batch(images, "images")
    arr = (x.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _ui_entry(path: Path, base: Path, typ: str = "output") -> dict:
    rel = path.relative_to(base)
    return {"filename": rel.name, "subfolder": str(rel.parent) if str(rel.parent) != "." else "", "type": typ}


class SaveImage:
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save_images(self, images, filename_prefix="ComfyUI"):
        out = []
        for im in _pil_frames(images):
            p = unique_output(filename_prefix, "png")
            atomic_write(p, lambda tmp, im=im: im.save(tmp, format="PNG"))
            out.append(_ui_entry(p, bridge.output_dir()))
        return {"ui": {"images": out}}


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def save_images(self, images, filename_prefix="preview"):
        return super().save_images(images, "temp/" + filename_prefix)


class SaveAnimatedWEBP:
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image/animation"
    METHODS = {"default": 4, "fastest": 0, "slowest": 6}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            "lossless": ("BOOLEAN", {"default": True}),
            "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
            "method": (list(cls.METHODS),),
        }}

    def save_images(self, images, filename_prefix="ComfyUI", fps=6.0, lossless=True, quality=80, method="default"):
        frames = _pil_frames(images)
        p = unique_output(filename_prefix, "webp")
        atomic_write(p, lambda tmp: frames[0].save(
            tmp, format="WEBP", save_all=True, append_images=frames[1:], duration=int(1000 / fps), lossless=lossless,
            quality=quality, method=self.METHODS.get(method, 4)))
        return {"ui": {"images": [_ui_entry(p, bridge.output_dir())], "animated": (True,)}}


class SaveAnimatedPNG:
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image/animation"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            "compress_level": ("INT", {"default": 4, "min": 0, "max": 9}),
        }}

    def save_images(self, images, filename_prefix="ComfyUI", fps=6.0, compress_level=4):
        frames = _pil_frames(images)
        p = unique_output(filename_prefix, "png")
        atomic_write(p, lambda tmp: frames[0].save(
            tmp, format="PNG", save_all=True, append_images=frames[1:], duration=int(1000 / fps),
            compress_level=compress_level))
        return {"ui": {"images": [_ui_entry(p, bridge.output_dir())], "animated": (True,)}}


class PreviewAny:
    RETURN_TYPES = ()
    FUNCTION = "main"
    OUTPUT_NODE = True
    CATEGORY = "utils"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    def main(self, source=None):
        if isinstance(source, str):
            v = source
        else:
            try:
                v = json.dumps(source, indent=4)
            except (TypeError, ValueError):
                v = str(source)
        print(v)
        return {"ui": {"text": (v,)}}


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        d = bridge.input_dir()
        files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.is_dir() else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        from dual_adapter.media import load_image

        x = load_image(bridge.resolve_input(image, "image")).unsqueeze(0)
        return (x, torch.zeros(1, x.shape[1], x.shape[2]))


class CLIPVisionLoader:
    """Loads a CLIP vision model (e.g. clip_vision_h.safetensors, transformers' key layout) from
    models/clip_vision with :func:`dual_adapter.reference.load_clip_vision`; its ``encode_image`` gives
    ``image_embeds [N, 1024]``. An OpenCLIP-layout or foreign file is refused with a message naming it."""

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "loaders"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (bridge.list_files("clip_vision"),)}}

    def load_clip(self, clip_name):
        try:
            from dual_adapter import reference
        except ImportError as e:  # pragma: no cover
            raise DualAdapterError(f"CLIPVisionLoader: the reference encoder is unavailable: {e}") from None
        return (reference.load_clip_vision(bridge.resolve("clip_vision", clip_name)),)


class CLIPVisionEncode:
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",), "crop": (["center", "none"],)}}

    def encode(self, clip_vision, image, crop="center"):
        return (clip_vision.encode_image(image, crop=crop == "center"),)


HEADLESS_CORE_NODES = {c.__name__: c for c in (SaveImage, PreviewImage, SaveAnimatedWEBP, SaveAnimatedPNG, PreviewAny,
                                                LoadImage, CLIPVisionLoader, CLIPVisionEncode)}
