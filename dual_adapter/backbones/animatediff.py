"""AnimateDiff (diffusers ``UNetMotionModel`` = an SD1.5-style ``UNet2DConditionModel`` + a
``MotionAdapter``) as a :class:`VideoBackbone`.

Each down / up layer is resnet -> spatial ``Transformer2DModel`` (self-attention + text
cross-attention) -> motion module (``AnimateDiffTransformer3D``, temporal self-attention); the
mid block has a motion module when the adapter has ``use_motion_mid_block``. ``AutoencoderKL``
per frame (8x), CLIP text encoder, epsilon prediction on the SD1.5 linear beta schedule.

Local folders: an SD1.5-style diffusers folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) plus a ``MotionAdapter`` folder (``config.json`` +
``diffusion_pytorch_model.safetensors``), given as ``BASE::ADAPTER``, or one folder whose
``motion_adapter/`` sub-folder holds the adapter, or a folder whose ``unet/`` already is a
``UNetMotionModel`` (a saved ``AnimateDiffPipeline``).

Built-in ``tiny-animatediff``: seeded random weights, offline, default 8 frames x 32 x 32 px.
This is the backbone CustomTTT was published on (docs/customttt.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DualAdapterError
from ..limits import check_config_files
from ._unet import (UNetVideoBackbone, as_dtype, build_tiny_text_and_vae, check_folder, default_device,
                    folder_class, load_parts)

KIND = "animatediff"
FAMILY = "AnimateDiff (SD1.5 U-Net + MotionAdapter)"

#: AnimateDiff's noise schedule (SD1.5 betas, "linear" as in the AnimateDiff inference configs)
ANIMATEDIFF_SCHEDULER = dict(
    _class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def tiny_names() -> tuple[str, ...]:
    return ("tiny-animatediff",)


def _split(name: str) -> tuple[Path, Path | None]:
    if "::" in name:
        a, b = name.split("::", 1)
        return Path(a), Path(b)
    p = Path(name)
    return p, (p / "motion_adapter") if (p / "motion_adapter").is_dir() else None


def detect(folder: Path) -> bool:
    """A ``UNetMotionModel`` folder, or an SD1.5 folder with a ``motion_adapter/`` sub-folder, or ``A::B``."""
    base, adapter = _split(str(folder))
    cls = folder_class(base, "unet")
    return cls == "UNetMotionModel" or (cls == "UNet2DConditionModel" and adapter is not None)


class AnimateDiffBackbone(UNetVideoBackbone):
    kind = KIND
    family = FAMILY
    temporal_container = "AnimateDiffTransformer3D"
    temporal_attr = "motion_modules"
    repeat_text_per_frame = True  # UNetMotionModel expects the text repeated per frame [B*F, L, D]

    @property
    def max_frames(self) -> int | None:
        return int(getattr(self.denoiser.config, "motion_max_seq_length", 0) or 0) or None


def owns(denoiser) -> bool:
    """A diffusers ``UNetMotionModel`` (or a copy of one)."""
    return type(denoiser).__name__ == "UNetMotionModel"


def for_denoiser(denoiser, scheduler_config: dict | None = None) -> AnimateDiffBackbone:
    """A :class:`AnimateDiffBackbone` for a bare U-Net (structure, objective, noise scheduler)."""
    from ._unet import denoiser_view

    return denoiser_view(AnimateDiffBackbone, denoiser, scheduler_config or ANIMATEDIFF_SCHEDULER)


def build_tiny(seed: int = 0, device: str = "cpu", dtype="fp32") -> AnimateDiffBackbone:
    """The built-in ``tiny-animatediff``: SD1.5-shaped U-Net (widths 8/16/32/32) + MotionAdapter, seeded."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from ..threads import small_model_threads

    small_model_threads(device)  # one CPU thread unless the user chose a count (docs/results/demo.md)
    with torch.random.fork_rng():
        tokenizer, text_encoder, vae = build_tiny_text_and_vae(seed)
        torch.manual_seed(seed + 2)
        unet2d = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16, 32, 32), layers_per_block=2,
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        torch.manual_seed(seed + 3)
        adapter = MotionAdapter(block_out_channels=(8, 16, 32, 32), motion_layers_per_block=2,
                                motion_norm_num_groups=4, motion_num_attention_heads=2, motion_max_seq_length=32,
                                use_motion_mid_block=True)
        # the adapter's output projections start at zero (identity motion modules); give them small
        # random values so the tiny model's motion modules do something
        for n, p in adapter.named_parameters():
            if "proj_out" in n:
                torch.nn.init.normal_(p, std=0.02)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    dt = as_dtype(dtype, "fp32")
    for m in (unet, vae, text_encoder):
        m.to(device=device) if dt == torch.float32 else m.to(device=device, dtype=dt)
    return AnimateDiffBackbone(unet, vae, text_encoder, tokenizer, ANIMATEDIFF_SCHEDULER, name="tiny-animatediff",
                               device=device, dtype=dt, sample_size=(8, 32, 32))


def load(name_or_path: str, dtype=None, device=None, seed: int = 0, **_) -> AnimateDiffBackbone:
    """``tiny-animatediff`` -> :func:`build_tiny`; else ``BASE::ADAPTER`` / a folder (see module docstring).

    Raises:
        DualAdapterError: missing parts, or a folder of another backbone.
    """
    if name_or_path in tiny_names():
        return build_tiny(seed=seed, device=device or "cpu", dtype=dtype or "fp32")
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    base, adapter = _split(name_or_path)
    check_folder(base, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), FAMILY)
    cls = folder_class(base, "unet")
    dev = default_device(device)
    dt = as_dtype(dtype, "fp16" if dev != "cpu" else "fp32")
    if cls == "UNetMotionModel":
        loader = lambda f: UNetMotionModel.from_pretrained(f / "unet")  # noqa: E731
    elif cls == "UNet2DConditionModel":
        if adapter is None or not (adapter / "config.json").is_file():
            raise DualAdapterError(f"{base}: an SD1.5 folder needs a MotionAdapter for {FAMILY}: give "
                                   f"'{base}::ADAPTER_FOLDER' or put the adapter in {base / 'motion_adapter'}")
        check_config_files(adapter.parent, (adapter.name,))
        loader = lambda f: UNetMotionModel.from_unet2d(  # noqa: E731
            UNet2DConditionModel.from_pretrained(f / "unet"), MotionAdapter.from_pretrained(adapter))
    else:
        raise DualAdapterError(f"{base}: unet/config.json names {cls!r}; {FAMILY} needs UNet2DConditionModel "
                               f"(+ MotionAdapter) or UNetMotionModel")
    unet, vae, te, tok, sched = load_parts(base, loader, dtype=dt, device=dev)
    return AnimateDiffBackbone(unet, vae, te, tok, sched, name=name_or_path, device=dev, dtype=dt,
                               sample_size=(16, 512, 512))
