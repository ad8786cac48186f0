"""``python -m dual_adapter prompt-influence`` and ``ttt-merge`` (CustomTTT, docs/customttt.md).

prompt-influence prints a ranked table of how strongly each block (group) carries a concept prompt
and the recommended ``--blocks`` for ``train-lora``; ttt-merge merges an appearance LoRA and a motion
LoRA by test-time training into one diffusers-format LoRA.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError
from ..seeds import seed_arg

def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise DualAdapterError(f"{what} {text!r}: expected comma-separated integers") from None
    if not out:
        raise DualAdapterError(f"{what} {text!r}: expected at least one integer")
    return out


def _groups(text: str | None):
    if not text:
        return None
    from ..customttt import parse_blocks

    return [parse_blocks(g) for g in text.split(";") if g.strip()]


def _new_file(path: str | Path, ext: tuple[str, ...], what: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in ext:
        raise DualAdapterError(f"{what} {str(p)!r}: expected a {' / '.join(ext)} file name")
    if p.exists():
        raise DualAdapterError(f"{what} {str(p)!r} already exists; choose another file name")
    return p


def register(sub) -> None:
    from ._common import add_model_options, add_size_options

    p = sub.add_parser("prompt-influence", help="CustomTTT: rank blocks by how much a concept prompt injected there "
                       "alone moves the prediction; recommends LoRA blocks",
                       description="Prompt-influence analysis (CustomTTT). For each block (or group of blocks) the "
                       "concept prompt's text stream is injected at that block only, all other blocks getting the "
                       "neutral prompt's; the score is how far that moves the prediction toward the full-concept "
                       "prediction (projection, 1 = all the way). See docs/customttt.md.")
    add_model_options(p)
    p.add_argument("--appearance-prompt", default=None, help="appearance concept prompt, e.g. 'a photo of dog *'")
    p.add_argument("--motion-prompt", default=None, help="motion concept prompt, e.g. 'a car is turning on a road'")
    p.add_argument("--concept", action="append", default=[], metavar="NAME=PROMPT", help="another concept (repeatable)")
    p.add_argument("--neutral-prompt", default="", help="prompt of the non-injected blocks (default: empty prompt)")
    p.add_argument("--group-size", type=lim.arg_int(1, lim.MAX_BLOCKS), default=1,
                   help="contiguous blocks per group (default 1)")
    p.add_argument("--groups", default=None, help="explicit groups, ';'-separated, e.g. '0-4;5-9;10,12'")
    p.add_argument("--timesteps", default="250,500,750", help="timesteps of the draws (default 250,500,750)")
    p.add_argument("--seeds", default="0,1", help="noise seeds of the draws (default 0,1)")
    p.add_argument("--space", default="x0", choices=["x0", "v"], help="prediction space (default x0)")
    p.add_argument("--top-k", type=lim.arg_int(1, lim.MAX_BLOCKS), default=2,
                   help="groups per recommended block set (default 2, as the authors)")
    p.add_argument("--reference", default=None, metavar="IMAGE_OR_CLIP",
                   help="use this photo / clip (encoded) as the clean latent of the draws instead of Gaussian latents")
    add_size_options(p)
    p.add_argument("--json", default=None, help="also write the full result as JSON here (never overwritten)")
    p.add_argument("--plot", default=None, help="also write the bar chart here (.png; never overwritten)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_influence)

    q = sub.add_parser("ttt-merge", help="CustomTTT: merge an appearance LoRA and a motion LoRA by test-time training",
                       description="Test-time-training merge (CustomTTT): two teachers (base + one LoRA, own prompt) "
                       "give reference latents after f sampler steps; the student (base + both LoRAs, trainable) "
                       "learns to denoise both under the combined prompt; the result is one diffusers-format LoRA. "
                       "Options left open by the paper have the documented defaults (docs/customttt.md).")
    add_model_options(q)
    q.add_argument("--appearance", required=True, help="appearance LoRA (.safetensors)")
    q.add_argument("--appearance-prompt", required=True, help="prompt the appearance LoRA was trained with")
    q.add_argument("--motion", required=True, help="motion LoRA (.safetensors)")
    q.add_argument("--motion-prompt", required=True, help="prompt the motion LoRA was trained with")
    q.add_argument("--prompt", required=True, help="combined prompt, e.g. 'dog * is turning on a road'")
    q.add_argument("--out", required=True, help="merged LoRA (.safetensors, never overwritten); its run folder (losses, loss "
                   "plot, previews) goes under --run-dir")
    q.add_argument("--authors", action="store_true", help="start from the authors' setting (Lion lr 1e-6, betas "
                   "0.9/0.99, wd 0.1, CFG 9; needs lion-pytorch); other flags override it")
    q.add_argument("--steps", type=lim.arg_int(0, lim.MAX_TTT_STEPS), default=None, help="TTT steps (default 30)")
    q.add_argument("--teacher-steps", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=None,
                   help="f: teacher sampler steps (default 5)")
    q.add_argument("--teacher-schedule", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=None,
                   help="schedule the f steps come from (default 25)")
    q.add_argument("--teacher-scheduler", default=None, choices=["ddim", "dpm"], help="teacher sampler (default ddim)")
    q.add_argument("--teacher-cfg", type=lim.arg_float(lim.MIN_CFG, lim.MAX_CFG), default=None,
                   help="teachers' guidance scale (default 6)")
    q.add_argument("--negative-prompt", default=None, help="teachers' negative prompt (default empty)")
    q.add_argument("--teacher-seed", type=seed_arg, default=None, help="teachers' noise seed (default 0)")
    q.add_argument("--separate-teacher-noise", action="store_true", help="teachers start from different noise "
                   "(default: the same)")
    q.add_argument("--appearance-frames", type=lim.arg_int(1, lim.MAX_FRAMES), default=None,
                   help="appearance teacher's frames (default: the "
                   "video's; 1 = an image reference)")
    q.add_argument("--reference", default=None, choices=["x0_pred", "z_f_renoised", "z_f_as_x0", "z_f"],
                   help="student target: x0_pred (default: the teachers' x0 prediction at step f), z_f_renoised "
                        "(z_f re-noised above t_f, DDIM step back to z_f), z_f_as_x0 (z_f used as the clean "
                        "sample; 'z_f' is its old name)")
    q.add_argument("--renoise-timesteps", default=None, metavar="LO,HI", help="re-noising timestep range [LO, HI) "
                   "(default 0,1000)")
    q.add_argument("--w-appearance", type=float, default=None, help="weight of the appearance loss (default 1)")
    q.add_argument("--w-motion", type=float, default=None, help="weight of the motion loss (default 1)")
    q.add_argument("--regenerate-references", action="store_true", help="re-run the teachers with new noise every step")
    q.add_argument("--dropout", type=float, default=None, help="LoRA dropout during TTT (default 0)")
    q.add_argument("--optimizer", default=None, choices=["adamw", "lion", "adamw8bit"], help="default adamw")
    q.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-5 AdamW; authors 1e-6 Lion)")
    q.add_argument("--weight-decay", type=float, default=None, help="weight decay (default 1e-2; authors 0.1 Lion)")
    q.add_argument("--seed", type=seed_arg, default=None, help="seed of the re-noising draws (default 0)")
    q.add_argument("--eval-draws", type=lim.arg_int(0, lim.MAX_BATCH), default=4,
                   help="measure the combined loss on N fixed draws before and "
                   "after (default 4; 0 = off)")
    add_size_options(q)
    q.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    q.add_argument("--save-dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of the saved file")
    q.add_argument("--resume", action="store_true", help="continue the stopped run of --out from its checkpoint "
                   "(the newest run folder of its name: checkpoint.safetensors and state.safetensors: student "
                   "weights, optimiser, step; the teachers run again with the same seeds), giving the uninterrupted "
                   "run's result")
    from ._previews import add_preview_options

    add_preview_options(q)
    from ._parallel import add_run_dir_option

    add_run_dir_option(q)
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=run_merge)


def _reference_latents(bundle, path: str, frames, height, width):
    from .. import media
    from ..sampling import encode_frames

    f0, h0, w0 = bundle.default_size
    h, w = int(height or h0), int(width or w0)
    p = Path(path)
    if not p.exists():
        raise DualAdapterError(f"--reference {path!r} does not exist")
    ext = p.suffix.lower()
    # a clip by its extension (media.CLIP_EXTENSIONS); a WebP is a clip only when animated, else a photo
    if ext in media.CLIP_EXTENSIONS and (ext != ".webp" or media.probe_clip(p)["n_frames"] > 1):
        x, _ = media.load_clip(p, num_frames=int(frames or f0), short_policy="loop")
    else:
        x = media.load_image(p)[None]
    return encode_frames(bundle, media.fit_frames(x, h, w))


def run_influence(args) -> int:
    from ..customttt import prompt_influence
    from ..progress import TextProgress as _TextProgress
    from ._common import load_bundle, preflight

    concepts = {}
    if args.appearance_prompt:
        concepts["appearance"] = args.appearance_prompt
    if args.motion_prompt:
        concepts["motion"] = args.motion_prompt
    for c in args.concept:
        if "=" not in c:
            raise DualAdapterError(f"--concept {c!r}: expected NAME=PROMPT")
        k, v = c.split("=", 1)
        concepts[k.strip()] = v
    if not concepts:
        raise DualAdapterError("give --appearance-prompt and/or --motion-prompt (or --concept NAME=PROMPT)")
    js = _new_file(args.json, (".json",), "--json") if args.json else None
    pl = _new_file(args.plot, (".png",), "--plot") if args.plot else None
    if args.reference and not Path(args.reference).is_file():
        raise DualAdapterError(f"--reference {args.reference!r} does not exist")
    preflight(args, args.frames, args.height, args.width)  # before the model loads
    bundle = load_bundle(args)
    lat = _reference_latents(bundle, args.reference, args.frames, args.height, args.width) if args.reference else None
    res = prompt_influence(bundle, concepts, args.neutral_prompt, group_size=args.group_size, groups=_groups(args.groups),
                           timesteps=_ints(args.timesteps, "--timesteps"), seeds=_ints(args.seeds, "--seeds"),
                           latents=lat, space=args.space, top_k=args.top_k, num_frames=args.frames,
                           height=args.height, width=args.width, callback=_TextProgress("prompt-influence", args.quiet))
    print(res.table())
    from ..dispatch import is_unet

    for c, blocks in res.recommended.items():
        ids = ','.join(map(str, blocks))
        # on a U-Net a block is a text layer, and the selective LoRAs are customttt-animatediff's
        hint = (f"customttt-animatediff --{'motion' if c == 'motion' else 'appearance'}-layers {ids}"
                if is_unet(bundle) else f"train-lora --blocks {ids}")
        print(f"  {c}: {hint}")
    if js is not None:
        from ..io import atomic_write_text

        atomic_write_text(js, json.dumps(res.to_dict(), indent=2))
        print(f"wrote {js}")
    if pl is not None:
        from ..media import save_image

        save_image(res.plot()[0], pl)
        print(f"wrote {pl}")
    return 0


def run_merge(args) -> int:
    import torch

    from .. import customttt as C
    from ..lora import load_lora
    from ..progress import TextProgress as _TextProgress
    from ._common import load_bundle, preflight
    from ._parallel import run_folder

    out = _new_file(args.out, (".safetensors",), "--out")
    over = dict(steps=args.steps, teacher_steps=args.teacher_steps, teacher_schedule=args.teacher_schedule,
                teacher_scheduler=args.teacher_scheduler, teacher_cfg=args.teacher_cfg,
                negative_prompt=args.negative_prompt, teacher_seed=args.teacher_seed,
                appearance_frames=args.appearance_frames, reference=args.reference, w_appearance=args.w_appearance,
                w_motion=args.w_motion, dropout=args.dropout, optimizer=args.optimizer, lr=args.lr,
                weight_decay=args.weight_decay, seed=args.seed, eval_draws=args.eval_draws,
                num_frames=args.frames, height=args.height, width=args.width)
    over = {k: v for k, v in over.items() if v is not None}
    if args.renoise_timesteps:
        lo, hi = (_ints(args.renoise_timesteps, "--renoise-timesteps") + [None, None])[:2]
        if hi is None:
            raise DualAdapterError(f"--renoise-timesteps {args.renoise_timesteps!r}: expected LO,HI")
        over["renoise_timesteps"] = (lo, hi)
    if args.separate_teacher_noise:
        over["shared_teacher_noise"] = False
    if args.regenerate_references:
        over["regenerate_references"] = True
    if args.no_gradient_checkpointing:
        over["gradient_checkpointing"] = False
    cfg = C.TTTConfig.authors(**over) if args.authors else C.TTTConfig(**over)
    cfg.validate()
    a, m = load_lora(args.appearance), load_lora(args.motion)
    preflight(args, args.frames, args.height, args.width)  # before the model loads
    # <out>.lock (a second run with the same --out is refused while this one runs) and the run folder
    with run_folder(args, out, "customttt", "ttt-merge") as run:
        bundle = load_bundle(args)
        from ._previews import preview_options, report

        pv = preview_options(args, bundle, run.previews)
        res = C.ttt_merge(bundle, a, m, appearance_prompt=args.appearance_prompt, motion_prompt=args.motion_prompt,
                          prompt=args.prompt, config=cfg, callback=_TextProgress("ttt-merge", args.quiet),
                          checkpoint_path=run.checkpoint, resume=args.resume, preview=pv)
        dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.save_dtype]
        path = res.lora.save(out, dtype=dt)
        run.finish(res.train.losses, title="TTT merge loss")
        if pv is not None:
            report(args, res.train.preview_seconds, res.train.seconds, pv.folder)
    s = res.seconds
    blocks = f", blocks {res.lora.blocks}" if res.lora.blocks is not None else ""
    print(f"wrote {path} ({len(res.lora.modules)} modules{blocks}; {res.train.steps_done} TTT steps, "
          f"teachers {s['teachers']:.1f}s + TTT {s['ttt']:.1f}s); run folder {run.path}")
    if res.eval:
        b, e = res.eval["before"], res.eval["after"]
        print(f"combined loss on {cfg.eval_draws} fixed draws: {b['loss']:.4f} -> {e['loss']:.4f}")
    return 0
