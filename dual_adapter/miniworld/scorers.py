"""Scores of the miniature world, computed from frames with no learned encoder.

All functions take frames ``[T, H, W, 3]`` float 0..1 (a photo is ``T = 1``) and work on the one
sprite a world video holds. Definitions (also in docs/miniworld.md):

* **sprite segmentation** (:func:`track`): the background colour is the per-channel median of all
  pixels of the video; a pixel is sprite when some channel differs from it by more than
  :data:`FG_THRESHOLD` (0.18). Per frame: area (pixels), centroid (normalised x, y), the
  sprite's *main colour* (per-channel median of the bright shade, luminance in the top quarter of the range
  between the 5th and 95th percentiles, of its solid interior pixels: those differing from the background by >= 0.6 of the largest difference, so anti-aliased edges
  are left out, and one pixel away from the sprite's edge, so edge speckles are left out) and a *canonical crop*: mask and darkness map resampled on a 24 x 24 grid spanning +-1.7 equivalent radii
  (``sqrt(area / pi)``) around the centroid, i.e. aligned for position and scale.
* **identity** (:func:`identity_score`, our CLIP-I / DINO-I analogue, 0..1, higher = more like the
  subject): per generated frame, ``shape x colour x texture`` against the reference photos, averaged
  over frames (a frame with no sprite scores 0):
  shape = soft IoU of the canonical masks (reference = mean of the photos' masks);
  colour = ``max(0, 1 - |main_gen - main_ref| / 0.5)`` (RGB Euclidean distance);
  texture = ``exp(-|tex_gen - tex_ref|_1 / 0.25)`` where ``tex`` = (share of dark-shade pixels,
  mean horizontal and vertical gradient of the darkness map) inside the canonical mask.
* **motion** (:func:`motion_score`, 0..1, open-set): the centroid trajectory of the generated sprite against a
  reference path: the reference clips' own sprite trajectories (any path a user draws or films), or a world
  motion's canonical :func:`~.world.trajectory`. Both are centred (position does not count) but not rescaled:
  per reference, ``max(0, 1 - d / extent)`` with ``d`` the RMS distance between the centred paths and ``extent``
  the reference's RMS distance from its mean (:func:`path_distance`), so the extent travelled and the direction
  count (a mirror image, the reverse path or a still sprite score 0; a quarter-size copy about 0.25). Several
  references (a motion's clips) give the mean of their scores. A reference that does not move (``still``,
  extent < :data:`STILL_RMS`) scores ``1 - min(1, rms_gen / 0.25)``. Missing sprites in over half the frames
  score 0. :func:`classify_motion` names the world motion of highest score: closed-set, for the world's named
  motions only.
* **text** (:func:`text_score`, our CLIP-T analogue, 0..1): the share of the appearance attributes a
  prompt names (background, colour, shape, texture, size; :func:`~.world.parse_prompt`) that the video
  shows, each classified from pixels: background and colour = nearest palette colour; shape = the
  shape template of highest canonical-mask IoU (majority over frames); size = nearest template area
  of that shape; texture by analysis-by-synthesis: on up to 5 frames the sprite is redrawn in the
  classified shape (size scaled to the measured area) with each texture, at the measured centre
  +- half a pixel, and the texture whose darkness map is closest (L1, best shift, summed over the
  frames) wins (99% right on ground-truth videos, where the descriptor-nearest rule got 81-86%).
  The motion a prompt names is
  classified separately (:func:`classify_motion`).
* **leakage** (:func:`leakage_score`, 0..1, lower = less leakage): the identity score of the generated
  video against each motion clip's own sprite (its frames as the reference photos), maximised over the
  clips: how much any reference clip's appearance shows up when the prompt asks for another subject.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import DualAdapterError
from . import world

__all__ = ["FG_THRESHOLD", "STILL_RMS", "MOTION_OK", "Track", "track", "identity_score", "motion_score",
           "classify_motion", "path_distance", "text_score", "classify_attributes", "leakage_score", "score_video", "score_files",
           "evaluate_base"]

FG_THRESHOLD = 0.18
STILL_RMS = 0.03  # normalised units (about 1 px at 32 px)
MOTION_OK = 0.5  # motion score above which a motion counts as shown (used by evaluate_base): the path is nearer
# the reference than half the reference's own extent
_GRID = 24
_SPAN = 1.7


@dataclass
class Track:
    """What :func:`track` finds in a video (T frames).

    Attributes:
        background: ``[3]`` RGB. masks: ``[T, H, W]`` bool. area: ``[T]`` pixels.
        centroid: ``[T, 2]`` normalised (x, y), NaN where no sprite. main: ``[T, 3]`` main colour
        (NaN where none). crop_mask / crop_dark: ``[T, 24, 24]`` canonical crops. texture: ``[T, 3]``.
        dark: ``[T, H, W]`` darkness map inside the mask (0 on the main shade, about 0.7 on the dark one).
    """

    background: torch.Tensor
    masks: torch.Tensor
    area: torch.Tensor
    centroid: torch.Tensor
    main: torch.Tensor
    crop_mask: torch.Tensor
    crop_dark: torch.Tensor
    texture: torch.Tensor
    dark: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        return self.area >= 3


def _check(frames) -> torch.Tensor:
    if not torch.is_tensor(frames) or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
        raise DualAdapterError(f"frames must be [T, H, W, 3] (or one image [H, W, 3]) float 0..1, got {shape}")
    f = frames.detach().float().cpu()
    return f.unsqueeze(0) if f.ndim == 3 else f


def _lum(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _main_colour(x: torch.Tensor, m: torch.Tensor, diff: torch.Tensor, lum: torch.Tensor) -> torch.Tensor:
    """The sprite's main colour in one frame: the per-channel median of the bright shade of its solid interior
    pixels (luminance in the top quarter of the range between their 5th and 95th percentiles). Solid = differing from the background by >= 0.6 of the sprite's largest difference
    (anti-aliased edges mix in the background); interior = the mask eroded by one pixel (4-neighbours), which drops
    the speckles generated sprites carry at their edges; the bright shade is the main one of a textured sprite
    (its dark shade is 0.3 x the main colour), and the median and the percentiles ignore the odd bright or dark pixel that a mean would follow. Falls back to the solid
    pixels, then the whole mask, when fewer than 16 pixels are left (too few for the percentiles)."""
    inner = m.clone()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[0] = inner[-1] = False
    inner[:, 0] = inner[:, -1] = False
    solid = m & (diff >= 0.6 * float(diff[m].max()))
    sel = next((c for c in (solid & inner, solid) if int(c.sum()) >= 16), m)
    px, lk = x[sel], lum[sel]
    lo, hi = torch.quantile(lk, torch.tensor([0.05, 0.95]))
    return px[lk >= lo + 0.75 * (hi - lo)].median(0).values


def track(frames: torch.Tensor, background: torch.Tensor | None = None) -> Track:
    """Segment the sprite in every frame and describe it (see the module docstring).

    Args:
        frames: ``[T, H, W, 3]`` (or ``[H, W, 3]``) float 0..1.
        background: ``[3]`` RGB to use instead of the estimated median.

    Raises:
        DualAdapterError: wrong layout.
    """
    x = _check(frames)
    T, H, W, _ = x.shape
    bg = x.reshape(-1, 3).median(0).values if background is None else torch.as_tensor(background).float()
    diff = (x - bg).abs().amax(-1)
    masks = diff > FG_THRESHOLD
    area = masks.float().sum((1, 2))
    ys = (torch.arange(H).float() + 0.5) / H
    xs = (torch.arange(W).float() + 0.5) / W
    cen = torch.full((T, 2), float("nan"))
    main = torch.full((T, 3), float("nan"))
    crop_mask = torch.zeros(T, _GRID, _GRID)
    crop_dark = torch.zeros(T, _GRID, _GRID)
    texture = torch.zeros(T, 3)
    dark_full = torch.zeros(T, H, W)
    lum = _lum(x)
    g = torch.linspace(-_SPAN, _SPAN, _GRID)
    for k in range(T):
        m = masks[k]
        if area[k] < 3:
            continue
        mf = m.float()
        cx = float((mf.sum(0) * xs).sum() / area[k])
        cy = float((mf.sum(1) * ys).sum() / area[k])
        cen[k] = torch.tensor([cx, cy])
        main[k] = _main_colour(x[k], m, diff[k], lum[k])
        main_l = float(_lum(main[k]))
        dark = ((1 - lum[k] / max(main_l, 1e-3)).clamp(0, 1) * mf)  # 0 on the main shade, ~0.7 on the dark one
        dark_full[k] = dark
        r = math.sqrt(float(area[k]) / math.pi)
        # grid_sample coordinates: -1..1 spans the frame (align_corners=False)
        gx = ((cx * W + g * r) / W) * 2 - 1
        gy = ((cy * H + g * r) / H) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]  # [1, G, G, 2] (x, y)
        both = torch.stack([mf, dark])[None]
        s = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        crop_mask[k], crop_dark[k] = s[0], s[1]
        inner = s[0] > 0.75
        if inner.sum() >= 4:
            d = s[1] / s[0].clamp_min(1e-3)
            share = float(((d > 0.35) & inner).float().sum() / inner.float().sum())
            gxm = (d[:, 1:] - d[:, :-1]).abs()[inner[:, 1:] & inner[:, :-1]].mean()
            gym = (d[1:] - d[:-1]).abs()[inner[1:] & inner[:-1]].mean()
            texture[k] = torch.tensor([share, float(gxm), float(gym)]).nan_to_num(0.0)
    return Track(bg, masks, area, cen, main, crop_mask, crop_dark, texture, dark_full)


def _as_track(v) -> Track:
    return v if isinstance(v, Track) else track(v)


def _soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of soft masks over the last two dims: sum(min) / sum(max)."""
    return torch.minimum(a, b).sum((-2, -1)) / torch.maximum(a, b).sum((-2, -1)).clamp_min(1e-6)


