"""What a mini-world video shows, in words, from the pixel scorers (:mod:`.scorers`): the appearance and motion
its pixels are classified as, each score beside the range that true videos of the same subject doing the same
motion get (drawn by :func:`.world.render` and scored the same way), and what each score means. It reports what
was measured, never what a run should give (docs/demo.md).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import scorers as S
from . import world as W

__all__ = ["PARTS", "ground_truth_range", "describe_video"]

#: The parts of the identity score (per frame, identity = shape x colour x texture).
PARTS = ("shape", "colour", "texture")

_MEANING = {
    "shape": "overlap of the outline with the photos' (soft IoU, scale- and position-free)",
    "colour": "1 - RGB distance of the main colour to the photos' / 0.5",
    "texture": "closeness of the dark-pattern descriptors (stripes, dots, checks)",
}


#: Position offsets per size of the true videos behind :func:`ground_truth_range` (x 2 sizes = 24 renders).
TRUTH_SEEDS = tuple(range(12))


def ground_truth_range(subject: str, motion, photos: torch.Tensor, frames: int, height: int, width: int,
                       seeds: Sequence[int] = TRUTH_SEEDS) -> dict:
    """Scores of true videos: ``subject`` doing ``motion`` drawn by :func:`.world.render` (both sizes, each of
    ``seeds``' position offsets: 24 renders by default), scored against ``photos`` like a generated video. Returns
    ``{key: (min, max)}`` for ``identity``, ``identity_shape``, ``identity_colour``, ``identity_texture`` and
    ``motion``, and ``"renders"``: how many videos were scored. ``motion`` may also be a list of reference clips
    (any path): the true videos then follow the first clip's sprite path and are scored against all the clips.

    Raises:
        DualAdapterError: unknown subject or motion (see :mod:`.world`).
    """
    import random

    s = W._subject(subject)
    path = None if isinstance(motion, str) else S._fill(S.track(motion[0]).centroid)
    rows = []
    for size in W.SIZES:
        for seed in seeds:
            if path is None:
                v = W.render(W.VideoSpec(s.shape, s.colour, s.texture, size, motion, "gray"), frames, height, width,
                             seed=seed)
            else:
                rng = random.Random(seed)
                v = W.render_path(s, S._resample(path, frames), size, "gray", height, width,
                                  offset=(rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)))
            rows.append(S.score_video(v, subject_photos=photos, motion=motion))
    keys = ["identity"] + [f"identity_{p}" for p in PARTS] + ["motion"]
    out = {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in keys}
    out["renders"] = len(rows)
    return out


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _range(r) -> str:
    return f"{r[0]:.2f}-{r[1]:.2f}" if round(r[0], 2) != round(r[1], 2) else f"{r[0]:.2f}"


def describe_video(video: torch.Tensor, *, subject: str, motion: str, photos: torch.Tensor,
                   clips: Sequence[torch.Tensor] | None = None, prompt: str | None = None) -> dict:
    """Score a generated mini-world video and say what it shows.

    Args:
        video: ``[T, H, W, 3]`` float 0..1.
        subject: the subject's name (a key of :data:`.world.HELD_OUT_SUBJECTS`).
        motion: the asked motion (a name of :data:`.world.MOTIONS`).
        photos: the subject photos ``[N, H, W, 3]`` (the identity reference).
        clips: the motion clips (for ``leakage``); prompt: the worded prompt (for ``text``).

    Returns:
        ``{"scores"`` (:func:`.scorers.score_video`, identity parts included), ``"truth"``
        (:func:`ground_truth_range`), ``"seen"`` (:func:`.scorers.classify_attributes`), ``"motion_scores"``
        (every motion's score, :func:`.scorers.classify_motion`), ``"summary"`` (one sentence),
        ``"lines"`` (the printed report)``}``. Without a sprite in the video, ``scores`` holds ``"error"``.
    """
    from ..errors import DualAdapterError

    s = W._subject(subject)
    asked = f"a {s.name} {W.MOTION_PHRASES.get(motion, motion)}"
    T, H, Wd = video.shape[:3]
    truth = ground_truth_range(subject, motion, photos, T, H, Wd)
    try:
        scores = S.score_video(video, prompt=prompt, subject_photos=photos, motion=motion, motion_clips=clips)
    except DualAdapterError as e:  # e.g. no sprite in the photos
        scores = {"error": str(e)}
    seen = S.classify_attributes(video)
    cls, mscores = S.classify_motion(video)
    lines = [f"  asked for: {asked} (subject {subject}, motion {motion})"]
    if seen["shape"] is None:
        summary = "no sprite is found in the video"
        lines.append(f"  seen:      {summary}")
        return {"scores": scores, "truth": truth, "seen": seen, "motion_scores": mscores, "summary": summary,
                "lines": lines}
    got = W.Subject(seen["shape"], seen["colour"], seen["texture"]).name
    match = {p: seen[p] == getattr(s, p) for p in PARTS}
    kept = [p for p in PARTS if match[p]]
    lost = [f"{p} ({seen[p]}, not {getattr(s, p)})" for p in PARTS if not match[p]]
    lines.append(f"  seen:      a {got} on a {seen['background']} background (classified from the pixels); its "
                 f"motion is classified {cls!r}")
    if "identity" in scores:
        lines.append(f"  identity {scores['identity']:.3f} (0..1, per frame shape x colour x texture, higher = more "
                     f"like the photos); true videos ({truth['renders']} renders): {_range(truth['identity'])}")
        for p in PARTS:
            lines.append(f"    {p:<8}{scores['identity_' + p]:.3f}  true {_range(truth['identity_' + p]):<10} "
                         f"{_MEANING[p]}")
    elif "error" in scores:
        lines.append(f"  scores: {scores['error']}")
    if "motion" in scores:
        ranked = sorted(mscores.items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"  motion {scores['motion']:.3f} (0..1, the path against {motion}'s, extent and direction counting; true videos: "
                     f"{_range(truth['motion'])}); best-matching motions: " +
                     ", ".join(f"{m} {v:.2f}" for m, v in ranked))
    extra = []
    if "text" in scores:
        extra.append(f"text {scores['text']:.3f} (share of the prompt's appearance words the pixels show)")
    if "leakage" in scores:
        extra.append(f"leakage {scores['leakage']:.3f} (0..1, lower = less of the clips' sprites shows)")
    if extra:
        lines.append("  " + "; ".join(extra))
    look = (f"the subject's {_words(kept)}" if kept else "none of the subject's looks") + \
        (f", not its {_words(lost)}" if lost else "")
    moves = W.MOTION_PHRASES[motion] if cls == motion else f"with a motion classified {cls!r}, not {motion!r}"
    summary = f"a {got} {moves}: {look}"
    lines.append(f"  in short:  {summary}")
    return {"scores": scores, "truth": truth, "seen": seen, "motion_scores": mscores, "summary": summary,
            "lines": lines}
