"""``train-dualreal`` and DualReal's options for ``generate`` (--dualreal, --reference-image, ...).

    python -m dual_adapter train-dualreal --model tiny --subject PHOTO_OR_DIR... --identity-prompt "dog *" \\
        --motion CLIP... --motion-prompt "a person is playing guitar" --steps N --out adapters.safetensors

writes ``adapters.safetensors`` and the run folder ``runs/dualreal/adapters_NNNNN_/`` beside it (or under
``--run-dir``; :class:`dual_adapter.runs.RunFolder`: ``config.json``, ``losses.jsonl`` with one JSON record per
step, ``loss.png``, ``previews/``). While it runs, the folder's ``checkpoint.safetensors`` + ``state.safetensors``
hold the last checkpoint (``--resume`` continues from them; they are removed after a successful run) and
``adapters.safetensors.lock`` keeps a second run with the same ``--out`` out. A rerun without ``--resume`` never
replaces a stopped run's files: it is refused (see :func:`dual_adapter.training.check_run_files`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError
from ..seeds import seed_arg

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-dualreal",
        help="train DualReal identity + motion adapters with the StageBlender controller",
        description="Joint identity + motion training of DualReal DA-blocks and the StageBlender controller "
                    "(docs/dualreal.md) on subject photos and motion clips.",
    )
    from ._common import add_model_options, add_size_options

    add_model_options(p, unets=False)  # DualReal runs on CogVideoX
    p.add_argument("--subject", nargs="+", required=True, metavar="PHOTO_OR_DIR", help="subject photos or folders")
    p.add_argument("--identity-prompt", required=True, help="identity prompt, e.g. 'dog *'")
    p.add_argument("--motion", nargs="+", required=True, metavar="CLIP_OR_DIR",
                   help="motion clips (video files, or folders of them)")
    p.add_argument("--motion-prompt", required=True, help="motion prompt, e.g. 'a person is playing guitar'")
    p.add_argument("--out", required=True, help="output .safetensors (refuses to overwrite)")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (1000)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up steps (200, the authors'; a shorter run peaks below --lr: see docs/schedule.md)")
    p.add_argument("--motion-ratio", type=float, default=0.5, help="probability of a motion step (0.5)")
    p.add_argument("--p-image-zero", type=float, default=0.0, help="probability of a zero reference embedding (0)")
    p.add_argument("--hidden", type=lim.arg_int(1, lim.MAX_ADAPTER_HIDDEN), default=64,
                   help="adapter bottleneck width (64)")
    p.add_argument("--groups", type=lim.arg_int(0, lim.MAX_GROUPS), default=0, help="StageBlender weight groups (0 = the "
                   "paper's 7, or one per block on a model with fewer blocks)")
    p.add_argument("--form", choices=("official", "zero_init"), default="official", help="DA-block form (official)")
    p.add_argument("--no-controller", action="store_true", help="ablation: fixed weights w_id = w_mo = 0.1")
    p.add_argument("--motion-batch", type=lim.arg_int(1, lim.MAX_BATCH), default=3, help="clips per motion step (3)")
    p.add_argument("--identity-batch", type=lim.arg_int(1, lim.MAX_BATCH), default=1,
                   help="photos per identity step (1)")
    from ._parallel import add_parallel_options

    add_parallel_options(p, "--motion-batch")
    from ._parallel import add_memory_options

    add_memory_options(p)
    from ._previews import add_preview_options

    add_preview_options(p)
    add_size_options(p, "training ")
    p.add_argument("--clip-sampling", choices=("native", "fps"), default="native",
                   help="native (default, the authors'): consecutive source frames (49 frames = ~2 s of a 25 fps "
                        "clip); fps: resample to --fps (49 frames = 6 s at 8 fps: more of the action, at the speed "
                        "CogVideoX plays, with larger steps between frames)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate for --clip-sampling fps (8, CogVideoX's)")
    p.add_argument("--short-policy", default="loop", choices=["loop", "hold", "error"],
                   help="a clip shorter than --frames: loop it (default; a warning says so), hold its last "
                        "frame, or stop with an error")
    p.add_argument("--latent-sampling", choices=("sample", "mode"), default="sample",
                   help="sample (default, the authors'): a fresh VAE posterior sample each step; mode: the "
                        "posterior mode, the same latent every step")
    p.add_argument("--reference-encoder", default=None,
                   help="CLIP ViT-H/14 vision folder (transformers), 'tiny', 'mini' (pixel-statistics stand-in "
                        "for the mini world) or 'none' (default: 'tiny' for the tiny models, 'mini' for mini and mini "
                        "folders, else none = W_cond stays untrained, warned; the authors always train with a ViT-H/14 encoder)")
    p.add_argument("--optimizer", default="auto", choices=("auto", "adamw", "adamw8bit"), help="optimiser (auto)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps (100)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed (0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run of OUT (the newest run folder of its name with a state.safetensors); "
                        "--lr applies from there")
    from ._parallel import add_run_dir_option

    add_run_dir_option(p)
    p.set_defaults(func=_train)


def encoder_for(spec: str | None, model_name: str, device: str | None):
    """The reference encoder of a DualReal run: ``spec`` (a folder, ``"tiny"``, ``"mini"`` or ``"none"``) or, when
    None, the default for the loaded model's name (:func:`dual_adapter.reference.builtin_encoder_name`: the tiny
    CLIP for the tiny models, ``"mini"`` (PixelStatsEncoder) for mini and mini folders, none (W_cond untrained,
    warned) otherwise). Used by ``train-dualreal`` and the demo."""
    from ..reference import builtin_encoder_name, load_reference_encoder

    if spec is None:
        spec = builtin_encoder_name(model_name) or "none"
    if str(spec).lower() == "none":
        return None
    return load_reference_encoder(spec, device=device)


def _train(args) -> int:
    from ..dualreal import DualRealOptions, finalize_run, load_motion_clips, train_dualreal
    from ..media import load_images
    from ..progress import TextProgress
    from ..training import TrainConfig, loss_summary

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise DualAdapterError(f"--out {str(out)!r} must end in .safetensors")
    train = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=args.warmup, optimizer=args.optimizer,
                        checkpoint_every=args.checkpoint_every, seed=args.seed, sync_every=args.sync_every,
                        gradient_checkpointing=not args.no_gradient_checkpointing, fsdp=args.fsdp,
                        fsdp_release_loaded=args.fsdp or args.fp8_base, fp8_base=args.fp8_base,
                        block_swap=args.block_swap)
    _validate_cli(train)
    from ._parallel import train_runs
    from ._common import preflight

    # inputs are checked against the model's configs before the model loads (minutes on 5B)
    info = preflight(args, args.frames, args.height, args.width)
    f0, h0, w0 = info.default_size
    frames = args.frames or f0
    photos = load_images(args.subject)
    clips = load_motion_clips(args.motion, frames, args.clip_sampling, args.fps, short_policy=args.short_policy)
    options = DualRealOptions(hidden=args.hidden, groups=args.groups, form=args.form,
                              controller=not args.no_controller, motion_ratio=args.motion_ratio,
                              p_image_zero=args.p_image_zero, motion_batch=args.motion_batch,
                              identity_batch=args.identity_batch, grad_accum=args.grad_accum, num_frames=frames,
                              height=args.height or h0, width=args.width or w0, clip_sampling=args.clip_sampling,
                              clip_fps=args.fps, latent_sampling=args.latent_sampling)
    def train_one(args, bundle, out, rank, run):
        from ..experts import expert_names

        # an A14B expert's backbone is named "<model> (<expert> expert)": the built-in encoder goes by the model
        encoder = encoder_for(args.reference_encoder, args.model if expert_names(args.model) else bundle.name,
                              bundle.device)
        if encoder is None and rank == 0:
            from ..dualreal.trainer import NO_REFERENCE_WARNING

            bar = "!" * 100
            print(f"{bar}\nWARNING: {NO_REFERENCE_WARNING}\n{bar}", file=sys.stderr, flush=True)
        from ._previews import preview_options, report

        pv = preview_options(args, bundle, run.previews)
        res = train_dualreal(bundle, photos, args.identity_prompt, clips, args.motion_prompt,
                             reference_encoder=encoder, options=options, train=train,
                             callback=TextProgress("train-dualreal", quiet=rank != 0), out=out, resume=args.resume,
                             preview=pv, run=run)
        if rank != 0:
            return
        path = finalize_run(res, out, run)
        if pv is not None:
            report(args, res.preview_seconds, res.seconds, pv.folder)
        first, last = loss_summary(res.losses)
        print(f"wrote {path} ({res.adapters.num_parameters():,} parameters, {res.steps_done} steps, "
              f"{res.seconds:.1f} s, {res.optimizer_name}); loss {first:.4f} -> {last:.4f}; "
              f"run folder: {run.path}")

    train_runs(args, out, "dualreal", "train-dualreal", train_one)  # Wan 2.2 A14B: once per expert
    return 0


def _validate_cli(train) -> None:
    """Check the training options before anything loads, in the CLI's words."""
    try:
        train.validate(min_steps=1)
    except DualAdapterError as e:
        msg = str(e)
        for field, opt in (("steps=", "--steps"), ("lr=", "--lr"), ("checkpoint_every=", "--checkpoint-every"),
                           ("warmup_steps=", "--warmup")):
            if msg.startswith(field):
                msg = opt + " " + msg[len(field):]
                break
        raise DualAdapterError(msg) from None


