"""Small helpers shared by the node modules (conversions, validation, training mode)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.media import check_frame_values
from dual_adapter.patches import PatchedModel


def as_model(model, name: str = "model") -> PatchedModel:
    """Check a COGVIDEOX_MODEL input."""
    if not isinstance(model, PatchedModel):
        raise DualAdapterError(f"{name}: expected a COGVIDEOX_MODEL (from Load CogVideoX), got {type(model).__name__}")
    return model


def image_batch(image, name: str = "image", allow_empty: bool = False) -> torch.Tensor:
    """Check an IMAGE input ``[N, H, W, 3]`` 0..1 and return a float32 clone (inputs are never mutated).
    NaN / inf values and other ranges (0..255, -1..1) are refused (:func:`dual_adapter.media.check_frame_values`)."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise DualAdapterError(f"{name}: expected an IMAGE [N, H, W, 3] with values 0..1, got {shape}")
    if image.shape[0] == 0 and not allow_empty:
        raise DualAdapterError(f"{name}: the image batch is empty (0 images); connect at least one image")
    return check_frame_values(image[..., :3].detach().clone().float(), name)


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


def conditioning_embeds(cond, name: str = "conditioning", bundle=None) -> torch.Tensor:
    """Core CONDITIONING (``[[cond [B, L, D], {...}], ...]``) -> text embeddings ``[B, L, D]`` (the first entry).

    Raises:
        DualAdapterError: not a CONDITIONING, or a width other than the model's text width (e.g. a CLIP-L
            conditioning on CogVideoX, which needs T5-XXL: CLIPLoader type ``cogvideox``).
    """
    import logging

    ok = isinstance(cond, (list, tuple)) and len(cond) > 0 and isinstance(cond[0], (list, tuple)) and \
        len(cond[0]) >= 1 and torch.is_tensor(cond[0][0]) and cond[0][0].ndim == 3
    if not ok:
        raise DualAdapterError(f"{name}: expected a CONDITIONING from core CLIPTextEncode, got {type(cond).__name__}")
    e = cond[0][0]
    if len(cond) > 1:
        logging.getLogger(__name__).warning("%s: %d conditioning entries; only the first is used", name, len(cond))
    if bundle is not None:
        want = int(bundle.config.text_embed_dim)
        if e.shape[-1] != want:
            raise DualAdapterError(f"{name}: text embeddings are {e.shape[-1]}-wide, this CogVideoX takes {want} "
                                   f"(T5-XXL: load the text encoder with CLIPLoader type 'cogvideox')")
        if e.shape[1] != bundle.max_text_len:
            logging.getLogger(__name__).warning("%s: %d text tokens; the model was trained with %d", name,
                                                e.shape[1], bundle.max_text_len)
    return e.detach().clone()
