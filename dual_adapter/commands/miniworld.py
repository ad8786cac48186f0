"""``python -m dual_adapter miniworld <action>``: the miniature pretrained world (README "Miniature world").

Actions: ``pretrain`` (train the ``mini`` CogVideoX on held-in videos; seeded, resumable, progress
lines, loss curve), ``evaluate`` (the base model's quality on held-in prompts, by the pixel scorers).
"""
from __future__ import annotations

import sys
import time

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
                       description="A miniature pretrained CogVideoX world of sprite videos (README, 'Miniature world').")
    acts = p.add_subparsers(dest="action", metavar="ACTION")

    pt = acts.add_parser("pretrain", help="pretrain the 'mini' CogVideoX on held-in world videos",
                         description="Pretrain the mini CogVideoX (real transformer, space-to-depth VAE, word-level "
                                     "T5) on held-in videos of the world and write it as a diffusers-layout folder. "
                                     "Run files (checkpoint, optimiser state, losses) go to OUT.run/.")
    pt.add_argument("--out", required=True, help="new model folder to write (the shipped one is dual_adapter/models/mini)")
    pt.add_argument("--steps", type=int, default=6000, help="optimiser steps (6000)")
    pt.add_argument("--batch", type=int, default=8, help="videos per step (8)")
    pt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3; warm-up then cosine)")
    pt.add_argument("--seed", type=int, default=0, help="seed of the init and of every batch (0)")
    pt.add_argument("--threads", type=int, default=1, help="torch CPU threads (1; 0 = torch's default)")
    pt.add_argument("--checkpoint-every", type=int, default=250, help="checkpoint every N steps (250)")
    pt.add_argument("--resume", action="store_true", help="continue from OUT.run/ after an interruption")
    pt.add_argument("--log-every", type=int, default=50, help="print a progress line every N steps (50)")
    pt.set_defaults(func=_pretrain)

    ev = acts.add_parser("evaluate", help="score the base model on held-in prompts (quality bar)",
                         description="Sample held-in prompts with a model and score background, colour, shape, "
                                     "texture, size and motion from the frames (dual_adapter.miniworld.scorers).")
    ev.add_argument("--model", default="mini", help="'mini' (default) or a mini-layout folder")
    ev.add_argument("--n", type=int, default=32, help="prompts (32)")
    ev.add_argument("--steps", type=int, default=25, help="denoising steps (25)")
    ev.add_argument("--cfg", type=float, default=6.0, help="guidance scale (6)")
    ev.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (0)")
    ev.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ev.add_argument("--json", default=None, help="also write the per-sample results to this JSON file")
    ev.set_defaults(func=_evaluate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _pretrain(args) -> int:
    from ..miniworld.pretrain import PretrainConfig, pretrain_mini

    cfg = PretrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                         checkpoint_every=args.checkpoint_every)
    print(f"pretraining mini: {cfg}", flush=True)
    pretrain_mini(args.out, cfg, resume=args.resume, callback=_Progress(args.log_every))
    print(f"wrote {args.out}", flush=True)
    return 0


def _evaluate(args) -> int:
    import json

    import torch

    from ..backbone import load_model
    from ..miniworld.scorers import evaluate_base

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_model(args.model) if args.model == "mini" else __import__(
        "dual_adapter.miniworld.model", fromlist=["load_mini"]).load_mini(args.model)
    rep = evaluate_base(bundle, n=args.n, steps=args.steps, cfg=args.cfg, seed=args.seed)
    for k, v in rep["summary"].items():
        print(f"{k:>12}: {v:.3f}" if isinstance(v, float) else f"{k:>12}: {v}")
    if args.json:
        from ..io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rep, indent=2), overwrite=False)
    return 0
