"""``python -m dual_adapter train-lora`` / ``lora-info``, and ``generate --lora FILE[:STRENGTH]``.

train-lora trains a motion LoRA (TAP by default, docs/tap.md) on one or more clips and
writes it in the diffusers CogVideoX LoRA format to ``--out``, with its run folder
``runs/lora/<out name>_NNNNN_/`` beside it (or under ``--run-dir``; :class:`dual_adapter.runs.RunFolder`:
``config.json``, the per-step losses as JSON lines ``losses.jsonl``, ``loss.png``, ``previews/``). While it runs,
the folder's checkpoint (``checkpoint.safetensors`` and its state file ``state.safetensors``: weights, optimiser,
schedule, step) is rewritten every ``--checkpoint-every`` steps and kept if the run stops (Ctrl-C, SIGTERM, an
error; not on divergence, where the last finite checkpoint stays); ``--resume`` continues from it. A rerun
without ``--resume`` never replaces them (it is refused), and ``<out>.lock`` keeps a second run
with the same ``--out`` out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError
from ..seeds import seed_arg




def _defaults(kind: str, optimizer: str) -> dict:
    """Defaults of ``train-lora`` by what it trains: a motion LoRA (clips) gets TAP's (preset tap, AdamW lr 5e-4,
    weight decay 1e-2, 1000 steps; docs/tap.md), an appearance LoRA (photos only) CustomTTT's (preset
    full, 500 steps, AdamW lr 1e-4 / weight decay 1e-2, or with Lion the authors' lr 1e-5 / 0.1;
    docs/customttt.md, :func:`dual_adapter.customttt.selective_train_config`)."""
    if kind == "appearance":
        from ..customttt import selective_train_config

        c = selective_train_config("appearance", optimizer=optimizer)
        return dict(preset="full", lr=c.lr, weight_decay=c.weight_decay, steps=c.steps, betas=tuple(c.betas))
    return dict(preset="tap", lr=5e-4, weight_decay=1e-2, steps=1000, betas=(0.9, 0.999))


def register(sub) -> None:
    from ._common import add_model_options, add_size_options

    p = sub.add_parser("train-lora", help="train a motion LoRA (TAP) on clips; writes a diffusers-format LoRA",
                       description="Train a motion LoRA on CogVideoX (TAP: LoRA on attention query and key only; "
                                   "presets k_out and full, or explicit modules) and save it in the diffusers "
                                   "CogVideoX LoRA format (loads with CogVideoXPipeline.load_lora_weights).")
    add_model_options(p)
    p.add_argument("--motion", nargs="+", default=[], metavar="CLIP", help="motion clip(s) (MP4, AVI, ...)")
    p.add_argument("--subject", "--images", dest="images", nargs="+", default=[], metavar="PHOTO_OR_DIR",
                   help="photos or folders of photos, each trained as a 1-frame video (appearance LoRA)")
    p.add_argument("--prompt", required=True, help="training prompt, e.g. 'a person is playing guitar'")
    p.add_argument("--preset", default=None, choices=["tap", "k_out", "full"],
                   help="tap = attn1.to_q + to_k (default for a CogVideoX motion LoRA; the paper's TAP), k_out = "
                        "to_k + to_out.0 (the authors' code; default on a U-Net model, see docs/tap.md), full = q, "
                        "k, v, out (default for an appearance LoRA, i.e. --subject without --motion: CustomTTT)")
    p.add_argument("--targets", default=None, help="explicit comma-separated modules inside each block "
                   "(e.g. attn1.to_q,attn1.to_k,ff.net.2); overrides --preset")
    p.add_argument("--blocks", default=None, help="blocks that get the LoRA, e.g. '0-5,12' (default all)")
    p.add_argument("--rank", type=lim.arg_int(1, lim.MAX_RANK), default=32,
                   help="LoRA rank (default 32, as the authors)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default = rank: scale 1)")
    p.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout (default 0.1, as the authors)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: motion 5e-4 as TAP's authors; "
                   "appearance 1e-4 with AdamW / 1e-5 with Lion, CustomTTT)")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay (default 1e-2; appearance with "
                   "Lion 0.1)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default: motion 1000, appearance 500)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every step's randomness (default 0)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit", "lion", "auto"],
                   help="optimiser (default adamw)")
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine", "cosine_with_restarts"],
                   help="learning-rate schedule (default constant)")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps (default 0)")
    add_size_options(p, "training ")
    p.add_argument("--fps", type=float, default=8.0, help="sample clips at this frame rate (default 8, CogVideoX's)")
    p.add_argument("--start", type=float, default=0.0, help="start of each clip, seconds (default 0)")
    p.add_argument("--short-policy", default="loop", choices=["loop", "hold", "error"],
                   help="a clip shorter than --frames at --fps: loop it (default; a warning says so), hold its last "
                        "frame, or stop with an error")
    p.add_argument("--spatial-path", action=argparse.BooleanOptionalAction, default=None,
                   help="MotionDirector's spatial LoRA path on single frames (dropped at inference); default on for "
                        "a U-Net model (the SMA authors' code), off on CogVideoX")
    p.add_argument("--debiased-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="MotionDirector's appearance-debiased loss; default on for a U-Net model (the SMA authors' "
                        "code), off on CogVideoX")
    p.add_argument("--batch", type=lim.arg_int(1, lim.MAX_BATCH), default=1,
                   help="samples per step (1, the authors'), drawn at random; more than 1 needs clips of one length "
                        "(or photos only); with accelerate launch it is the global batch, shared by the processes")
    from ._parallel import add_parallel_options

    add_parallel_options(p, "--batch")
    from ._previews import add_preview_options

    add_preview_options(p)
    from ._parallel import add_memory_options

    add_memory_options(p)
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    p.add_argument("--checkpoint-every", type=int, default=100, help="rewrite the checkpoint every N steps")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run of --out (the newest run folder of its name with a "
                        "state.safetensors); --lr applies from there")
    p.add_argument("--save-dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of the saved file")
    p.add_argument("--out", required=True, help="output .safetensors (never overwritten); the run's losses, loss "
                   "plot and previews go to its run folder (see --run-dir)")
    from ._parallel import add_run_dir_option

    add_run_dir_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_train)

    q = sub.add_parser("lora-info", help="show what a LoRA file holds (format, rank, alpha, targets, blocks)",
                       description="Read a LoRA file (ours, diffusers, peft or kohya) and print what it holds.")
    q.add_argument("file", help="LoRA .safetensors")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_info)


def run_train(args) -> int:
    import torch

    from .. import lora, media
    from ..progress import TextProgress
    from ._parallel import train_runs
    from .dualreal import _validate_cli
    from ._common import preflight
    from ..dispatch import is_unet_name
    from .unet import run_train_unet

    if is_unet_name(args.model):  # ZeroScope / ModelScope UNet3D, AnimateDiff (commands/unet.py)
        used = [o for o, on in (("--batch", args.batch != 1), ("--grad-accum", args.grad_accum != 1),
                                ("--fsdp", args.fsdp), ("--fp8-base", args.fp8_base),
                                ("--block-swap", args.block_swap)) if on]
        if used:
            raise DualAdapterError(f"{', '.join(used)}: the U-Net motion trainers run one clip per step on one "
                                   f"process; drop {' and '.join(used)} (they apply to the CogVideoX models)")
        return run_train_unet(args)
    out = Path(args.out)
    if out.suffix.lower() != ".safetensors":
        raise DualAdapterError(f"--out {str(out)!r}: expected a .safetensors file name")
    if not args.motion and not args.images:
        raise DualAdapterError("give at least one --motion CLIP (or --subject PHOTO_OR_DIR for an appearance LoRA)")
    kind = "appearance" if args.images and not args.motion else "motion"
    d = _defaults(kind, args.optimizer)
    spec = lora.LoraSpec(rank=args.rank, alpha=float(args.alpha if args.alpha is not None else args.rank),
                         dropout=args.dropout, targets=lora.resolve_targets(args.targets or args.preset or d["preset"]),
                         blocks=lora.parse_blocks(args.blocks))
    spec.validate()
    pick = lambda given, key: d[key] if given is None else given  # noqa: E731
    cfg = lora.lora_train_config(steps=pick(args.steps, "steps"), lr=pick(args.lr, "lr"),
                                 weight_decay=pick(args.weight_decay, "weight_decay"), betas=d["betas"],
                                 seed=args.seed, optimizer=args.optimizer, lr_schedule=args.schedule,
                                 warmup_steps=args.warmup, gradient_checkpointing=not args.no_gradient_checkpointing,
                                 checkpoint_every=args.checkpoint_every, sync_every=args.sync_every,
                                 fsdp=args.fsdp, fsdp_release_loaded=args.fsdp or args.fp8_base,
                                 fp8_base=args.fp8_base, block_swap=args.block_swap)
    _validate_cli(cfg)
    for opt, v in (("--batch", args.batch), ("--grad-accum", args.grad_accum)):
        if v < 1:
            raise DualAdapterError(f"{opt} {v}: must be an integer >= 1")
    # inputs are checked against the model's configs before the model loads (minutes on 5B)
    info = preflight(args, args.frames if args.motion else 1, args.height, args.width)
    n = args.frames or info.default_size[0]
    clips = [media.load_clip(c, num_frames=n, fps=args.fps, start_s=args.start, short_policy=args.short_policy,
                             require_motion=True)[0] for c in args.motion]
    photos = media.load_images(args.images) if args.images else []
    if not args.quiet:
        print(f"{kind} LoRA: preset {args.targets or args.preset or d['preset']}, lr {cfg.lr:g}, {cfg.steps} steps",
              file=sys.stderr)
    def train_one(args, bundle, out, rank, run):
        from ._previews import preview_options, report

        pv = preview_options(args, bundle, run.previews)
        lf, res = lora.train_lora(bundle, clips=clips, photos=photos, prompt=args.prompt, spec=spec, cfg=cfg,
                                  spatial_path=bool(args.spatial_path), debiased_loss=bool(args.debiased_loss),
                                  callback=TextProgress("train-lora", args.quiet or rank != 0),
                                  checkpoint_path=run.checkpoint, resume=args.resume, num_frames=n if clips else None,
                                  height=args.height, width=args.width, batch_size=args.batch,
                                  grad_accum=args.grad_accum, preview=pv)
        if rank != 0:  # one writer in a data-parallel run
            return
        lf.metadata["train"] = dict(lf.metadata.get("train") or {}, clip_files=[Path(c).name for c in args.motion])
        dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.save_dtype]
        path = lf.save(out, dtype=dt)
        run.finish(res.losses, title=f"{kind} LoRA loss")
        if pv is not None:
            report(args, res.preview_seconds, res.seconds, pv.folder)
        last = res.losses[-1]["loss"] if res.losses else float("nan")
        print(f"wrote {path} (rank {lf.rank}, targets {','.join(lf.targets)}, {len(lf.modules)} modules; "
              f"{res.steps_done} steps, last loss {last:.4f}); run folder {run.path}")

    train_runs(args, out, "lora", "train-lora", train_one)  # Wan 2.2 A14B: once per expert
    return 0


def run_info(args) -> int:
    from .. import lora

    lf = lora.load_lora(args.file)
    info = {"file": str(args.file), "format": lf.source_format, "rank": lf.rank, "alpha": lf.alpha,
            "targets": lf.targets, "blocks": lf.blocks, "modules": len(lf.modules),
            "skipped_keys": len(lf.skipped),
            "metadata": {k: v for k, v in lf.metadata.items() if k != "lora_adapter_metadata"}}
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        for k, v in info.items():
            if k != "metadata":
                print(f"{k}: {v}")
        for k in ("preset", "base_model", "prompt", "trained_alpha"):
            if k in lf.metadata:
                print(f"{k}: {lf.metadata[k]}")
    return 0


# -------------------------------------------------------------------------------- generate hooks


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """``generate --lora FILE[:STRENGTH]`` (repeatable)."""
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="apply a LoRA (ours, diffusers/peft or kohya format) at STRENGTH (default 1); "
                             "repeat to stack several. Wan 2.2 A14B: X_high_noise / X_low_noise.safetensors "
                             "(either; its twin is found) put each half on its expert (give both for a strength "
                             "each); a file of no expert applies to both experts")


def check_generate_options(args) -> None:
    """Before the model loads: every ``--lora`` parses (file, finite strength) and its file exists."""
    from .. import lora

    for item in getattr(args, "lora", None) or []:
        path, _ = lora.parse_lora_arg(item)
        if not Path(path).is_file():
            raise DualAdapterError(f"--lora {item!r}: file {path!r} does not exist")


def generate_patches(args, bundle) -> list:
    """One :class:`~dual_adapter.lora.LoraPatch` per ``--lora``, each checked against the model first. On Wan 2.2
    A14B a file named for an expert (``X_high_noise`` / ``X_low_noise``) and its twin (given too, or found beside
    it) make one :class:`~dual_adapter.patches.PerDenoiser` patch, each half on its expert at its file's strength;
    a file of no expert applies to both experts (docs/wan.md)."""
    from .. import lora
    from ..backbones import as_backbone
    from ..experts import PerExpert, group_pairs, per_expert_patch

    bb = as_backbone(bundle)
    quiet = getattr(args, "quiet", False)

    def one(item, denoiser):
        path, strength = item
        lf = lora.load_lora(path)
        lora.check_compatible(lf, denoiser)
        if not quiet:
            print(f"LoRA {path} x {strength:g}: rank {lf.rank}, {len(lf.modules)} modules ({lf.source_format})",
                  file=sys.stderr)
        return lora.LoraPatch(lf, strength, name=Path(path).stem)

    out = []
    for item in group_pairs([lora.parse_lora_arg(i) for i in getattr(args, "lora", None) or []],
                            bb.denoiser_names()):
        if isinstance(item, PerExpert) and not quiet:
            print(f"LoRA pair {item.name}: " + ", ".join(f"{n} expert <- {p}" for n, (p, _) in item.items()) +
                  ("" if len(item.by_name) == len(bb.denoiser_names()) else " (no twin: the other expert runs "
                   "without it)"), file=sys.stderr)
        elif len(bb.denoiser_names()) > 1 and not quiet:
            print(f"LoRA {item[0]}: one file, applied to every expert", file=sys.stderr)
        out.append(per_expert_patch(item, bb, one, "--lora"))
    return out
