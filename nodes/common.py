"""Small helpers shared by the node modules (conversions, validation, training mode)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import PatchedModel


def as_model(model, name: str = "model") -> PatchedModel:
    """Check a COGVIDEOX_MODEL input."""
    if not isinstance(model, PatchedModel):
        raise DualAdapterError(f"{name}: expected a COGVIDEOX_MODEL (from Load CogVideoX), got {type(model).__name__}")
    return model


def image_batch(image, name: str = "image", allow_empty: bool = False) -> torch.Tensor:
    """Check an IMAGE input ``[N, H, W, 3]`` 0..1 and return a float32 clone (inputs are never mutated)."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise DualAdapterError(f"{name}: expected an IMAGE [N, H, W, 3] with values 0..1, got {shape}")
    if image.shape[0] == 0 and not allow_empty:
        raise DualAdapterError(f"{name}: the image batch is empty (0 images); connect at least one image")
    return image[..., :3].detach().clone().float()


@contextlib.contextmanager
def training_mode():
    """ComfyUI runs nodes under ``torch.inference_mode()``; training needs autograd back."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def unique_output(prefix: str, ext: str, what: str = "filename_prefix") -> Path:
    """A new ``output/<prefix>_NNNNN_.<ext>`` path that does not exist yet, inside the output folder
    (the bridge's write policy: absolute prefixes and ``..`` are refused)."""
    from . import bridge

    return bridge.output_path(prefix, ext, what=what)