def _reference(ref) -> dict:
    """Mean descriptors of reference photos / frames (frames without a sprite are skipped)."""
    t = _as_track(ref)
    p = t.present
    if not bool(p.any()):
        raise DualAdapterError("identity reference: no sprite found in the reference photos")
    return {"mask": t.crop_mask[p].mean(0), "main": t.main[p].mean(0), "texture": t.texture[p].mean(0)}


def _identity_parts(t: Track, ref: dict) -> dict:
    p = t.present.float()
    shape = _soft_iou(t.crop_mask, ref["mask"][None]) * p
    colour = (1 - (t.main - ref["main"][None]).norm(dim=-1) / 0.5).clamp(0, 1).nan_to_num(0.0) * p
    texture = torch.exp(-(t.texture - ref["texture"][None]).abs().sum(-1) / 0.25) * p
    return {"shape": shape, "colour": colour, "texture": texture, "identity": shape * colour * texture}


def identity_score(frames, reference, parts: bool = False):
    """Identity score of a video against a subject's photos (CLIP-I / DINO-I analogue; module docstring).

    Args:
        frames: generated frames ``[T, H, W, 3]`` (or a :class:`Track`).
        reference: the subject's photos ``[N, H, W, 3]`` (or a :class:`Track`).
        parts: also return the per-component means.

    Returns:
        the score in 0..1 (mean over frames); with ``parts``, ``(score, {"shape", "colour", "texture"})``.

    Raises:
        DualAdapterError: wrong layout, or no sprite in the reference.
    """
    d = _identity_parts(_as_track(frames), _reference(reference))
    score = float(d["identity"].mean())
    if parts:
        return score, {k: float(d[k].mean()) for k in ("shape", "colour", "texture")}
    return score


