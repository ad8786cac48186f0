"""``python -m dual_adapter demo``: the main job end to end on the shipped example inputs.

Subject photos (``examples/dog``) + a motion clip (``examples/guitar.mp4``) -> DualReal adapters trained
jointly -> a video of the subject doing the motion, plus the loss curve, the StageBlender readout and
a metrics report. Runs on the built-in tiny model on CPU by default (about 15 s); ``--model``
takes a real CogVideoX folder for real results.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import DualAdapterError
from ..seeds import seed_arg

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def register(sub) -> None:
    from .generate import add_model_options

    p = sub.add_parser("demo", help="DualReal end to end on the shipped example photos and clip",
                       description="Train DualReal on subject photos + a motion clip, generate the subject doing "
                                   "the motion, and write the video, adapters, loss curve and a metrics report.")
    add_model_options(p)
    p.add_argument("--subject", nargs="+", default=[str(EXAMPLES / "dog")], metavar="PHOTO_OR_DIR",
                   help="subject photos (default: the shipped examples/dog)")
    p.add_argument("--motion", nargs="+", default=[str(EXAMPLES / "guitar.mp4")], metavar="CLIP",
                   help="motion clips (default: the shipped examples/guitar.mp4)")
    p.add_argument("--identity-prompt", default="dog *", help="identity prompt ('dog *')")
    p.add_argument("--motion-prompt", default="a person is playing guitar", help="motion prompt")
    p.add_argument("--prompt", default="dog * is playing guitar", help="inference prompt")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300 on tiny, 1000 otherwise)")
    p.add_argument("--sample-steps", type=int, default=None, help="denoising steps (default: 25 on tiny, 50 otherwise)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of training and sampling (0)")
    p.add_argument("--out-dir", default=None, help="where to write (default: output/demo_NNNNN_/, a new folder)")
    p.set_defaults(func=run)


def _new_dir(base: Path) -> Path:
    """Reserve a new counter-named folder ``base/demo_NNNNN_`` (never an existing one)."""
    from ..io import next_free_dir

    return next_free_dir(base, "demo")


def run(args) -> int:
    import os

    import torch

    from .. import backbone, media, sampling
    from ..dualreal import DualRealOptions, DualRealPatch, finalize_run, load_motion_clips, train_dualreal
    from ..dualreal.readout import plot_stageblender, stageblender_readout
    from ..metrics.report import format_table, plot_result
    from ..metrics.suite import evaluate_video
    from ..plots import plot_loss_curve
    from ..training import TrainConfig, loss_summary
    from ..progress import TextProgress
    from .generate import load_bundle

    t0 = time.time()
    tiny = args.model in backbone.TINY_VARIANTS
    out = Path(args.out_dir) if args.out_dir else _new_dir(Path(os.environ.get("DUAL_ADAPTER_OUTPUT", "output")))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise DualAdapterError(f"--out-dir {str(out)!r} is not empty; choose a new folder")
    bundle = load_bundle(args)
    frames, height, width = bundle.default_size
    photos = media.load_images(args.subject)
    defaults = DualRealOptions()  # the authors' clip decoding: consecutive native frames
    clips = load_motion_clips(args.motion, frames, defaults.clip_sampling, defaults.clip_fps)
    print(f"subject: {len(photos)} photo(s); motion: {len(clips)} clip(s) of {frames} frames; "
          f"model {bundle.name} ({frames} x {height} x {width})", file=sys.stderr)

    steps = args.steps or (300 if tiny else 1000)
    options = DualRealOptions(num_frames=frames, height=height, width=width, motion_batch=1 if tiny else 3)
    train = TrainConfig(steps=steps, lr=3e-3 if tiny else 1e-3, warmup_steps=min(200, steps // 10), seed=args.seed,
                        gradient_checkpointing=not tiny, checkpoint_every=max(steps // 5, 1))
    encoder = None
    if tiny:
        from ..reference import build_tiny_reference_encoder

        encoder = build_tiny_reference_encoder(args.seed)
    adapters_path = out / "adapters.safetensors"
    res = train_dualreal(bundle, photos, args.identity_prompt, clips, args.motion_prompt, reference_encoder=encoder,
                         options=options, train=train, callback=TextProgress("training"), out=adapters_path)
    finalize_run(res, adapters_path)
    media.save_image(plot_loss_curve(res.losses, "DualReal joint training", group_by="phase", smooth=10)[0],
                     out / "loss_curve.png")

    ref = None
    if encoder is not None:
        from ..reference import encode_reference

        ref = encode_reference(encoder, photos[0])
    pos = backbone.encode_prompt(bundle, args.prompt)
    neg = backbone.encode_prompt(bundle, "")
    n_steps = args.sample_steps or (25 if tiny else 50)
    lat = sampling.sample(bundle, pos, neg, steps=n_steps, cfg=6.0, seed=args.seed,
                          patches=[DualRealPatch(res.adapters, ref)], callback=TextProgress("sampling"))
    video = sampling.decode_latents(bundle, lat)[0]
    media.write_video(video, out / "video.mp4", fps=8)

    readout = stageblender_readout(bundle, res.adapters, pos, reference=ref, negative_embeds=neg, seed=args.seed,
                                   steps=n_steps)
    media.save_image(plot_stageblender(readout)[0], out / "stageblender.png")

    report = evaluate_video(video, prompt=args.prompt, references=torch.stack(
        [media.fit_frames(p.unsqueeze(0), height, width)[0] for p in photos]), metrics="all", fps=8.0,
        callback=TextProgress("metrics"))
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "metrics.txt").write_text(format_table(report) + "\n")
    import numpy as np

    media.save_image(torch.from_numpy(np.asarray(plot_result(report))), out / "metrics.png")

    first, last = loss_summary(res.losses)
    print(format_table(report))
    print(f"\nDualReal demo done in {time.time() - t0:.0f} s ({steps} training steps, loss {first:.3f} -> {last:.3f}).")
    print(f"wrote to {out}/:")
    for name, what in (("video.mp4", "the subject doing the motion"), ("adapters.safetensors", "DA-blocks + StageBlender"),
                       ("loss_curve.png", "training loss per phase"), ("adapters.losses.jsonl", "per-step losses"),
                       ("stageblender.png", "identity weight per block group and step (paper Fig. 7)"),
                       ("metrics.txt", "metrics table"), ("metrics.json", "metrics report"),
                       ("metrics.png", "metrics plot")):
        print(f"  {out / name}  {what}")
    if tiny:
        print("(tiny is a random model: the files show the pipeline works, not the quality; pass --model with a "
              "CogVideoX folder for real results)")
    return 0
