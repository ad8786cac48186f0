"""``python -m dual_adapter demo``: the main job end to end.

By default on the built-in pretrained ``mini`` model (docs/miniworld.md) with a held-out
mini-world subject (``--world-subject``, default ``striped_star``: photos drawn by
:func:`~dual_adapter.miniworld.world.subject_photos`) and a held-out motion (``--world-motion``, default
``orbit``: clips of *other* sprites, :func:`~dual_adapter.miniworld.world.motion_clips`) -> DualReal
adapters trained jointly -> a video sampled for the subject doing the motion, plus a strip image (subject photos |
motion clip frames | result frames), the loss curve, the StageBlender readout, a metrics report and the
mini-world scores (identity with its shape / colour / texture parts, motion, text, leakage) with what the video
shows in words (:func:`~dual_adapter.miniworld.verdict.describe_video`). No files are read: the world is drawn by code.

``--subject`` / ``--motion`` take real photos and clips instead (default for models other than mini:
the shipped ``examples/dog`` and ``examples/guitar.mp4``); ``--model PATH`` runs a real CogVideoX;
``--model tiny`` the random tiny model (pipeline check only).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError
from ..seeds import seed_arg

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def register(sub) -> None:
    from ._common import add_model_options

    from ..miniworld.world import HELD_OUT_MOTIONS, HELD_OUT_SUBJECTS

    p = sub.add_parser("demo", help="DualReal end to end: a held-out mini-world subject doing a held-out motion",
                       description="Train DualReal on subject photos + motion clips, generate the subject doing "
                                   "the motion, and write the video, a strip image (photos | clip | result), "
                                   "adapters, loss curve and a metrics report. Default: the pretrained 'mini' model "
                                   "with mini-world inputs drawn by code.")
    add_model_options(p, unets=False)  # DualReal runs on CogVideoX
    p.set_defaults(model="mini")
    p.add_argument("--world-subject", default="striped_star", choices=sorted(HELD_OUT_SUBJECTS),
                   help="mini-world subject the model never saw (default striped_star); used on mini without --subject")
    p.add_argument("--world-motion", default="orbit", choices=list(HELD_OUT_MOTIONS),
                   help="mini-world motion the model never saw (default orbit); used on mini without --motion")
    p.add_argument("--subject", nargs="+", default=None, metavar="PHOTO_OR_DIR",
                   help="subject photos (default: mini-world photos on mini, else the shipped examples/dog)")
    p.add_argument("--motion", nargs="+", default=None, metavar="CLIP_OR_DIR",
                   help="motion clips or folders of clips (default: mini-world clips on mini, else the shipped examples/guitar.mp4)")
    p.add_argument("--identity-prompt", default=None, help="identity prompt (mini world: 'a * star on a gray "
                   "background'; real inputs: 'dog *')")
    p.add_argument("--motion-prompt", default=None, help="motion prompt (mini world: 'a shape orbiting on a gray "
                   "background'; real inputs: 'a person is playing guitar')")
    p.add_argument("--prompt", default=None, help="inference prompt (mini world: 'a * star orbiting on a gray "
                   "background'; real inputs: 'dog * is playing guitar')")
    p.add_argument("--steps", type=lim.arg_int(1, lim.MAX_TRAIN_STEPS), default=None,
                   help="training steps (default: 1000, the authors' default, on mini and real models; 300 on tiny)")
    p.add_argument("--sample-steps", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=None,
                   help="denoising steps (default: 25 on mini and tiny, 50 otherwise)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of training and sampling (0)")
    p.add_argument("--out-dir", default=None, help="where to write (default: output/demo_NNNNN_/, a new folder)")
    p.set_defaults(func=run)


def _new_dir(base: Path) -> Path:
    """Reserve a new counter-named folder ``base/demo_NNNNN_`` (never an existing one)."""
    from ..io import next_free_dir

    return next_free_dir(base, "demo")


def run(args) -> int:
    """Check ``--model`` / ``--device`` (configs only), then reserve the output folder and run the demo in it; a
    demo that fails before writing anything removes the folder it made (no empty ``demo_NNNNN_`` is left)."""
    import os

    from ..dispatch import is_unet_name
    from ..models import refuse_other_backbone
    from ._common import preflight

    if is_unet_name(args.model):  # DualReal needs a transformer backbone: a U-Net is refused by name
        refuse_other_backbone(args.model)
    preflight(args)
    created = not (args.out_dir and Path(args.out_dir).exists())
    out = Path(args.out_dir) if args.out_dir else _new_dir(Path(os.environ.get("DUAL_ADAPTER_OUTPUT", "output")))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise DualAdapterError(f"--out-dir {str(out)!r} is not empty; choose a new folder")
    try:
        return _demo(args, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _demo(args, out: Path) -> int:
    import torch

    from .. import media, sampling
    from ..backbones import cogvideox
    from ..dualreal import DualRealOptions, DualRealPatch, finalize_run, load_motion_clips, train_dualreal
    from ..dualreal.readout import plot_stageblender, stageblender_readout
    from ..metrics.report import format_table, plot_result
    from ..metrics.suite import evaluate_video
    from ..plots import plot_loss_curve
    from ..training import TrainConfig, loss_summary
    from ..progress import TextProgress
    from ._common import load_bundle

    from ..miniworld import world as W

    t0 = time.time()
    tiny = args.model in cogvideox.TINY_VARIANTS
    bundle = load_bundle(args)
    mini = bundle.name == "mini"  # the loader's decision: the shipped mini, or a folder `miniworld pretrain` wrote
    small = tiny or mini  # CPU-sized built-in models
    world_inputs = mini and args.subject is None and args.motion is None
    frames, height, width = bundle.default_size
    if world_inputs:
        subj, mot = args.world_subject, args.world_motion
        photos = list(W.subject_photos(subj, n=4, seed=args.seed, height=height, width=width))
        clips, clip_specs = W.motion_clips(mot, n=3, seed=args.seed, frames=frames, height=height, width=width,
                                           exclude=subj)
        id_prompt = args.identity_prompt or W.identity_prompt(subj)
        mo_prompt = args.motion_prompt or W.motion_prompt(mot)
        prompt = args.prompt or W.combined_prompt(subj, mot)
        print(f"mini world: subject {subj} ({W.HELD_OUT_SUBJECTS[subj]}), motion {mot} done by "
              f"{', '.join(f'{s.colour} {s.texture} {s.shape}' for s in clip_specs)} in the clips", file=sys.stderr)
    else:
        photos = media.load_images(args.subject or [str(EXAMPLES / "dog")])
        defaults = DualRealOptions()  # the authors' clip decoding: consecutive native frames
        clips = load_motion_clips(args.motion or [str(EXAMPLES / "guitar.mp4")], frames, defaults.clip_sampling,
                                  defaults.clip_fps)
        id_prompt = args.identity_prompt or "dog *"
        mo_prompt = args.motion_prompt or "a person is playing guitar"
        prompt = args.prompt or "dog * is playing guitar"
    print(f"subject: {len(photos)} photo(s); motion: {len(clips)} clip(s) of {frames} frames; "
          f"model {bundle.name} ({frames} x {height} x {width})", file=sys.stderr)

    steps = args.steps or (300 if tiny else 1000)
    options = DualRealOptions(num_frames=frames, height=height, width=width, motion_batch=1 if small else 3)
    train = TrainConfig(steps=steps, lr=3e-3 if tiny else 1e-3, warmup_steps=min(200, steps // 10), seed=args.seed,
                        gradient_checkpointing=not small, checkpoint_every=max(steps // 5, 1))
    from .dualreal import encoder_for  # train-dualreal's rule: tiny -> the tiny CLIP, mini -> "mini", else none

    encoder = encoder_for(None, bundle.name, None)
    adapters_path = out / "adapters.safetensors"
    res = train_dualreal(bundle, photos, id_prompt, clips, mo_prompt, reference_encoder=encoder,
                         options=options, train=train, callback=TextProgress("training"), out=adapters_path)
    finalize_run(res, adapters_path)
    media.save_image(plot_loss_curve(res.losses, "DualReal joint training", group_by="phase", smooth=10)[0],
                     out / "loss_curve.png")

    ref = None
    if encoder is not None:
        from ..reference import encode_reference

        ref = encode_reference(encoder, photos[0])
    pos = cogvideox.encode_prompt(bundle, prompt)
    neg = cogvideox.encode_prompt(bundle, "")
    n_steps = args.sample_steps or (25 if small else 50)
    lat = sampling.sample(bundle, pos, neg, steps=n_steps, cfg=6.0, seed=args.seed,
                          patches=[DualRealPatch(res.adapters, ref)], callback=TextProgress("sampling"))
    video = sampling.decode_latents(bundle, lat)[0]
    media.write_video(video, out / "video.mp4", fps=8)
    from ..plots import input_output_strip

    photo_t = torch.stack([media.fit_frames(p.unsqueeze(0), height, width)[0] for p in photos])
    clip_t = media.fit_frames(clips[0], height, width)
    media.save_image(input_output_strip(photo_t, clip_t, video), out / "strip.png")

    readout = stageblender_readout(bundle, res.adapters, pos, reference=ref, negative_embeds=neg, seed=args.seed,
                                   steps=n_steps)
    media.save_image(plot_stageblender(readout)[0], out / "stageblender.png")

    report = evaluate_video(video, prompt=prompt, references=photo_t, metrics="all", fps=8.0,
                            callback=TextProgress("metrics"))
    verdict = None
    if world_inputs:
        from ..miniworld.verdict import describe_video

        s = W.HELD_OUT_SUBJECTS[args.world_subject]
        worded = W.combined_prompt(args.world_subject, args.world_motion,
                                   token=" ".join([s.colour] + ([] if s.texture == "plain" else [s.texture])))
        verdict = describe_video(video, subject=args.world_subject, motion=args.world_motion, photos=photo_t,
                                 clips=[clip_t] + [media.fit_frames(c, height, width) for c in clips[1:]],
                                 prompt=worded)
        report["miniworld"] = {**verdict["scores"], "true_video_range": verdict["truth"], "seen": verdict["seen"],
                               "summary": verdict["summary"]}
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "metrics.txt").write_text(format_table(report) + "\n")
    import numpy as np

    media.save_image(torch.from_numpy(np.asarray(plot_result(report))), out / "metrics.png")

    first, last = loss_summary(res.losses)
    print(format_table(report))
    if verdict is not None:
        print("\nwhat video.mp4 shows, read from its pixels by the mini-world scorers (docs/demo.md):")
        print("\n".join(verdict["lines"]))
    print(f"\nDualReal demo done in {time.time() - t0:.0f} s ({steps} training steps, loss {first:.3f} -> {last:.3f}).")
    print(f"wrote to {out}/:")
    for name, what in (("video.mp4", "the generated video" + (" (what it shows: above)" if verdict else "")),
                       ("strip.png", "subject photos | motion clip frames | result frames"),
                       ("adapters.safetensors", "DA-blocks + StageBlender"),
                       ("loss_curve.png", "training loss per phase"), ("adapters.losses.jsonl", "per-step losses"),
                       ("stageblender.png", "identity weight per block group and step (paper Fig. 7)"),
                       ("metrics.txt", "metrics table"), ("metrics.json", "metrics report"),
                       ("metrics.png", "metrics plot")):
        print(f"  {out / name}  {what}")
    if mini:
        print("(mini is a small pretrained model of a sprite world: docs/miniworld.md gives its measured "
              "quality; pass --model with a CogVideoX folder for real photos and clips)")
    if tiny:
        print("(tiny is a random model: the files show the pipeline works, not the quality; pass --model with a "
              "CogVideoX folder for real results)")
    return 0
