"""Ceiling of the mini-world scorers: how often the pixel classifiers read the right attributes and motion from
ground-truth videos, and from the same videos after a round trip through the shipped ``mini``'s VAE substitute.

    python benchmarks/miniworld_scorer_ceiling.py [--n 120] [--seed 5]

Prints one line per case (share right per attribute). These are the figures docs/miniworld.md
section quotes for the scorers and for ``BlockPCAVAE``; no model sampling is involved (about 1 min on 2 cores).
"""
from __future__ import annotations

import argparse

import torch

from dual_adapter.miniworld import scorers as S
from dual_adapter.miniworld import world as W

ATTRS = ("background", "colour", "shape", "size", "texture")


def shares(videos: torch.Tensor, specs) -> dict:
    """Share of ``videos [N, T, H, W, 3]`` whose classified attributes / motion equal their spec's."""
    right = dict.fromkeys(ATTRS + ("motion",), 0)
    for v, spec in zip(videos, specs):
        t = S.track(v)
        got = S.classify_attributes(t)
        for a in ATTRS:
            right[a] += got[a] == getattr(spec, a)
        right["motion"] += S.classify_motion(t)[0] == spec.motion
    return {k: round(c / len(specs), 3) for k, c in right.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120, help="held-in videos (120)")
    ap.add_argument("--seed", type=int, default=5, help="seed of the specs (5)")
    args = ap.parse_args(argv)
    from dual_adapter.models import load_model
    from dual_adapter.sampling import decode_latents, encode_frames

    it = W.pretrain_sampler(args.seed)
    specs = [next(it) for _ in range(args.n)]
    videos = torch.stack([W.render(s, seed=i) for i, s in enumerate(specs)])
    print(f"ground truth ({args.n} held-in videos):", shares(videos, specs))
    bundle = load_model("mini")
    with torch.no_grad():
        rec = torch.cat([decode_latents(bundle, encode_frames(bundle, videos[i:i + 16])) for i in range(0, args.n, 16)])
    print(f"round trip through the mini's {type(bundle.vae).__name__} (mean abs error "
          f"{float((rec - videos).abs().mean()):.4f}):", shares(rec, specs))


if __name__ == "__main__":
    main()