def _resample(traj: torch.Tensor, n: int) -> torch.Tensor:
    if traj.shape[0] == n:
        return traj
    return F.interpolate(traj.T[None], size=n, mode="linear", align_corners=True)[0].T


def _fill(traj: torch.Tensor) -> torch.Tensor | None:
    ok = ~torch.isnan(traj[:, 0])
    if int(ok.sum()) * 2 < traj.shape[0] or int(ok.sum()) < 2:
        return None
    idx = torch.arange(traj.shape[0]).float()
    good = idx[ok]
    out = traj.clone()
    for c in range(2):
        vals = traj[ok, c]
        for i in torch.nonzero(~ok).flatten().tolist():
            j = int(torch.searchsorted(good, torch.tensor(float(i))))
            if j == 0:
                out[i, c] = vals[0]
            elif j >= len(good):
                out[i, c] = vals[-1]
            else:
                a, b = float(good[j - 1]), float(good[j])
                out[i, c] = vals[j - 1] + (vals[j] - vals[j - 1]) * (i - a) / (b - a)
    return out


def _reference_paths(reference, frames: int) -> list[torch.Tensor]:
    """The reference trajectories ``[T', 2]`` of a motion name, a trajectory, a clip or a list of clips."""
    if isinstance(reference, str):
        return [world.trajectory(reference, frames)]
    if isinstance(reference, (list, tuple)):
        if not reference:
            raise DualAdapterError("motion reference: an empty list of clips")
        return [p for r in reference for p in _reference_paths(r, frames)]
    if isinstance(reference, Track) or (torch.is_tensor(reference) and reference.ndim == 4):
        ref = _fill(_as_track(reference).centroid)
        if ref is None:
            raise DualAdapterError("motion reference clip: no sprite found in most frames")
        return [ref]
    if torch.is_tensor(reference) and reference.ndim == 2 and reference.shape[-1] == 2:
        return [reference.float()]
    raise DualAdapterError("motion reference must be a motion name, a trajectory [T, 2], a clip [T, H, W, 3] or a "
                           "list of clips")


