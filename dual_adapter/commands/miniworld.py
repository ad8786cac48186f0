"""``python -m dual_adapter miniworld <action>``: the miniature pretrained world (docs/miniworld.md).

Actions: ``pretrain`` (train the ``mini`` CogVideoX on held-in videos; seeded, resumable, progress
lines, loss curve), ``evaluate`` (the base model's quality on held-in prompts, by the pixel scorers),
``score`` (the pixel scorers on video files, e.g. a workflow's WebP),
``benchmark`` (the papers' comparison in miniature: :mod:`dual_adapter.miniworld.benchmark`).
"""
from __future__ import annotations

import time

from .. import limits as lim
from ..errors import DualAdapterError


class _Progress:
    """Progress lines for logs: every ``every`` steps, the mean loss since the last line, s/step and ETA."""

    def __init__(self, every: int = 50):
        self.every, self.t0, self.buf, self.last = every, time.time(), [], None

    def __call__(self, step, total, info):
        self.buf.append(float(info.get("loss", float("nan"))))
        if step % self.every and step != total:
            return
        now = time.time()
        if self.last is None:
            self.last = (self.t0, step - len(self.buf))
        dt = (now - self.last[0]) / max(1, step - self.last[1])
        self.last = (now, step)
        eta = dt * (total - step)
        print(f"step {step}/{total}  loss {sum(self.buf) / len(self.buf):.4f}  lr {info.get('lr', 0):.2e}  "
              f"{dt:.2f} s/step  elapsed {(now - self.t0) / 60:.1f} min  eta {eta / 60:.1f} min", flush=True)
        self.buf = []


