"""U-Net backbones on the command line (ZeroScope/ModelScope UNet3D, AnimateDiff).

``generate`` and ``train-lora`` hand over to :func:`run_generate_unet` / :func:`run_train_unet`
when ``--model`` is a U-Net (``tiny-unet3d``, ``tiny-animatediff`` or such a folder); this module
adds ``generate --ah`` (the SMA authors' appearance highway, UNet3D only) and the
``customttt-animatediff`` command (CustomTTT as published, docs/customttt.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError
from ._common import load_bundle


def _freeu(text: str):
    if str(text).lower() in ("none", "off", ""):
        return None
    try:
        vals = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise DualAdapterError(f"--ah-freeu {text!r}: expected S1,S2,B1,B2 (e.g. 1.1,1,1,1) or 'none'")
    return vals


# -------------------------------------------------------------------------------- generate hooks


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """``generate --ah`` / ``--ah-freeu`` (U-Net backbones)."""
    parser.add_argument("--ah", action="store_true",
                        help="appearance highway (SMA authors' inference: up block 1 takes its skips from the "
                             "spatial-attention outputs of down block 2); ZeroScope/ModelScope UNet3D only")
    parser.add_argument("--ah-freeu", default="1.1,1,1,1", metavar="S1,S2,B1,B2",
                        help="the FreeU-style scaling the authors' AH inference applies (default 1.1,1,1,1 as "
                             "their infer.py); 'none' = skip relocation only")


def generate_patches(args, bundle) -> list:
    """On CogVideoX, ``--ah`` is an error (no U-Net skips); U-Net runs build their patches themselves."""
    if getattr(args, "ah", False):
        raise DualAdapterError("--ah needs a U-Net with skip connections (--model tiny-unet3d or a ZeroScope / "
                               "ModelScope folder); CogVideoX has none, and no CogVideoX AH is made up")
    return []


def run_generate_unet(args) -> int:
    """``generate`` on a U-Net backbone: prompt (+ ``--lora`` motion LoRAs, ``--ah``) -> video file."""
    from .. import media, unet_motion, unet_sampling
    from ..lora import LoraPatch, parse_lora_arg
    from ..progress import TextProgress as _TextProgress

    out = Path(args.out)
    if out.exists():
        raise DualAdapterError(f"--out {str(out)!r} already exists; choose another file name")
    if out.suffix.lower() not in (".mp4", ".gif", ".webp"):
        raise DualAdapterError(f"--out {str(out)!r}: expected a .mp4, .gif or .webp file name")
    bb = load_bundle(args)
    patches = []
    for item in getattr(args, "lora", None) or []:
        path, strength = parse_lora_arg(item)
        lf = unet_motion.load_unet_lora(path, bb)
        patches.append(LoraPatch(lf, strength, name=Path(path).stem))
    if getattr(args, "ah", False):
        if bb.kind != "unet3d":
            raise DualAdapterError(f"--ah: the authors' AH is defined on the UNet3D (ZeroScope/ModelScope); "
                                   f"{bb.name!r} is {bb.family}")
        patches.append(unet_motion.AppearanceHighway(freeu=_freeu(args.ah_freeu)))
    pos = bb.encode_prompt(args.prompt)
    neg = bb.encode_prompt(args.negative_prompt)
    sched = "ddim" if args.scheduler not in ("ddim", "dpm") else args.scheduler
    lat = unet_sampling.sample(bb, pos, neg, num_frames=args.frames, height=args.height, width=args.width,
                               steps=args.steps, cfg=args.cfg, seed=args.seed, scheduler=sched, patches=patches,
                               callback=_TextProgress("sampling", args.quiet))
    frames = bb.decode_latents(lat)[0]
    path = media.write_video(frames, out, fps=args.fps)
    print(f"wrote {path} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}; {bb.family}"
          f"{', AH' if getattr(args, 'ah', False) else ''})")
    return 0


def run_train_unet(args) -> int:
    """``train-lora`` on a U-Net backbone: MotionDirector-style TAP motion LoRA (docs/unet.md)."""
    from ._parallel import run_folder

    out = Path(args.out)
    if out.suffix.lower() != ".safetensors":
        raise DualAdapterError(f"--out {str(out)!r}: expected a .safetensors file name")
    spatial_out = Path(f"{out.with_suffix('')}.spatial.safetensors")
    if not args.motion:
        raise DualAdapterError("give at least one --motion CLIP (a U-Net motion LoRA trains on clips)")
    if args.images:
        raise DualAdapterError("--subject: appearance LoRAs on U-Nets are trained by customttt-animatediff")
    if args.targets or args.blocks:
        raise DualAdapterError("--targets / --blocks are CogVideoX options; on a U-Net choose --preset "
                               "(tap, k_out, full) for the temporal attentions")
    # the CogVideoX trainers' run rules and run folder (runs/unet/<out name>_NNNNN_/): <out>.lock, no run replaced,
    # --resume needs a stopped run
    with run_folder(args, out, "unet", "train-lora") as run:
        return _train_unet(args, out, run, spatial_out)


def unet_train_config(args, device: str = "cpu"):
    """The :class:`~dual_adapter.unet_motion.UNetMotionTrainConfig` of a ``train-lora`` run on a U-Net: every
    option not given on the command line (``None``) keeps the library's default, the SMA authors' code
    (preset ``k_out``, spatial path and debiased loss on, AdamW lr 5e-4, wd 1e-2, 1000 steps; docs/tap.md)."""
    from .. import unet_motion

    given = dict(preset=args.preset, lr=args.lr, weight_decay=args.weight_decay, steps=args.steps,
                 spatial_path=args.spatial_path, debiased_loss=args.debiased_loss)
    return unet_motion.UNetMotionTrainConfig(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, seed=args.seed,
        optimizer="adamw" if args.optimizer == "adamw8bit" else args.optimizer,
        gradient_checkpointing=not args.no_gradient_checkpointing and device != "cpu",
        checkpoint_every=args.checkpoint_every, **{k: v for k, v in given.items() if v is not None})


def _train_unet(args, out: Path, run, spatial_out: Path) -> int:
    from .. import media, unet_motion
    from ..progress import TextProgress as _TextProgress

    bb = load_bundle(args)
    f0, h0, w0 = bb.default_size
    n, h, w = args.frames or f0, args.height or h0, args.width or w0
    bb.check_video_size(n, h, w)
    clips = [media.fit_frames(media.load_clip(c, num_frames=n, fps=args.fps, start_s=args.start,
                                              short_policy=args.short_policy, require_motion=True)[0], h, w)
             for c in args.motion]
    cfg = unet_train_config(args, bb.device)
    args.preset = cfg.preset

    def keep(lf, step):
        unet_motion.save_unet_lora(lf, run.checkpoint, overwrite=True)

    from ._previews import preview_options

    pv = preview_options(args, bb, run.previews)
    motion, spatial, losses = unet_motion.train_unet_motion_lora(
        bb, clips, args.prompt, cfg, callback=_TextProgress("train-lora", args.quiet), on_checkpoint=keep,
        state_path=run.state, resume=args.resume, preview=pv)
    motion.metadata.update(prompt=args.prompt, clip_files=[Path(c).name for c in args.motion])
    path = unet_motion.save_unet_lora(motion, out, dtype=args.save_dtype)
    if spatial is not None:
        unet_motion.save_unet_lora(spatial, spatial_out, dtype=args.save_dtype)
    run.finish(losses, title="U-Net motion LoRA loss")
    last = losses[-1]["loss"] if losses else float("nan")
    print(f"wrote {path} ({bb.family}; preset {args.preset}, rank {args.rank}, {len(motion.modules)} modules; "
          f"{len(losses)} steps, last loss {last:.4f}); run folder {run.path}", file=sys.stdout)
    return 0


def register(sub) -> None:
    from ._common import add_model_options

    p = sub.add_parser("customttt-animatediff",
                       help="CustomTTT as published, on AnimateDiff: layer-selective LoRAs + TTT merge",
                       description="CustomTTT (docs/customttt.md) on an AnimateDiff U-Net: appearance LoRA "
                                   "on layers {2, 6} trained on photos without the motion modules, motion LoRA "
                                   "on layers {2, 5} trained on clips, then the test-time-training merge; "
                                   "writes the merged LoRA and a video.")
    add_model_options(p)
    p.set_defaults(model="tiny-animatediff")
    p.add_argument("--subject", nargs="+", required=True, metavar="PHOTO_OR_DIR", help="subject photos")
    p.add_argument("--motion", nargs="+", required=True, metavar="CLIP", help="motion clip(s)")
    p.add_argument("--appearance-prompt", required=True, help="e.g. 'a photo of a sks dog'")
    p.add_argument("--motion-prompt", required=True, help="e.g. 'a person is playing guitar'")
    p.add_argument("--prompt", required=True, help="the combined prompt, e.g. 'a sks dog is playing guitar'")
    p.add_argument("--appearance-layers", default="2,6", help="appearance LoRA layers (default 2,6)")
    p.add_argument("--motion-layers", default="2,5", help="motion LoRA layers (default 2,5)")
    p.add_argument("--appearance-steps", type=lim.arg_int(1, lim.MAX_TRAIN_STEPS), default=500,
                   help="default 500 (authors)")
    p.add_argument("--motion-steps", type=lim.arg_int(1, lim.MAX_TRAIN_STEPS), default=500,
                   help="default 500 (authors)")
    p.add_argument("--ttt-steps", type=lim.arg_int(0, lim.MAX_TTT_STEPS), default=30, help="default 30 (authors)")
    p.add_argument("--rank", type=lim.arg_int(1, lim.MAX_RANK), default=32, help="LoRA rank (default 32)")
    p.add_argument("--optimizer", default="auto", choices=["auto", "lion", "adamw"],
                   help="auto = Lion when lion-pytorch is installed (the authors'), else AdamW")
    p.add_argument("--frames", type=lim.arg_int(1, lim.MAX_FRAMES), default=None, help="frames (default: the model's)")
    p.add_argument("--height", type=lim.arg_int(1, lim.MAX_SIDE), default=None, help="pixels (default: the model's)")
    p.add_argument("--width", type=lim.arg_int(1, lim.MAX_SIDE), default=None, help="pixels (default: the model's)")
    p.add_argument("--fps", type=float, default=8.0, help="clip sampling rate and output frame rate (default 8)")
    p.add_argument("--steps", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=25,
                   help="DDIM steps (default 25, authors)")
    p.add_argument("--cfg", type=lim.arg_float(lim.MIN_CFG, lim.MAX_CFG), default=9.0,
                   help="guidance (default 9, authors)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, help="merged LoRA .safetensors (never overwritten); the video goes to "
                   "<out>.mp4")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_customttt)


def run_customttt(args) -> int:
    from .. import customttt_unet as ct
    from .. import media, unet_motion, unet_sampling
    from ..lora import LoraPatch
    from ..progress import TextProgress as _TextProgress

    out = Path(args.out)
    video = out.with_suffix(".mp4")
    if out.suffix.lower() != ".safetensors":
        raise DualAdapterError(f"--out {str(out)!r}: expected a .safetensors file name")
    for p in (out, video):
        if p.exists():
            raise DualAdapterError(f"{str(p)!r} already exists; choose another --out")
    bb = load_bundle(args)
    if bb.kind != "animatediff":
        raise DualAdapterError(f"customttt-animatediff needs an AnimateDiff model; {args.model!r} is {bb.family}")
    f0, h0, w0 = bb.default_size
    n, h, w = args.frames or f0, args.height or h0, args.width or w0
    bb.check_video_size(n, h, w)
    photos = [media.fit_frames(p.unsqueeze(0), h, w)[0] for p in media.load_images(args.subject)]
    clips = [media.fit_frames(media.load_clip(c, num_frames=n, fps=args.fps, short_policy="loop")[0], h, w)
             for c in args.motion]
    cfg = ct.CustomTTTUNetConfig(appearance_layers=ct.parse_layers(args.appearance_layers),
                                 motion_layers=ct.parse_layers(args.motion_layers), rank=args.rank,
                                 appearance_steps=args.appearance_steps, motion_steps=args.motion_steps,
                                 ttt_steps=args.ttt_steps, optimizer=args.optimizer, seed=args.seed,
                                 num_frames=n, height=h, width=w)
    res = ct.run_customttt(bb, photos, clips, appearance_prompt=args.appearance_prompt,
                           motion_prompt=args.motion_prompt, prompt=args.prompt, config=cfg,
                           callback=_TextProgress("customttt", args.quiet))
    unet_motion.save_unet_lora(res.merged, out)
    lat = unet_sampling.sample(bb, bb.encode_prompt(args.prompt), None, num_frames=n, height=h, width=w,
                               steps=args.steps, cfg=args.cfg, seed=args.seed, scheduler="ddim",
                               patches=[LoraPatch(res.merged)])
    media.write_video(bb.decode_latents(lat)[0], video, fps=args.fps)
    print(f"wrote {out} (merged LoRA, {len(res.merged.modules)} modules; optimizer {res.optimizer}) and {video}")
    return 0