def path_distance(path: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """``(d, extent)``: the RMS distance between two centred trajectories (each minus its mean position; the
    reference resampled to ``path``'s frame count) and the reference's RMS extent (RMS distance of its points from
    their mean), both in normalised frame units. Position does not count; scale, shape, direction and timing do."""
    r = _resample(reference.float(), path.shape[0])
    g, r = path - path.mean(0), r - r.mean(0)
    return float((g - r).pow(2).sum(-1).mean().sqrt()), float(r.pow(2).sum(-1).mean().sqrt())


def motion_score(frames, reference) -> float:
    """Open-set motion score: how closely the video's sprite path follows the reference path, extent and direction
    included (module docstring).

    Per reference path: ``max(0, 1 - d / extent)`` (:func:`path_distance`), i.e. 1 for the same path wherever it is
    drawn, 0 once the paths are as far apart as the reference path is large; a mirror image, the reverse direction
    or a sprite that stays still scores 0, a copy at a quarter of the reference's size about 0.25. A reference that
    does not move (extent < :data:`STILL_RMS`) scores ``1 - min(1, rms / 0.25)`` of the video's own path. With
    several references (the clips of one motion), the mean over them. Missing sprites in over half the frames
    score 0.

    Args:
        frames: generated frames ``[T, H, W, 3]`` (or a :class:`Track`).
        reference: reference clips ``[T', H, W, 3]`` / :class:`Track` (one or a list: any path a user draws or
            films, scored from its own sprite's centroids), a trajectory ``[T', 2]`` (normalised x, y), or a world
            motion name (:data:`world.MOTIONS`: its canonical :func:`~.world.trajectory`). Resampled to ``T``.

    Returns:
        a score in 0..1 (1 = the same path).

    Raises:
        DualAdapterError: unknown motion name, a reference clip with no sprite, or wrong layout.
    """
    t = _as_track(frames)
    refs = _reference_paths(reference, t.centroid.shape[0])
    gen = _fill(t.centroid)
    if gen is None:
        return 0.0
    out = []
    for ref in refs:
        d, extent = path_distance(gen, ref)
        if extent < STILL_RMS:
            rms_g = float((gen - gen.mean(0)).pow(2).sum(-1).mean().sqrt())
            out.append(1.0 - min(1.0, rms_g / 0.25))
        else:
            out.append(max(0.0, 1.0 - d / extent))
    return sum(out) / len(out)


def classify_motion(frames, motions: Sequence[str] = world.MOTIONS) -> tuple[str, dict]:
    """The world's named motion of highest :func:`motion_score` among ``motions``; returns
    ``(motion, {motion: score})``.

    Closed-set: it can only name one of the world's motions (:data:`world.MOTIONS`), so a video of any other path
    (a square loop, a diagonal, a mirrored orbit...) is still given the nearest name. To check a motion outside
    that list, score the video against its reference clips with :func:`motion_score`.
    """
    t = _as_track(frames)
    scores = {m: motion_score(t, m) for m in motions}
    return max(scores, key=scores.get), scores


@lru_cache(maxsize=None)
def _templates(height: int, width: int) -> dict:
    """Ground-truth sprites (centred, still): shape masks, areas per size and the centroid-to-centre offset per shape."""
    out: dict = {"shape": {}, "area": {}, "offset": {}}
    for shape in world.SHAPES:
        t = track(world.render(world.VideoSpec(shape, "red", "plain", "large", "still", "gray"), 1, height, width,
                               jitter=0))
        out["shape"][shape] = t.crop_mask[0]
        # centroid minus drawing centre, in radii (triangle and star are not centred on their centroid)
        r = world.SIZES["large"] * min(height, width) / 32.0
        out["offset"][shape] = ((t.centroid[0] - 0.5) * torch.tensor([width, height]) / r).float()
        for size in world.SIZES:
            t = track(world.render(world.VideoSpec(shape, "red", "plain", size, "still", "gray"), 1, height, width,
                                   jitter=0))
            out["area"][(shape, size)] = float(t.area[0])
    return out


def classify_attributes(frames) -> dict:
    """Classify the video's appearance from pixels: ``{"background", "colour", "shape", "texture", "size"}``
    (majority over frames with a sprite; ``None`` where no sprite is found)."""
    t = _as_track(frames)
    H, W = t.masks.shape[1:]
    tpl = _templates(int(H), int(W))
    pal_bg = {k: torch.tensor(v) for k, v in world.BACKGROUNDS.items()}
    out: dict = {"background": min(pal_bg, key=lambda k: float((pal_bg[k] - t.background).norm()))}
    p = t.present
    if not bool(p.any()):
        return {**out, "colour": None, "shape": None, "texture": None, "size": None}
    pal = {k: torch.tensor(v) for k, v in world.COLOURS.items()}
    main = t.main[p].mean(0)
    out["colour"] = min(pal, key=lambda k: float((pal[k] - main).norm()))

    def vote(values):
        return max(set(values), key=values.count)

    shapes = [max(world.SHAPES, key=lambda s: float(_soft_iou(t.crop_mask[k], tpl["shape"][s])))
              for k in torch.nonzero(p).flatten().tolist()]
    shape = vote(shapes)
    out["shape"] = shape
    area = float(t.area[p].mean())
    size = min(world.SIZES, key=lambda s: abs(tpl["area"][(shape, s)] - area))
    out["size"] = size
    out["texture"] = _texture_by_synthesis(t, shape, size, tpl)
    return out


_TEX_FRAMES = 5  # frames used by the texture classifier (evenly spaced over those with a sprite)
_TEX_SHIFTS = torch.linspace(-0.5, 0.5, 5)  # sub-pixel search of the sprite centre, in pixels


def _texture_by_synthesis(t: Track, shape: str, size: str, tpl: dict) -> str:
    """Texture by analysis-by-synthesis: for a few frames, redraw the sprite (classified shape, size scaled
    to the measured area) with each texture at the measured centre (+- half a pixel) and keep the texture
    whose darkness map is closest (L1, best shift) to the frame's; summed over the frames."""
    H, W = t.masks.shape[1:]
    frames = torch.nonzero(t.present).flatten()
    frames = frames[torch.linspace(0, len(frames) - 1, min(_TEX_FRAMES, len(frames))).round().long()]
    r0 = world.SIZES[size] * min(H, W) / 32.0
    gy, gx = torch.meshgrid(_TEX_SHIFTS, _TEX_SHIFTS, indexing="ij")
    err = {x: 0.0 for x in world.TEXTURES}
    for k in frames.tolist():
        r = r0 * min(1.25, max(0.8, math.sqrt(float(t.area[k]) / max(tpl["area"][(shape, size)], 1.0))))
        c = t.centroid[k] * torch.tensor([W, H]) - tpl["offset"][shape] * r  # drawing centre, pixels
        centres = torch.stack([(c[0] + gx.flatten()) / W, (c[1] + gy.flatten()) / H], 1)
        obs = t.dark[k][None]
        for x in world.TEXTURES:
            cover, dark = world.sprite_maps(shape, x, centres, r, H, W)
            cand = dark / cover.clamp_min(1e-3) * (1 - world.DARK) * (cover > 0.5)
            err[x] += float((obs - cand).abs().sum((1, 2)).min())
    return min(err, key=err.get)


def text_score(frames, prompt: str, parts: bool = False):
    """Share of the appearance attributes a prompt names that the video shows (CLIP-T analogue; module docstring).

    Args:
        frames: ``[T, H, W, 3]`` (or a :class:`Track`). prompt: a world prompt (``*`` placeholders allowed).
        parts: also return ``{attribute: bool}``.

    Returns:
        a score in 0..1 (1.0 when the prompt names no appearance attribute); with ``parts``,
        ``(score, {attribute: obeyed})``.
    """
    want = {k: v for k, v in world.parse_prompt(prompt).items() if k != "motion"}
    got = classify_attributes(frames)
    ok = {k: got.get(k) == v for k, v in want.items()}
    score = sum(ok.values()) / len(ok) if ok else 1.0
    return (score, ok) if parts else score


def leakage_score(frames, clips: Sequence[torch.Tensor]) -> float:
    """Appearance leakage from motion clips: max over clips of :func:`identity_score` of the video against
    the clip's own frames (0..1, lower = less leakage; module docstring).

    Raises:
        DualAdapterError: no clips, or a clip with no sprite.
    """
    if not clips:
        raise DualAdapterError("leakage_score: give at least one motion clip")
    t = _as_track(frames)
    return max(identity_score(t, c) for c in clips)


def score_video(frames, *, prompt: str | None = None, subject_photos: torch.Tensor | None = None,
                motion: str | torch.Tensor | None = None, motion_clips: Sequence[torch.Tensor] | None = None) -> dict:
    """Every score that its inputs allow, on one tracked video: ``identity`` (with ``subject_photos``) and its
    parts ``identity_shape``, ``identity_colour``, ``identity_texture`` (each a mean over frames, 0..1; identity is
    the mean of their per-frame product, so it is at most the smallest part), ``motion`` (with ``motion``: a name,
    trajectory, clip or list of clips; :func:`motion_score`), ``text`` (with ``prompt``), ``leakage`` (with ``motion_clips``), plus ``motion_class``."""
    t = _as_track(frames)
    out: dict = {}
    if subject_photos is not None:
        out["identity"], parts = identity_score(t, subject_photos, parts=True)
        out.update({f"identity_{k}": v for k, v in parts.items()})
    if motion is not None:
        out["motion"] = motion_score(t, motion)
    if prompt is not None:
        out["text"] = text_score(t, prompt)
    if motion_clips:
        out["leakage"] = leakage_score(t, motion_clips)
    out["motion_class"] = classify_motion(t)[0]
    return out


def _frames_of(paths, what: str) -> list[torch.Tensor]:
    """Every clip under ``paths`` (files, or folders whose :data:`media.CLIP_EXTENSIONS` files are read in name order)."""
    from pathlib import Path

    from .. import media

    files = []
    for p in ([paths] if isinstance(paths, (str, Path)) else list(paths)):
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in media.CLIP_EXTENSIONS)
            if not found:
                raise DualAdapterError(f"{what}: folder {str(p)!r} holds no clip "
                                       f"({', '.join(sorted(media.CLIP_EXTENSIONS))})")
            files += found
        else:
            files.append(p)
    return [media.load_clip(f)[0] for f in files]


