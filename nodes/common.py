"""Small helpers shared by the node modules (conversions, validation, training mode)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.media import check_frame_values
from dual_adapter.patches import PatchedModel


def as_model(model, name: str = "model") -> PatchedModel:
    """Check a COGVIDEOX_MODEL input (a CogVideoX or Wan model from Load CogVideoX)."""
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
    """A new, reserved ``output/<prefix>_NNNNN_.<ext>`` path inside the output folder (the bridge's write
    policy, docs/security.md: absolute prefixes and ``..`` are refused; write it with ``atomic_write``)."""
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
        from dual_adapter.backbones import as_backbone

        bb = as_backbone(bundle)
        cfg = bb.denoiser.config
        want = int(cfg.text_dim if bb.kind == "wan" else cfg.text_embed_dim)
        clip_type = "wan" if bb.kind == "wan" else "cogvideox"
        if e.shape[-1] != want:
            raise DualAdapterError(f"{name}: text embeddings are {e.shape[-1]}-wide, this {bb.name} takes {want} "
                                   f"(load the text encoder with CLIPLoader type {clip_type!r})")
        if e.shape[1] != bb.text_length:
            logging.getLogger(__name__).warning("%s: %d text tokens; the model was trained with %d", name,
                                                e.shape[1], bb.text_length)
    return e.detach().clone()


PREVIEW_TOOLTIP = ("Validation preview every N steps (and after the last): one short video (up to 13 frames, 10 "
                   "sampler steps, guidance 6, seed 0, so previews are comparable) sampled with the weights as they "
                   "are, shown on this node above the live loss curve and written as an animated WebP per preview "
                   "plus a contact sheet (previews.png) in a .previews folder beside the checkpoint. Each preview "
                   "costs about 20 forward passes of that short video and one VAE decode; the log reports the share "
                   "of the training time (docs/training.md has measured figures). 0 = off; -1 = auto: every 100 "
                   "steps on a real model, off on the built-in tiny / mini test models. The trained weights are the "
                   "same with or without previews.")


def preview_inputs() -> dict:
    """The optional ``preview_every`` / ``preview_prompt`` inputs every training node has."""
    return {
        "preview_every": ("INT", {"default": -1, "min": -1, "max": 100000, "tooltip": PREVIEW_TOOLTIP}),
        "preview_prompt": ("STRING", {"default": "", "multiline": False, "tooltip": "Prompt of the validation "
                           "previews. Empty = the run's prompt (Train DualReal: identity prompt, motion prompt; TTT "
                           "merge: the combined prompt)."}),
    }


def preview_options(bar, every: int, prompt: str, backbone, weights_path=None):
    """:class:`~dual_adapter.previews.PreviewOptions` for a node run (files in ``<weights_path stem>.previews/``,
    shown through ``bar.show_preview``), or None when previews are off."""
    from dual_adapter.previews import PreviewOptions, auto_every, preview_folder

    n = auto_every(int(every), backbone)
    if not n:
        return None
    return PreviewOptions(every=n, prompt=(prompt or "").strip() or None,
                          folder=preview_folder(weights_path) if weights_path is not None else None,
                          on_preview=bar.show_preview)


def run_inputs(default_name: str, checkpoint_every: int = 100) -> dict:
    """The optional ``name`` / ``resume`` / ``checkpoint_every`` inputs of the LoRA training nodes."""
    return {
        "name": ("STRING", {"default": default_name, "tooltip": "Run name: the checkpoint is "
                 "output/lora_checkpoints/<name>_NNNNN_.safetensors (a new counter per run; its state file and "
                 ".previews folder beside it). One file name, no folders."}),
        "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the newest interrupted run of this name (its "
                   "state file holds the weights, optimiser, schedule and step), so the result equals an "
                   "uninterrupted run's. 'steps' counts the whole run; the other settings must be the same."}),
        "checkpoint_every": ("INT", {"default": checkpoint_every, "min": 0, "max": 100000, "tooltip": "Rewrite the checkpoint "
                             "and its state file every N steps (0 = only at the end and when the run stops)."}),
    }


def run_checkpoint(name: str, default: str, resume: bool):
    """The run's checkpoint ``output/lora_checkpoints/<name>_NNNNN_.safetensors``: a new reserved counter, or with
    ``resume`` the newest one with a state file (:func:`dual_adapter.dualreal.counted_run_path`).

    Raises:
        DualAdapterError: a name with folders or too long; ``resume`` and no run of that name to continue.
    """
    from dual_adapter.dualreal import counted_run_path

    from . import bridge

    name = (name or "").strip() or default
    return counted_run_path(bridge.output_dir() / "lora_checkpoints", name, resume=bool(resume))


def kept_note(ckpt, name: str) -> str:
    """What a Cancel keeps and how to continue (:meth:`bridge.Progress.on_cancel`)."""
    return (f"{ckpt.name} in {ckpt.parent} (Load LoRA lists it); continue with resume = true, name {name!r} and the "
            f"same steps")


def finish_run(ckpt, completed: bool) -> None:
    """A finished run keeps its checkpoint (an autosave Load LoRA lists) and its previews; its optimiser state goes
    (``lora.finish_run_files``, shared with the CLI). A stopped run keeps everything, to resume."""
    from dual_adapter import lora as L

    if completed:
        L.finish_run_files(ckpt)
