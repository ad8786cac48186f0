"""Where a mini model loses the prompted appearance: caption sensitivity and one-step reconstructions.

    python benchmarks/miniworld_conditioning.py [--model mini] [--n 48] [--seed 123]

Three measurements on ``n`` held-in world videos (no full sampling; about 1 min on 2 cores):

* **text-embedding change**, per attribute: how far the swap below moves the frozen text encoder's output,
  ``||E(wrong) - E(right)|| / ||E(right)||`` over the caption's whole padded sequence (min / mean / max over
  the ``n`` captions). It tells whether the text path tells the values apart before the denoiser sees them.

* **caption sensitivity**, per attribute and timestep ``t``: the relative rise of the training loss
  (the shared v-prediction objective, same noise and ``t``) when one word of the caption is swapped for
  another value of that attribute (a held-in combination), ``(loss_wrong - loss_right) / loss_right``;
  the row ``empty`` swaps the whole caption for ``""``. Near 0 = the denoiser ignores that word.
* **one-step reconstruction**: the noised latent at ``t`` is denoised in one step (the model's x0
  prediction with the right caption), decoded, and classified by the world's pixel scorers
  (:func:`dual_adapter.miniworld.scorers.classify_attributes`); the share right per attribute. At low ``t``
  it shows whether the model can *draw* an attribute when the layout is given; at high ``t`` whether the
  caption alone steers it.

Prints three markdown tables. The docs/miniworld.md quotes them for the shipped ``mini``.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import replace

import torch

from dual_adapter.miniworld import world as W
from miniworld_scorer_ceiling import ATTRS, shares  # this folder: the scorers' ceiling script
SWAPS = {"shape": W.SHAPES, "colour": tuple(W.COLOURS), "texture": W.TEXTURES, "size": tuple(W.SIZES),
         "background": tuple(W.BACKGROUNDS), "motion": W.HELD_IN_MOTIONS}


def swapped(spec: W.VideoSpec, attr: str, rng: random.Random) -> W.VideoSpec:
    """``spec`` with ``attr`` set to another value drawn by ``rng``, kept held-in."""
    options = [v for v in SWAPS[attr] if v != getattr(spec, attr) and W.is_held_in(replace(spec, **{attr: v}))]
    return replace(spec, **{attr: rng.choice(options)})


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini", help="'mini' (default) or a mini-layout model folder")
    ap.add_argument("--n", type=int, default=48, help="held-in videos (48)")
    ap.add_argument("--seed", type=int, default=123, help="seed of the specs, swaps and noise (123)")
    args = ap.parse_args(argv)
    from dual_adapter.backbones.cogvideox import encode_prompt
    from dual_adapter.models import load_model
    from dual_adapter.backbones import as_backbone
    from dual_adapter.sampling import decode_latents, encode_frames
    from dual_adapter.training import diffusion_loss, make_noise_scheduler

    bundle = load_model(args.model)
    bb, sched = as_backbone(bundle), make_noise_scheduler(bundle)
    sampler = W.pretrain_sampler(args.seed)
    specs = [next(sampler) for _ in range(args.n)]
    z = encode_frames(bundle, torch.stack([W.render(s, seed=args.seed + i) for i, s in enumerate(specs)]))
    right = encode_prompt(bundle, [W.caption(s) for s in specs])
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed))
    rng = random.Random(args.seed)
    wrong = {a: encode_prompt(bundle, [W.caption(swapped(s, a, rng)) for s in specs]) for a in SWAPS}
    wrong["empty"] = encode_prompt(bundle, [""] * len(specs))

    print(f"Text-embedding change of {args.model!r} ({args.n} captions): relative L2 change when one word is swapped\n")
    print("| attribute | min | mean | max |\n|---|---|---|---|")
    for a, e in wrong.items():
        rel = (e - right).flatten(1).norm(dim=1) / right.flatten(1).norm(dim=1)
        print(f"| {a} | {rel.min():.2f} | {rel.mean():.2f} | {rel.max():.2f} |")
    print()

    ts = (200, 500, 800)
    print(f"Caption sensitivity of {args.model!r} ({args.n} held-in videos): relative loss rise when one word is "
          f"swapped\n")
    print("| t | loss | " + " | ".join(wrong) + " |")
    print("|---" * (len(wrong) + 2) + "|")
    for t in ts:
        tt = torch.full((len(specs),), t)
        base = diffusion_loss(bundle.transformer, sched, z, right, timesteps=tt, noise=noise, reduce=False).mean()
        rise = [float((diffusion_loss(bundle.transformer, sched, z, e, timesteps=tt, noise=noise, reduce=False).mean()
                       - base) / base) for e in wrong.values()]
        print(f"| {t} | {float(base):.3f} | " + " | ".join(f"{r:+.3f}" for r in rise) + " |")

    print("\nOne-step reconstruction: share of attributes read right from the decoded x0 prediction\n")
    print("| input | " + " | ".join(ATTRS) + " |")
    print("|---" * (len(ATTRS) + 1) + "|")
    def row(videos) -> str:
        r = shares(videos, specs)
        return " | ".join(f"{r[a]:.2f}" for a in ATTRS)

    print(f"| VAE round trip (no noise) | {row(decode_latents(bundle, z))} |")
    for t in (100, 300, 500, 700):
        tt = torch.full((len(specs),), t)
        xt = sched.add_noise(z, noise, tt)
        x0 = sched.get_velocity(bb.predict(xt, tt, right), xt, tt)
        print(f"| t = {t} | {row(decode_latents(bundle, x0))} |")


if __name__ == "__main__":
    main()