def register(sub) -> None:
    p = sub.add_parser("miniworld", help="the miniature world: pretrain / evaluate the built-in 'mini' model",
                       description="A miniature pretrained CogVideoX world of sprite videos (docs/miniworld.md).")
    acts = p.add_subparsers(dest="action", metavar="ACTION")

    pt = acts.add_parser("pretrain", help="pretrain the 'mini' CogVideoX on held-in world videos",
                         description="Pretrain the mini CogVideoX (real transformer, block-PCA VAE substitute, word-level "
                                     "T5) on held-in videos of the world and write it as a diffusers-layout folder. "
                                     "Run files (checkpoint, optimiser state, losses) go to OUT.run/.")
    pt.add_argument("--out", required=True, help="new model folder to write (the shipped one is dual_adapter/models/mini)")
    pt.add_argument("--steps", type=lim.arg_int(1, lim.MAX_TRAIN_STEPS), default=10000, help="optimiser steps (10000)")
    pt.add_argument("--batch", type=lim.arg_int(1, lim.MAX_BATCH), default=8, help="videos per step (8)")
    pt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3; warm-up then cosine)")
    pt.add_argument("--seed", type=int, default=0, help="seed of the init and of every batch (0)")
    pt.add_argument("--threads", type=int, default=1, help="torch CPU threads (1; 0 = torch's default)")
    pt.add_argument("--checkpoint-every", type=int, default=250, help="checkpoint every N steps (250)")
    pt.add_argument("--device", default="cpu", help="cpu (default, the shipped recipe) or cuda / cuda:N for longer runs")
    pt.add_argument("--workers", type=int, default=0,
                    help="processes drawing the batches ahead of training (0: in this process; same data for any "
                         "number; on a GPU, e.g. 12)")
    pt.add_argument("--mixed-precision", choices=("fp32", "bf16"), default="fp32",
                    help="fp32 (default, the shipped recipe) or bf16 autocast (for GPU runs)")
    pt.add_argument("--warmup", type=int, default=200, help="linear warm-up steps before the cosine decay (200)")
    pt.add_argument("--init", default=None, metavar="MODEL",
                    help="continue training a trained mini: 'mini' (the shipped one) or a folder this command wrote "
                         "(its text encoder and VAE are kept; --seed then draws only the batches). Default: a fresh "
                         "model from --seed")
    pt.add_argument("--resume", action="store_true", help="continue from OUT.run/ after an interruption (pass the "
                                                          "same options)")
    pt.add_argument("--log-every", type=int, default=50, help="print a progress line every N steps (50)")
    pt.set_defaults(func=_pretrain)

    ev = acts.add_parser("evaluate", help="score the base model on held-in prompts (quality bar)",
                         description="Sample held-in prompts with a model and score background, colour, shape, "
                                     "texture, size and motion from the frames (dual_adapter.miniworld.scorers).")
    ev.add_argument("--model", default="mini", help="'mini' (default) or a mini-layout folder")
    ev.add_argument("--n", type=int, default=32, help="prompts (32)")
    ev.add_argument("--steps", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=25, help="denoising steps (25)")
    ev.add_argument("--cfg", type=lim.arg_float(lim.MIN_CFG, lim.MAX_CFG), default=6.0, help="guidance scale (6)")
    ev.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (0)")
    ev.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = one for the mini, "
                    "unless OMP_NUM_THREADS or DUAL_ADAPTER_THREADS says otherwise)")
    ev.add_argument("--json", default=None, help="also write the per-sample results to this JSON file")
    ev.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    ev.set_defaults(func=_evaluate)

    sc = acts.add_parser("score", help="score video files with the world's pixel scorers (identity, motion, text, leakage)",
                         description="Score clips (the WebP / GIF / MP4 the pack's workflows and commands write) with "
                                     "dual_adapter.miniworld.scorers: identity against subject photos, motion against a "
                                     "world motion or a reference clip, text against a worded prompt, leakage against "
                                     "motion clips. Each score needs its input; the motion class is always printed.")
    sc.add_argument("video", nargs="+", help="clip file(s) to score")
    sc.add_argument("--prompt", default=None, help='the worded prompt, e.g. "a yellow striped star orbiting on a gray background"')
    sc.add_argument("--subject", default=None, help="the subject's photos: a folder or an image (e.g. examples/mini/striped_star)")
    sc.add_argument("--motion", default=None, help="a world motion name (orbit, zigzag, bounce, left, ...) or a reference clip")
    sc.add_argument("--clips", nargs="+", default=None, help="motion clips (files or folders) for leakage (e.g. examples/mini/orbit)")
    sc.add_argument("--json", default=None, help="also write the scores to this new JSON file")
    sc.set_defaults(func=_score)

    bm = acts.add_parser("benchmark", help="the papers' comparison in miniature (every method on held-out pairs)",
                         description="Every held-out subject x motion pair over several seeds: base, identity-only, "
                                     "motion-only, merged LoRAs, DualReal and its ablations, TAP vs full motion LoRA, "
                                     "CustomTTT merges vs naive merge, scored from pixels. Writes miniworld.json, "
                                     "miniworld.md and miniworld.png (docs/miniworld.md).")
    bm.add_argument("--model", default="mini", help="'mini' (default) or a mini-layout model folder")
    bm.add_argument("--quick", action="store_true",
                    help="a few minutes: one pair (striped_star x orbit), one seed, 40 training steps, 3 TTT steps, "
                         "10 sampling steps (too few to rank methods; checks the pipeline)")
    bm.add_argument("--seeds", type=int, default=None, help="seeds per pair (2; quick 1)")
    bm.add_argument("--pairs", default=None, metavar="S:M,...",
                    help="pairs to run, e.g. 'striped_star:orbit,dotted_triangle:bounce' (default: all 9)")
    bm.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    bm.add_argument("--dualreal-steps", type=lim.arg_int(1, lim.MAX_TRAIN_STEPS), default=None,
                    help="steps of every DualReal run (800; the authors' default is 1000; quick 40)")
    bm.add_argument("--lora-steps", type=lim.arg_int(1, lim.MAX_TRAIN_STEPS), default=None,
                    help="steps of every LoRA (100; quick 40)")
    bm.add_argument("--ttt-steps", type=lim.arg_int(0, lim.MAX_TTT_STEPS), default=None,
                    help="CustomTTT merge steps (10; quick 3)")
    bm.add_argument("--sample-steps", type=lim.arg_int(1, lim.MAX_SAMPLING_STEPS), default=None,
                    help="denoising steps per video (25; quick 10)")
    bm.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads in all (0 = one for the mini, unless OMP_NUM_THREADS or "
                         "DUAL_ADAPTER_THREADS says otherwise; with --jobs > 1, one per worker)")
    bm.add_argument("--jobs", type=int, default=None,
                    help="worker processes (2; 1 = all in this process); results do not depend on it")
    bm.add_argument("--reference-encoder", choices=("mini", "tiny"), default=None,
                    help="DualReal's reference-image encoder: mini (default; an embedding that follows appearance) "
                         "or tiny (the random tiny CLIP)")
    bm.add_argument("--motion-clips", nargs="+", default=None, metavar="NAME=FOLDER",
                    help="motions besides the world's: each a folder of clips of any path (NAME is its verb in the "
                         "prompts); with no --pairs every subject is paired with them too; scored against the clips' "
                         "own sprite paths")
    bm.add_argument("--out-dir", default="benchmarks/results", help="where the three files go (benchmarks/results)")
    bm.add_argument("--overwrite", action="store_true", help="replace existing miniworld.* files in --out-dir")
    bm.set_defaults(func=_benchmark)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _pretrain(args) -> int:
    from ..miniworld.pretrain import PretrainConfig, pretrain_mini

    cfg = PretrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                         checkpoint_every=args.checkpoint_every, device=args.device, workers=args.workers,
                         mixed_precision=args.mixed_precision, warmup_steps=args.warmup, init=args.init)
    print(f"pretraining mini: {cfg}", flush=True)
    pretrain_mini(args.out, cfg, resume=args.resume, callback=_Progress(args.log_every))
    print(f"wrote {args.out}", flush=True)
    return 0