# --------------------------------------------------------------------------------------------
# generate hooks


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """DualReal options of ``generate``."""
    g = parser.add_argument_group("DualReal")
    g.add_argument("--dualreal", default=None, metavar="ADAPTERS",
                   help="DualReal adapters (.safetensors, or the authors' adapter.pth). Wan 2.2 A14B: "
                        "X_high_noise / X_low_noise.safetensors (either; its twin is found) put each set on its "
                        "expert; a file of no expert applies to both experts")
    g.add_argument("--reference-image", default=None, metavar="PHOTO",
                   help="subject photo whose CLIP embedding conditions the motion adapters")
    g.add_argument("--reference-embedding", default=None, metavar="FILE",
                   help="precomputed 1024-d reference embedding (.safetensors with one tensor)")
    g.add_argument("--reference-encoder", dest="dualreal_reference_encoder", default=None,
                   help="CLIP ViT-H/14 vision folder, 'tiny' or 'mini' (default: the one recorded in the adapters)")
    g.add_argument("--dualreal-identity-scale", type=float, default=1.0, help="scale of the identity branch (1)")
    g.add_argument("--dualreal-motion-scale", type=float, default=1.0, help="scale of the motion branch (1)")
    g.add_argument("--dualreal-fixed-weights", type=float, nargs=2, default=None, metavar=("W_ID", "W_MO"),
                   help="use fixed weights instead of the StageBlender controller")


