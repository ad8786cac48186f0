"""``python -m dual_adapter generate``: prompt -> video file.

Other command modules add patch options (``--dualreal``, ``--lora``...) by defining
``add_generate_options(parser)`` and ``generate_patches(args, bundle) -> list`` (and optionally
``check_generate_options(args)``, run before the model loads); this command collects them, so it
needs no edit when a method is added.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError
from ..progress import TextProgress as _TextProgress  # the one progress format; old name kept
from ..seeds import seed_arg
from ._common import add_model_options, add_size_options, load_bundle, preflight


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


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt (optionally with adapters / LoRAs)",
                       description="Generate a video with CogVideoX and write it as MP4 (or GIF/WEBP by extension).")
    add_model_options(p)
    p.add_argument("--prompt", required=True, help="the text prompt")
    p.add_argument("--negative-prompt", default="", help="negative prompt (used when --cfg > 1)")
    add_size_options(p)
    p.add_argument("--steps", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=50,
                   help="denoising steps (default 50)")
    p.add_argument("--cfg", type=lim.arg_float(lim.MIN_CFG, lim.MAX_CFG), default=6.0,
                   help="guidance scale (default 6)")
    p.add_argument("--seed", type=seed_arg, default=0, help="noise seed (default 0)")
    p.add_argument("--scheduler", default="dpm", choices=["dpm", "ddim", "unipc", "euler"],
                   help="CogVideoX DPM (default) or DDIM; on Wan: unipc (Wan's own, the default; dpm means it) or "
                   "euler (flow Euler; ddim means it)")
    p.add_argument("--image", default=None, metavar="PHOTO",
                   help="image-to-video: the picture the video starts from (PNG / JPEG / WEBP; resized to cover the "
                   "video size, then centre-cropped); needs an image-to-video model (CogVideoX-5B-I2V, "
                   "CogVideoX1.5-5B-I2V, Wan 2.1 I2V, Wan 2.2 TI2V-5B; tiny-i2v, tiny-wan-i2v to try it)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written video (default 8)")
    p.add_argument("--out", required=True, help="output video (.mp4, .gif or .webp); never overwritten")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    for mod in _patch_providers():
        mod.add_generate_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import media, sampling
    from ..backbones import as_backbone

    from ..dispatch import is_unet_name
    from .unet import run_generate_unet

    if is_unet_name(args.model):  # ZeroScope / ModelScope UNet3D, AnimateDiff (commands/unet.py)
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
    image = media.load_image(args.image) if args.image else None  # read before the model loads
    bundle = load_bundle(args)
    patches = []
    for mod in _patch_providers():
        patches += list(mod.generate_patches(args, bundle) or [])
    bb = as_backbone(bundle)
    pos = bb.encode_prompt(args.prompt)
    neg = bb.encode_prompt(args.negative_prompt)
    lat = sampling.sample(bundle, pos, neg, num_frames=args.frames, height=args.height, width=args.width,
                          steps=args.steps, cfg=args.cfg, seed=args.seed, scheduler=args.scheduler, patches=patches,
                          callback=_TextProgress("sampling", args.quiet), image=image)
    frames = sampling.decode_latents(bundle, lat)[0]
    path = media.write_video(frames, out, fps=args.fps)
    print(f"wrote {path} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]})")
    return 0