def score_files(video, *, prompt: str | None = None, subject=None, motion: str | None = None, clips=None) -> dict:
    """:func:`score_video` on files: what ``python -m dual_adapter miniworld score`` prints.

    Args:
        video: a clip file (anything :func:`dual_adapter.media.load_clip` reads: the WebP / GIF / MP4 /
            animated PNG the pack's workflows and commands write), read whole at its own rate.
        prompt: the worded prompt whose attributes :func:`text_score` checks, e.g. "a yellow striped
            star orbiting on a gray background".
        subject: the subject's photos (a folder or image files, :func:`dual_adapter.media.load_images`),
            resized to the video's size: gives ``identity``.
        motion: a world motion name (:data:`world.MOTIONS`, e.g. ``"orbit"``), a reference clip file, or a folder
            of reference clips (any path; scored against each clip's own sprite path, :func:`motion_score`):
            gives ``motion``.
        clips: the motion clips (files or folders) whose sprite appearance must not show up: gives
            ``leakage``.

    Returns:
        ``{"frames": T, "size": [H, W], "motion_class": name, "identity"?, "identity_shape"?,
        "identity_colour"?, "identity_texture"?, "motion"?, "text"?, "leakage"?}``.

    Raises:
        DualAdapterError: a file that cannot be read, an unknown motion name, no sprite in the photos.
    """
    from pathlib import Path

    from .. import media

    frames = media.load_clip(video)[0]
    h, w = frames.shape[1:3]
    photos = None
    if subject is not None:
        imgs = media.load_images([subject] if isinstance(subject, (str, Path)) else list(subject))
        photos = torch.stack([media.fit_frames(im[None], h, w)[0] for im in imgs])
    ref = None
    if motion is not None:
        if str(motion) in world.MOTIONS:
            ref = str(motion)
        elif Path(motion).exists():
            ref = [media.fit_frames(c, h, w) for c in _frames_of(motion, "motion")]
        else:
            raise DualAdapterError(f"motion {motion!r}: expected a world motion ({', '.join(world.MOTIONS)}), "
                                   f"a reference clip file or a folder of clips")
    refs = [media.fit_frames(c, h, w) for c in _frames_of(clips, "clips")] if clips is not None else None
    out = {"frames": int(frames.shape[0]), "size": [int(h), int(w)]}
    out.update(score_video(frames, prompt=prompt, subject_photos=photos, motion=ref, motion_clips=refs))
    return out