def _load_reference(args, adapters, bundle):
    from ..io import load_safetensors
    from ..reference import as_reference_embedding, load_reference_encoder

    emb_file = getattr(args, "reference_embedding", None)
    img = getattr(args, "reference_image", None)
    if emb_file:
        tensors, _ = load_safetensors(emb_file)
        if len(tensors) != 1:
            raise DualAdapterError(f"--reference-embedding {emb_file!r} must hold exactly one tensor, "
                                   f"found {len(tensors)}")
        return as_reference_embedding(next(iter(tensors.values())), f"--reference-embedding {emb_file!r}")
    if img:
        from ..dualreal import reference_for_adapters
        from ..media import load_image

        spec = getattr(args, "dualreal_reference_encoder", None)
        recorded = adapters.meta.get("reference_encoder")
        if not spec and recorded and Path(recorded).is_dir():
            spec = recorded  # the CLIP folder the adapters were trained with, where it still is
        enc = load_reference_encoder(spec, device=bundle.device) if spec else None
        return reference_for_adapters(adapters, load_image(img)[None], enc, what="--reference-image")
    return None


def check_generate_options(args) -> None:
    """Before the model loads: the ``--dualreal`` file and the reference image / embedding exist."""
    for opt, value in (("--dualreal", getattr(args, "dualreal", None)),
                       ("--reference-image", getattr(args, "reference_image", None)),
                       ("--reference-embedding", getattr(args, "reference_embedding", None))):
        if value and not Path(value).is_file():
            raise DualAdapterError(f"{opt} {value!r} does not exist")


def generate_patches(args, bundle) -> list:
    """Model patches for ``generate``: ``[DualRealPatch]`` when ``--dualreal`` is given, else ``[]``."""
    path = getattr(args, "dualreal", None)
    if not path:
        if getattr(args, "reference_image", None) or getattr(args, "reference_embedding", None):
            raise DualAdapterError("--reference-image / --reference-embedding need --dualreal ADAPTERS")
        return []
    from ..backbones import as_backbone
    from ..dualreal import DualRealPatch, check_compatible, load_any, w_cond_trained
    from ..experts import PerExpert, group_pairs, per_expert_patch

    bb = as_backbone(bundle)

    def one(item, denoiser):
        adapters = load_any(item[0])
        check_compatible(adapters.config, denoiser, adapters.meta.get("base_fingerprint"))
        ref = _load_reference(args, adapters, bundle)  # untrained W_cond: DualRealPatch drops a reference, warned
        if ref is None and w_cond_trained(adapters):
            print("note: no --reference-image / --reference-embedding: the motion adapters run without W_cond",
                  file=sys.stderr)
        return DualRealPatch(adapters, ref, fixed_weights=args.dualreal_fixed_weights,
                             identity_scale=args.dualreal_identity_scale, motion_scale=args.dualreal_motion_scale)

    (item,) = group_pairs([(path, None)], bb.denoiser_names())
    if isinstance(item, PerExpert):
        print(f"DualReal pair {item.name}: " + ", ".join(f"{n} expert <- {p}" for n, (p, _) in item.items()),
              file=sys.stderr)
    return [per_expert_patch(item, bb, one, "--dualreal")]