def _evaluate(args) -> int:
    import json


    from ..backbones.base import check_device
    from ..models import load_model
    from ..miniworld.scorers import evaluate_base

    device = check_device(args.device, "--device") or "cpu"
    bundle = load_model(args.model, device=device) if args.model == "mini" else __import__(
        "dual_adapter.miniworld.model", fromlist=["load_mini"]).load_mini(args.model, device=device)
    rep = evaluate_base(bundle, n=args.n, steps=args.steps, cfg=args.cfg, seed=args.seed)
    for k, v in rep["summary"].items():
        print(f"{k:>12}: {v:.3f}" if isinstance(v, float) else f"{k:>12}: {v}")
    if args.json:
        from ..io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rep, indent=2), overwrite=False)
    return 0


def _score(args) -> int:
    import json

    from ..miniworld.scorers import score_files

    rows = []
    for v in args.video:
        r = score_files(v, prompt=args.prompt, subject=args.subject, motion=args.motion, clips=args.clips)
        rows.append({"video": v, **r})
        print(v + ": " + "  ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}" for k, x in r.items()), flush=True)
    if args.json:
        from ..io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2), overwrite=False)
    return 0


def _benchmark(args) -> int:
    from ..miniworld.benchmark import BenchConfig, quick_config, run_benchmark, write_results

    over = {k: getattr(args, a) for k, a in (("seeds", "seeds"), ("dualreal_steps", "dualreal_steps"),
                                              ("lora_steps", "lora_steps"), ("ttt_steps", "ttt_steps"),
                                              ("sample_steps", "sample_steps"), ("jobs", "jobs"),
                                              ("reference_encoder", "reference_encoder"))
            if getattr(args, a) is not None}
    over.update(model=args.model, threads=args.threads)
    if args.motion_clips:
        user = {}
        for item in args.motion_clips:
            name, sep, folder = item.partition("=")
            if not sep or not name.strip() or not folder.strip():
                raise DualAdapterError(f"--motion-clips item {item!r}: expected NAME=FOLDER, e.g. circle_ccw=clips/ccw")
            user[name.strip()] = folder.strip()
        over["user_motions"] = user
    if args.pairs:
        pairs = []
        for item in args.pairs.split(","):
            if item.count(":") != 1:
                raise DualAdapterError(f"--pairs item {item!r}: expected SUBJECT:MOTION, e.g. striped_star:orbit")
            pairs.append(tuple(x.strip() for x in item.split(":")))
        over["pairs"] = pairs
    if args.methods:
        over["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    cfg = quick_config(**over) if args.quick else BenchConfig(**over)
    cfg.validate()
    out = args.out_dir
    from pathlib import Path

    there = [str(Path(out) / f"miniworld.{e}") for e in ("json", "md", "png") if (Path(out) / f"miniworld.{e}").exists()]
    if there and not args.overwrite:  # refuse before hours of work
        raise DualAdapterError(f"{', '.join(there)} exist; choose another --out-dir or pass --overwrite")
    res = run_benchmark(cfg, log=lambda m: print(m, flush=True))
    paths = write_results(res, out, overwrite=args.overwrite)
    from ..miniworld.benchmark import markdown_table

    print(markdown_table(res))
    for p in paths.values():
        print(f"wrote {p}")
    return 0
