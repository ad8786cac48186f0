"""ZeroScope / ModelScope text-to-video (diffusers ``UNet3DConditionModel``) as a :class:`VideoBackbone`.

Parts: ``UNet3DConditionModel`` (down blocks ``CrossAttnDownBlock3D`` x3 + ``DownBlock3D``; each layer
is resnet -> temporal conv -> spatial ``Transformer2DModel`` (self-attention + text cross-attention)
-> temporal ``TransformerTemporalModel``; plus ``transformer_in``, a temporal transformer after
``conv_in``), ``AutoencoderKL`` applied per frame (8x), CLIP text encoder (77 tokens), DDIM noise
schedule with epsilon prediction. A local diffusers folder (``zeroscope_v2_576w``,
``text-to-video-ms-1.7b``) holds ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.

Built-in ``tiny-unet3d``: the same architecture, seeded random weights, built offline in about a
second (block widths 8/16/32/32, 2 layers per block, CLIP width 32, VAE 2x); default video
8 frames x 32 x 32 px.

This is the backbone the SMA authors built TAP and AH on (docs/unet.md); AH lives in
:mod:`dual_adapter.unet_motion`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DualAdapterError
from ._unet import (UNetVideoBackbone, as_dtype, build_tiny_text_and_vae, check_folder, default_device,
                    folder_class, load_parts)

KIND = "unet3d"
FAMILY = "ZeroScope / ModelScope T2V (UNet3D)"
UNET_CLASS = "UNet3DConditionModel"

#: the noise schedule of zeroscope_v2_576w / text-to-video-ms-1.7b (their scheduler_config.json)
ZEROSCOPE_SCHEDULER = dict(
    _class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    prediction_type="epsilon",
)
#: the authors' training size (docs/unet.md: 16 frames at 384x384)
AUTHORS_SIZE = (16, 384, 384)


def tiny_names() -> tuple[str, ...]:
    return ("tiny-unet3d",)


def detect(folder: Path) -> bool:
    """A diffusers folder whose ``unet/config.json`` names ``UNet3DConditionModel``."""
    return folder_class(folder, "unet") == UNET_CLASS


class UNet3DBackbone(UNetVideoBackbone):
    kind = KIND
    family = FAMILY
    temporal_container = "TransformerTemporalModel"
    temporal_attr = "temp_attentions"
    repeat_text_per_frame = False  # UNet3DConditionModel repeats the text per frame itself


def owns(denoiser) -> bool:
    """A diffusers ``UNet3DConditionModel`` (or a copy of one)."""
    return type(denoiser).__name__ == "UNet3DConditionModel"


def for_denoiser(denoiser, scheduler_config: dict | None = None) -> UNet3DBackbone:
    """A :class:`UNet3DBackbone` for a bare U-Net (structure, objective, noise scheduler)."""
    from ._unet import denoiser_view

    return denoiser_view(UNet3DBackbone, denoiser, scheduler_config or ZEROSCOPE_SCHEDULER)


def build_tiny(seed: int = 0, device: str = "cpu", dtype="fp32") -> UNet3DBackbone:
    """The built-in ``tiny-unet3d``: seeded random UNet3D + VAE + CLIP text encoder, offline.

    Same ``seed`` -> bit-identical weights. Default video 8 frames x 32 x 32 px (latent 4 x 16 x 16).
    """
    from diffusers import UNet3DConditionModel

    from ..threads import small_model_threads

    small_model_threads(device)  # one CPU thread unless the user chose a count (docs/results/demo.md)
    with torch.random.fork_rng():
        tokenizer, text_encoder, vae = build_tiny_text_and_vae(seed)
        torch.manual_seed(seed + 2)
        unet = UNet3DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                    block_out_channels=(8, 16, 32, 32), layers_per_block=2, cross_attention_dim=32,
                                    attention_head_dim=4, norm_num_groups=4)
    dt = as_dtype(dtype, "fp32")
    for m in (unet, vae, text_encoder):
        m.to(device=device) if dt == torch.float32 else m.to(device=device, dtype=dt)
    return UNet3DBackbone(unet, vae, text_encoder, tokenizer, ZEROSCOPE_SCHEDULER, name="tiny-unet3d",
                          device=device, dtype=dt, sample_size=(8, 32, 32))


def load(name_or_path: str, dtype=None, device=None, seed: int = 0, **_) -> UNet3DBackbone:
    """``tiny-unet3d`` -> :func:`build_tiny`; otherwise a local diffusers ZeroScope / ModelScope folder.

    dtype defaults to fp16 for real models (as the authors ran them) and fp32 for the tiny one.

    Raises:
        DualAdapterError: the folder is incomplete or holds another backbone.
    """
    if name_or_path in tiny_names():
        return build_tiny(seed=seed, device=device or "cpu", dtype=dtype or "fp32")
    from diffusers import UNet3DConditionModel

    folder = Path(name_or_path)
    check_folder(folder, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), FAMILY)
    if not detect(folder):
        raise DualAdapterError(f"{folder}: unet/config.json names {folder_class(folder, 'unet')!r}, not "
                               f"{UNET_CLASS} ({FAMILY})")
    dev = default_device(device)
    dt = as_dtype(dtype, "fp16" if dev != "cpu" else "fp32")
    unet, vae, te, tok, sched = load_parts(folder, lambda f: UNet3DConditionModel.from_pretrained(f / "unet"),
                                           dtype=dt, device=dev)
    vs = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(unet.config.sample_size or 32) * vs
    default = (24, 320, 576) if "576" in folder.name else (16, size, size)
    return UNet3DBackbone(unet, vae, te, tok, sched, name=str(folder), device=dev, dtype=dt, sample_size=default)
