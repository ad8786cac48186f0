"""What the untrained base draws for a prompt: the attribute distribution a customized row's scores must be read
against (docs/results/miniworld.md, "Baselines").

A customized method samples with its own prompt ("a * star orbiting on a gray background" for DualReal); any colour
or motion the base already draws for that prompt is not the method's doing. :func:`base_distribution` samples the
base ``n`` times with one prompt and reports, from the pixels, the colours it draws, the motion classes, and the
open-set motion score (:func:`.scorers.motion_score`) against each given reference path, e.g. a motion and its
mirror image: a neutral prompt draws the subjects' colours about equally often and scores about the same against
a path and its mirror.
"""
from __future__ import annotations

import torch

from . import scorers as S
from . import world as W

__all__ = ["mirrored", "base_distribution", "neutrality_rows"]


def mirrored(path: torch.Tensor) -> torch.Tensor:
    """A trajectory ``[T, 2]`` mirrored left-right (x -> 1 - x): clockwise becomes counter-clockwise."""
    out = path.clone().float()
    out[:, 0] = 1 - out[:, 0]
    return out


@torch.no_grad()
def base_distribution(bundle, prompt: str, references: dict, n: int = 12, steps: int = 20, cfg: float = 6.0,
                      seed: int = 0) -> dict:
    """Sample ``bundle`` (untrained) ``n`` times with ``prompt`` and describe the videos from their pixels.

    Args:
        bundle: a loaded mini-layout model. prompt: the prompt as a method samples with it.
        references: ``{name: reference}`` for :func:`.scorers.motion_score` (a motion name, a trajectory
            ``[T, 2]`` or clips), e.g. ``{"orbit": "orbit", "orbit mirrored": mirrored(trajectory("orbit"))}``.
        n, steps, cfg, seed: sampling (DPM scheduler; one batch of ``n`` from ``seed``).

    Returns:
        ``{"prompt", "cfg", "n", "colour": {colour: share}, "motion_class": {motion: share},
        "motion": {name: mean score}}`` (shares over the ``n`` videos; ``None`` where no sprite was found).
    """
    from ..backbones import as_backbone
    from ..sampling import decode_latents, sample

    frames, h, w = bundle.default_size
    bb = as_backbone(bundle)
    z = sample(bundle, bb.encode_prompt(prompt), bb.encode_prompt(""), num_frames=frames, height=h,
               width=w, steps=steps, cfg=cfg, seed=seed, batch_size=n)
    colours: dict = {}
    classes: dict = {}
    scores = {k: 0.0 for k in references}
    for v in decode_latents(bundle, z):
        t = S.track(v)
        c = S.classify_attributes(t)["colour"]
        colours[str(c)] = colours.get(str(c), 0) + 1 / n
        m = S.classify_motion(t)[0]
        classes[m] = classes.get(m, 0) + 1 / n
        for k, r in references.items():
            scores[k] += S.motion_score(t, r) / n
    return {"prompt": prompt, "cfg": cfg, "n": n, "colour": colours, "motion_class": classes, "motion": scores}


def neutrality_rows(bundle, placeholders=(W.PLACEHOLDER,), verbs=("orbiting",), shapes=("star", "triangle", "circle"),
                    **kw) -> list[dict]:
    """:func:`base_distribution` of ``"a <placeholder> <shape> <verb> on a gray background"`` for every
    combination, with the orbit and its mirror image as references."""
    refs = {"orbit": "orbit", "orbit mirrored": mirrored(W.trajectory("orbit"))}
    return [base_distribution(bundle, f"a {p} {s} {v} on a gray background", refs, **kw)
            for p in placeholders for v in verbs for s in shapes]