@torch.no_grad()
def evaluate_base(bundle, n: int = 32, steps: int = 25, cfg: float = 6.0, seed: int = 0, batch: int = 16,
                  scheduler: str = "dpm") -> dict:
    """The quality bar: sample ``n`` held-in prompts with ``bundle`` and check, from pixels, whether each
    video shows every prompted attribute (:func:`text_score` parts) and the prompted motion
    (:func:`classify_motion` over all motions == prompted and :func:`motion_score` >= :data:`MOTION_OK`).

    Returns:
        ``{"summary": {attribute: share obeyed, "motion": share, "all": share}, "samples": [...]}``.
    """
    from ..backbones.cogvideox import encode_prompt
    from ..sampling import decode_latents, sample

    sampler = world.pretrain_sampler(seed + 99991)
    specs = [next(sampler) for _ in range(n)]
    frames_n, h, w = world.FRAMES, world.HEIGHT, world.WIDTH
    samples = []
    for i in range(0, n, batch):
        chunk = specs[i: i + batch]
        emb = encode_prompt(bundle, [world.caption(s) for s in chunk])
        z = sample(bundle, emb, num_frames=frames_n, height=h, width=w, steps=steps, cfg=cfg, seed=seed + i,
                   batch_size=len(chunk), scheduler=scheduler)
        vids = decode_latents(bundle, z)
        for s, v in zip(chunk, vids):
            t = track(v)
            _, ok = text_score(t, world.caption(s), parts=True)
            cls, ms = classify_motion(t)
            ok["motion"] = cls == s.motion and ms[s.motion] >= MOTION_OK
            samples.append({"prompt": world.caption(s), **{k: bool(v) for k, v in ok.items()},
                            "motion_score": ms[s.motion], "all": all(ok.values())})
    keys = ["background", "colour", "shape", "texture", "size", "motion", "all"]
    summary = {k: sum(r[k] for r in samples) / len(samples) for k in keys}
    summary["n"] = len(samples)
    return {"summary": summary, "samples": samples,
            "settings": {"n": n, "steps": steps, "cfg": cfg, "seed": seed, "scheduler": scheduler}}
