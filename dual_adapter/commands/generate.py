"""``python -m dual_adapter generate``: prompt -> video file.

Other command modules add patch options (``--dualreal``, ``--lora``...) by defining
``add_generate_options(parser)`` and ``generate_patches(args, bundle) -> list`` (and optionally
``check_generate_options(args)``, run before the model loads); this command collects them, so it
needs no edit when a method is added.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from ..errors import DualAdapterError
from ..seeds import seed_arg


def _patch_providers():
    from .. import commands

    mods = []
    for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if m.name.startswith("_") or m.name == "generate":
            continue
        mod = importlib.import_module(f"{commands.__name__}.{m.name}")
        if hasattr(mod, "add_generate_options") and hasattr(mod, "generate_patches"):
            mods.append(mod)
    return mods


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options every command that loads a model shares: --model, --dtype, --device, --cpu-offload."""
    p.add_argument("--model", default="tiny", help="'tiny' (built-in random model, CPU), 'tiny-5b', 'tiny-1.5', 'mini' (built-in "
                   "pretrained miniature model, CPU), or a "
                   "local diffusers CogVideoX folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/); "
                   "U-Nets: 'tiny-unet3d', 'tiny-animatediff', a ZeroScope/ModelScope or AnimateDiff folder; Wan: "
                   "'tiny-wan' or a diffusers Wan 2.1 / 2.2 text-to-video folder (docs/wan.md)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="weights dtype (default: bf16 for "
                   "real models, fp32 for tiny)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available; tiny: cpu)")
    p.add_argument("--cpu-offload", action="store_true", help="keep model parts on CPU until they run")
    p.add_argument("--transformer", default=None, metavar="FILE", help="a native ComfyUI single-file CogVideoX "
                   "transformer (models/diffusion_models/*.safetensors) used instead of --model's transformer/")


def preflight(args, frames: int | None = None, height: int | None = None, width: int | None = None):
    """Check ``--device`` and ``--model`` (its configs, no weights) before anything slow runs, and the video
    size when given (``None`` = the model's own). Returns the model's
    :class:`~dual_adapter.backbone.ModelInfo`, whose ``default_size`` fills in sizes left unset.

    Raises:
        DualAdapterError: see :func:`~dual_adapter.backbone.check_device`,
            :func:`~dual_adapter.backbone.inspect_model`, :func:`~dual_adapter.backbone.check_video_size`.
    """
    from ..backbone import check_device, check_video_size, inspect_model

    check_device(args.device, "--device")
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
    return None if kind in ("cogvideox", "unet3d", "animatediff") else backbone_modules()[kind]


def load_bundle(args):
    from ..backbone import load_model

    mod = _other_backbone(args)
    if mod is not None:
        return mod.load(args.model, dtype=args.dtype, device=args.device,
                        cpu_offload=bool(getattr(args, "cpu_offload", False)))

    # load_model refuses --transformer with a built-in or mini model and ignores --cpu-offload there
    kw = {"cpu_offload": bool(getattr(args, "cpu_offload", False))}
    if getattr(args, "transformer", None):
        kw["transformer_file"] = args.transformer
    return load_model(args.model, dtype=args.dtype, device=args.device, **kw)


from ..progress import TextProgress as _TextProgress  # noqa: E402  (the one progress format; old name kept)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt (optionally with adapters / LoRAs)",
                       description="Generate a video with CogVideoX and write it as MP4 (or GIF/WEBP by extension).")
    add_model_options(p)
    p.add_argument("--prompt", required=True, help="the text prompt")
    p.add_argument("--negative-prompt", default="", help="negative prompt (used when --cfg > 1)")
    p.add_argument("--frames", type=int, default=None, help="frames, 4k+1 (default: the model's: 49, tiny 9)")
    p.add_argument("--height", type=int, default=None, help="pixels, multiple of 16 (default 480, tiny 64)")
    p.add_argument("--width", type=int, default=None, help="pixels, multiple of 16 (default 720, tiny 96)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--cfg", type=float, default=6.0, help="guidance scale (default 6)")
    p.add_argument("--seed", type=seed_arg, default=0, help="noise seed (default 0)")
    p.add_argument("--scheduler", default="dpm", choices=["dpm", "ddim", "unipc", "euler"],
                   help="CogVideoX DPM (default) or DDIM; on Wan: unipc (Wan's own, the default; dpm means it) or "
                   "euler (flow Euler; ddim means it)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written video (default 8)")
    p.add_argument("--out", required=True, help="output video (.mp4, .gif or .webp); never overwritten")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    for mod in _patch_providers():
        mod.add_generate_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import media, sampling
    from ..backbones import as_backbone

    from .unet import _is_unet, run_generate_unet

    if _is_unet(args):  # ZeroScope / ModelScope UNet3D, AnimateDiff (commands/unet.py)
        return run_generate_unet(args)
    out = Path(args.out)
    if out.exists():
        raise DualAdapterError(f"--out {str(out)!r} already exists; choose another file name")
    if out.suffix.lower() not in (".mp4", ".gif", ".webp"):
        raise DualAdapterError(f"--out {str(out)!r}: expected a .mp4, .gif or .webp file name")
    preflight(args, args.frames, args.height, args.width)
    for mod in _patch_providers():  # check patch options (files, strengths) before the model loads
        if hasattr(mod, "check_generate_options"):
            mod.check_generate_options(args)
    bundle = load_bundle(args)
    patches = []
    for mod in _patch_providers():
        patches += list(mod.generate_patches(args, bundle) or [])
    bb = as_backbone(bundle)
    pos = bb.encode_prompt(args.prompt)
    neg = bb.encode_prompt(args.negative_prompt)
    lat = sampling.sample(bundle, pos, neg, num_frames=args.frames, height=args.height, width=args.width,
                          steps=args.steps, cfg=args.cfg, seed=args.seed, scheduler=args.scheduler, patches=patches,
                          callback=_TextProgress("sampling", args.quiet))
    frames = sampling.decode_latents(bundle, lat)[0]
    path = media.write_video(frames, out, fps=args.fps)
    print(f"wrote {path} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]})")
    return 0
