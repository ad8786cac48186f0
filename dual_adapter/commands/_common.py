"""What the command modules share: the model options every model-loading command takes, the preflight
check before anything slow runs, and loading the CogVideoX model named by ``--model``.

The leading underscore keeps this module out of ``generate``'s option providers (``commands/generate.py``).
"""
from __future__ import annotations

import argparse

from .. import limits as lim

from ..dispatch import is_unet_name
from ..errors import DualAdapterError


def add_model_options(p: argparse.ArgumentParser, unets: bool = True) -> None:
    """Options every command that loads a model shares: --model, --dtype, --device, --cpu-offload, --threads.

    ``unets=False``: a command that runs CogVideoX only; ``--model``'s help then offers no U-Net."""
    p.add_argument("--model", default="tiny", help="'tiny' (built-in random model, CPU), 'tiny-5b', 'tiny-1.5', 'mini' (built-in "
                   "pretrained miniature model, CPU), or a "
                   "local diffusers CogVideoX folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/)" +
                   ("; U-Nets: 'tiny-unet3d', 'tiny-animatediff', a ZeroScope/ModelScope or AnimateDiff folder; Wan: "
                    "'tiny-wan' or a diffusers Wan 2.1 / 2.2 text-to-video folder (docs/wan.md)" if unets else ""))
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="weights dtype (default: bf16 for "
                   "real models, fp32 for tiny)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available; tiny: cpu)")
    p.add_argument("--cpu-offload", action="store_true", help="keep model parts on CPU until they run")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: 1 for the "
                   "tiny and mini models, which gain nothing from more and slow down on a busy machine; torch's "
                   "default for real models; OMP_NUM_THREADS or DUAL_ADAPTER_THREADS also choose)")
    p.add_argument("--transformer", default=None, metavar="FILE", help="a native ComfyUI single-file CogVideoX "
                   "transformer (models/diffusion_models/*.safetensors) used instead of --model's transformer/")


def preflight(args, frames: int | None = None, height: int | None = None, width: int | None = None):
    """Check ``--device`` and ``--model`` (its configs, no weights) before anything slow runs, and the video
    size when given (``None`` = the model's own). Returns the model's
    :class:`~dual_adapter.backbones.cogvideox.ModelInfo`, whose ``default_size`` fills in sizes left unset (None for
    a U-Net, whose size is checked once it is loaded).

    Raises:
        DualAdapterError: see :func:`~dual_adapter.backbones.base.check_device`,
            :func:`~dual_adapter.models.inspect_model`, :func:`~dual_adapter.backbones.cogvideox.check_video_size`.
    """
    from ..backbones.base import check_device
    from ..backbones.cogvideox import check_video_size
    from ..models import inspect_model

    check_device(args.device, "--device")
    if is_unet_name(args.model):  # the U-Nets: the size is checked against the loaded model (no config reader)
        if getattr(args, "transformer", None):
            raise DualAdapterError("--transformer: a native single-file transformer is read for CogVideoX only; "
                                   "drop --transformer")
        return None
    mod = _other_backbone(args)
    if mod is not None:  # e.g. Wan: its own config reader and size rules
        if getattr(args, "transformer", None):
            raise DualAdapterError(f"--transformer: a native single-file transformer is read for CogVideoX only, not "
                                   f"{mod.FAMILY}; drop --transformer")
        info = mod.inspect_model(args.model)
        f0, h0, w0 = info.default_size
        info.check_video_size(frames or f0, height or h0, width or w0)
        return info
    info = inspect_model(args.model, transformer_file=getattr(args, "transformer", None))
    f0, h0, w0 = info.default_size
    check_video_size(info, frames or f0, height or h0, width or w0)
    return info


def _other_backbone(args):
    """The backbone module of ``--model`` when it is a transformer backbone other than CogVideoX (Wan), else None
    (the U-Nets take their own command path)."""
    from ..backbones import backbone_modules, kind_of

    kind = kind_of(args.model)
    return None if kind == "cogvideox" or is_unet_name(args.model) else backbone_modules()[kind]


def load_bundle(args):
    """Load ``--model``: a CogVideoX name or folder through :func:`dual_adapter.models.load_model`, another
    transformer backbone (Wan) through its own module, a U-Net (ZeroScope / ModelScope, AnimateDiff) as its
    backbone (:func:`dual_adapter.backbones.load_backbone`)."""
    from ..models import load_model

    if is_unet_name(args.model):
        from ..backbones import load_backbone

        return load_backbone(args.model, dtype=args.dtype, device=args.device)
    mod = _other_backbone(args)
    if mod is not None:
        return mod.load(args.model, dtype=args.dtype, device=args.device,
                        cpu_offload=bool(getattr(args, "cpu_offload", False)))

    # load_model refuses --transformer with a built-in or mini model and ignores --cpu-offload there
    kw = {"cpu_offload": bool(getattr(args, "cpu_offload", False))}
    if getattr(args, "transformer", None):
        kw["transformer_file"] = args.transformer
    return load_model(args.model, dtype=args.dtype, device=args.device, **kw)


def add_size_options(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--frames``, ``--height``, ``--width``, bounded by :mod:`dual_adapter.limits` while parsing; ``None`` = the
    model's own size (49 x 480 x 720 on CogVideoX, 9 x 64 x 96 on tiny). ``what`` prefixes the help (e.g.
    ``"training "``)."""
    p.add_argument("--frames", type=lim.arg_int(1, lim.MAX_FRAMES), default=None,
                   help=f"{what}frames, 4k+1 (default: the model's: 49; tiny 9)")
    p.add_argument("--height", type=lim.arg_int(1, lim.MAX_SIDE), default=None,
                   help=f"{what}height in px, multiple of 16 (default: the model's: 480; tiny 64)")
    p.add_argument("--width", type=lim.arg_int(1, lim.MAX_SIDE), default=None,
                   help=f"{what}width in px, multiple of 16 (default: the model's: 720; tiny 96)")
