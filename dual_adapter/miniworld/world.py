"""The miniature world: procedural videos of one sprite moving over a plain background.

Everything here is seeded library code (no files). A video is described by a :class:`VideoSpec`
(shape, colour, texture, size, motion, background) and drawn by :func:`render` as frames
``[T, H, W, 3]`` float 0..1; :func:`caption` gives its text from a small vocabulary, e.g.
``"a small red striped circle moving left on a gray background"``.

Held out from pretraining (the customization targets):

* :data:`HELD_OUT_SUBJECTS` - shape + texture combinations the base model never sees (with any
  colour), e.g. a yellow striped star. A subject's "photos" (:func:`subject_photos`) are single
  frames of it at varied positions and sizes, what DualReal's identity phase expects.
* :data:`HELD_OUT_MOTIONS` - motions the base never sees (orbit, zig-zag, bounce), each with its
  own verb in the vocabulary. A motion's clips (:func:`motion_clips`) show *other* (held-in)
  sprites doing it, so that appearance leakage from the clips is measurable.

Geometry: positions are in normalised frame coordinates (x right, y down, 0..1); a motion is a
fixed trajectory shape (:func:`trajectory`, same phase every time) plus a random offset, so the
motion scorer can compare trajectories up to position and scale.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import torch

from ..errors import DualAdapterError

__all__ = [
    "SHAPES", "COLOURS", "TEXTURES", "SIZES", "BACKGROUNDS", "MOTIONS", "HELD_IN_MOTIONS", "HELD_OUT_MOTIONS",
    "HELD_OUT_SUBJECTS", "MOTION_PHRASES", "PLACEHOLDER", "GENERIC_NOUN", "VideoSpec", "Subject",
    "FRAMES", "HEIGHT", "WIDTH", "render", "caption", "vocabulary", "trajectory", "pretrain_sampler",
    "is_held_in", "subject_photos", "motion_clips", "identity_prompt", "motion_prompt", "combined_prompt",
    "parse_prompt", "shape_mask", "sprite_maps", "render_path",
]

# default video size of the world (and of the ``mini`` model)
FRAMES, HEIGHT, WIDTH = 9, 32, 32

SHAPES = ("circle", "square", "triangle", "star", "cross")
# named colour -> RGB 0..1 (the sprite's main colour; textures add a dark shade of it)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
# sprite radius in pixels at 32 px frames (scaled with the frame size)
SIZES: dict[str, float] = {"small": 5.0, "large": 8.0}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "gray": (0.50, 0.50, 0.50),
    "black": (0.04, 0.04, 0.04),
    "white": (0.96, 0.96, 0.96),
}
HELD_IN_MOTIONS = ("left", "right", "up", "down", "still")
HELD_OUT_MOTIONS = ("orbit", "zigzag", "bounce")
MOTIONS = HELD_IN_MOTIONS + HELD_OUT_MOTIONS
MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "staying still",
    "orbit": "orbiting",
    "zigzag": "zigzagging",
    "bounce": "bouncing",
}
DARK = 0.3  # the texture's second colour is DARK x the main colour
PLACEHOLDER = "*"  # identity token, as DualReal's "dog *"
GENERIC_NOUN = "shape"  # the noun of motion prompts ("a shape orbiting ..."); never in pretraining captions


@dataclass(frozen=True)
class Subject:
    """A sprite's identity: shape, colour and texture (the size varies between photos)."""

    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        """E.g. ``"yellow striped star"`` (``plain`` is not spoken)."""
        words = [self.colour] + ([] if self.texture == "plain" else [self.texture]) + [self.shape]
        return " ".join(words)


# shape + texture combinations never drawn in pretraining (with any colour); the subject's colour is
# the one its photos use.
HELD_OUT_SUBJECTS: dict[str, Subject] = {
    "striped_star": Subject("star", "yellow", "striped"),
    "dotted_triangle": Subject("triangle", "red", "dotted"),
    "checkered_circle": Subject("circle", "blue", "checkered"),
}
_HELD_OUT_COMBOS = {(s.shape, s.texture) for s in HELD_OUT_SUBJECTS.values()}


@dataclass(frozen=True)
class VideoSpec:
    """One video of the world. Every field is a key of its vocabulary table
    (:data:`SHAPES`, :data:`COLOURS`, :data:`TEXTURES`, :data:`SIZES`, :data:`MOTIONS`, :data:`BACKGROUNDS`)."""

    shape: str = "circle"
    colour: str = "red"
    texture: str = "plain"
    size: str = "large"
    motion: str = "left"
    background: str = "gray"

    def validate(self) -> "VideoSpec":
        """Return self; raise :class:`DualAdapterError` naming the first field outside the vocabulary."""
        for name, table in (("shape", SHAPES), ("colour", COLOURS), ("texture", TEXTURES), ("size", SIZES),
                            ("motion", MOTIONS), ("background", BACKGROUNDS)):
            v = getattr(self, name)
            if v not in table:
                raise DualAdapterError(f"VideoSpec.{name}={v!r} is not one of {sorted(table)}")
        return self

    @property
    def subject(self) -> Subject:
        return Subject(self.shape, self.colour, self.texture)

    def to_dict(self) -> dict:
        return asdict(self)


def is_held_in(spec: VideoSpec) -> bool:
    """True when ``spec`` can appear in pretraining (held-in motion and shape + texture combination)."""
    return spec.motion in HELD_IN_MOTIONS and (spec.shape, spec.texture) not in _HELD_OUT_COMBOS


# --------------------------------------------------------------------------------------------
# text


def caption(spec: VideoSpec) -> str:
    """The caption of a video, e.g. ``"a small red striped circle moving left on a gray background"``."""
    spec.validate()
    words = ["a", spec.size, spec.colour] + ([] if spec.texture == "plain" else [spec.texture])
    return " ".join(words + [spec.shape, MOTION_PHRASES[spec.motion], "on", "a", spec.background, "background"])


def identity_prompt(subject: Subject | str, background: str = "gray", token: str = PLACEHOLDER) -> str:
    """Prompt of DualReal's identity phase for a subject's photos: ``"a * star on a gray background"``
    (the placeholder token plus the class word, as DualReal's ``"dog *"``)."""
    s = _subject(subject)
    return f"a {token} {s.shape} on a {background} background"


def motion_prompt(motion: str, background: str = "gray") -> str:
    """Prompt of the motion phase / motion LoRAs: ``"a shape orbiting on a gray background"``
    (the generic noun, since the clips show various sprites)."""
    _motion(motion)
    return f"a {GENERIC_NOUN} {MOTION_PHRASES[motion]} on a {background} background"


def combined_prompt(subject: Subject | str, motion: str, background: str = "gray", token: str = PLACEHOLDER) -> str:
    """Inference prompt: the customized subject doing the motion, ``"a * star orbiting on a gray background"``."""
    s = _subject(subject)
    _motion(motion)
    return f"a {token} {s.shape} {MOTION_PHRASES[motion]} on a {background} background"


def vocabulary() -> list[str]:
    """Every word the world's prompts use (the ``mini`` tokenizer's vocabulary), in a fixed order."""
    words = ["a", "on", "background", PLACEHOLDER, GENERIC_NOUN]
    words += list(SIZES) + list(COLOURS) + list(TEXTURES) + list(SHAPES) + list(BACKGROUNDS)
    for phrase in MOTION_PHRASES.values():
        words += phrase.split()
    out: list[str] = []
    for w in words:
        if w not in out:
            out.append(w)
    return out


def parse_prompt(prompt: str) -> dict:
    """The attributes a prompt asks for: ``{"shape", "colour", "texture", "size", "motion", "background"}``
    (only those it names; ``texture`` is ``"plain"`` when a shape is named with no texture word and the
    prompt has no placeholder)."""
    words = prompt.lower().replace(",", " ").split()
    out: dict = {}
    for w in words:
        if w in SHAPES:
            out["shape"] = w
        elif w in COLOURS:
            out["colour"] = w
        elif w in TEXTURES:
            out["texture"] = w
        elif w in SIZES:
            out["size"] = w
    for i, w in enumerate(words):
        if w in BACKGROUNDS and i + 1 < len(words) and words[i + 1] == "background":
            out["background"] = w
    text = " ".join(words)
    for m, phrase in MOTION_PHRASES.items():
        if phrase in text:
            out["motion"] = m
    if "shape" in out and "texture" not in out and PLACEHOLDER not in words:
        out["texture"] = "plain"
    return out


def _subject(subject) -> Subject:
    if isinstance(subject, Subject):
        return subject
    if isinstance(subject, str) and subject in HELD_OUT_SUBJECTS:
        return HELD_OUT_SUBJECTS[subject]
    raise DualAdapterError(f"subject {subject!r}: expected a Subject or one of {sorted(HELD_OUT_SUBJECTS)}")


def _motion(motion: str) -> str:
    if motion not in MOTIONS:
        raise DualAdapterError(f"motion {motion!r} is not one of {list(MOTIONS)}")
    return motion


# --------------------------------------------------------------------------------------------
# geometry


def trajectory(motion: str, frames: int = FRAMES) -> torch.Tensor:
    """The canonical centre trajectory of a motion, ``[T, 2]`` (x, y) in normalised frame units,
    centred on (0.5, 0.5). Rendered videos add a random offset; the phase is always the same
    (orbit starts at the top and turns clockwise; zig-zag goes right starting upwards; bounce hops
    twice from the floor). ``still`` is constant.
    """
    _motion(motion)
    t = torch.linspace(0, 1, frames, dtype=torch.float64) if frames > 1 else torch.zeros(1, dtype=torch.float64)
    z = torch.zeros_like(t)
    d = 0.44  # travel of the linear motions
    if motion == "left":
        x, y = 0.5 + d / 2 - d * t, z + 0.5
    elif motion == "right":
        x, y = 0.5 - d / 2 + d * t, z + 0.5
    elif motion == "up":
        x, y = z + 0.5, 0.5 + d / 2 - d * t
    elif motion == "down":
        x, y = z + 0.5, 0.5 - d / 2 + d * t
    elif motion == "still":
        x, y = z + 0.5, z + 0.5
    elif motion == "orbit":
        a = 2 * math.pi * t * (frames - 1) / max(frames, 1)
        x, y = 0.5 + 0.22 * torch.sin(a), 0.5 - 0.22 * torch.cos(a)
    elif motion == "zigzag":
        tri = 1 - 4 * torch.abs(((2 * t + 0.25) % 1) - 0.5)  # triangle wave, two periods, starts at 0 rising
        x, y = 0.5 - 0.2 + 0.4 * t, 0.5 - 0.14 * tri
    else:  # bounce
        x, y = z + 0.5, 0.5 + 0.18 - 0.36 * torch.abs(torch.sin(2 * math.pi * t))
    return torch.stack([x, y], 1).float()


def _star_vertices(n: int = 5, inner: float = 0.45) -> torch.Tensor:
    a = torch.arange(2 * n, dtype=torch.float32) * math.pi / n - math.pi / 2
    r = torch.where(torch.arange(2 * n) % 2 == 0, torch.tensor(1.0), torch.tensor(inner))
    return torch.stack([r * torch.cos(a), r * torch.sin(a) + 0.1], 1)


_POLYGONS = {
    "triangle": torch.tensor([[0.0, -0.95], [0.95, 0.75], [-0.95, 0.75]]),
    "star": _star_vertices(),
}


def _in_polygon(u: torch.Tensor, v: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    inside = torch.zeros_like(u, dtype=torch.bool)
    n = verts.shape[0]
    for i in range(n):
        x1, y1 = (float(c) for c in verts[i])
        x2, y2 = (float(c) for c in verts[(i + 1) % n])
        cond = (y1 > v) != (y2 > v)
        xint = (x2 - x1) * (v - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (u < xint)
    return inside


def shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of a shape in sprite-local units (``u`` right, ``v`` down, the shape spans about -1..1)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (u.abs() <= 0.82) & (v.abs() <= 0.82)
    if shape == "cross":
        return ((u.abs() <= 0.34) & (v.abs() <= 0.95)) | ((v.abs() <= 0.34) & (u.abs() <= 0.95))
    if shape in _POLYGONS:
        return _in_polygon(u, v, _POLYGONS[shape])
    raise DualAdapterError(f"shape {shape!r} is not one of {list(SHAPES)}")


def _texture_dark(texture: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Where a texture uses its dark shade (sprite-local units; period 0.55 of the radius)."""
    p = 0.55
    if texture == "plain":
        return torch.zeros_like(u, dtype=torch.bool)
    if texture == "striped":
        return torch.floor((u + 2) / (p / 1.0) * 1.0) % 2 == 1
    if texture == "checkered":
        return (torch.floor((u + 2) / p) + torch.floor((v + 2) / p)) % 2 == 1
    if texture == "dotted":
        cu = (u + 2) / p - torch.floor((u + 2) / p) - 0.5
        cv = (v + 2) / p - torch.floor((v + 2) / p) - 0.5
        return (cu * cu + cv * cv) <= 0.3 ** 2 * 1.7
    raise DualAdapterError(f"texture {texture!r} is not one of {list(TEXTURES)}")


def sprite_maps(shape: str, texture: str, centres: torch.Tensor, radius_px, height: int, width: int,
                ss: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage maps of a sprite drawn at ``centres [N, 2]`` (normalised x, y) with radius ``radius_px``
    (a number or one per centre), with ``ss x ss`` supersampling: ``(cover, dark)``, each ``[N, H, W]``
    in 0..1 (share of each pixel inside the shape, and inside its texture's dark shade)."""
    N = centres.shape[0]
    off = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss
    ys = (torch.arange(height, dtype=torch.float32)[:, None] + off[None]).reshape(-1)  # [H*ss]
    xs = (torch.arange(width, dtype=torch.float32)[:, None] + off[None]).reshape(-1)
    r = torch.as_tensor(radius_px, dtype=torch.float32).reshape(-1, 1, 1).expand(N, 1, 1)
    cx = centres[:, 0].float().reshape(N, 1, 1) * width
    cy = centres[:, 1].float().reshape(N, 1, 1) * height
    u = ((xs[None, None, :] - cx) / r).expand(N, height * ss, width * ss)
    v = ((ys[None, :, None] - cy) / r).expand(N, height * ss, width * ss)
    inside = shape_mask(shape, u, v)
    dark = _texture_dark(texture, u, v) & inside
    pool = lambda m: m.float().reshape(N, height, ss, width, ss).mean((2, 4))  # noqa: E731
    return pool(inside), pool(dark)


def _draw(frames: torch.Tensor, subject: Subject, centres: torch.Tensor, radius_px, ss: int = 3) -> None:
    """Draw a sprite into ``frames [T, H, W, 3]`` in place at ``centres [T, 2]`` (normalised) with radius
    ``radius_px`` (a number or one per frame), with ``ss x ss`` supersampling (anti-aliased edges)."""
    T, H, W, _ = frames.shape
    cover, dark = sprite_maps(subject.shape, subject.texture, centres, radius_px, H, W, ss)
    main = torch.tensor(COLOURS[subject.colour], dtype=torch.float32)
    colsum = (cover - dark)[..., None] * main + dark[..., None] * (main * DARK)
    frames.copy_(frames * (1 - cover[..., None]) + colsum)


def render(spec: VideoSpec, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH, seed: int = 0,
           jitter: float = 1.0) -> torch.Tensor:
    """Draw one video of ``spec``: frames ``[T, H, W, 3]`` float 0..1.

    The sprite follows :func:`trajectory` shifted by a random offset (drawn from ``seed``; ``jitter``
    scales it, 0 = centred). Sizes scale with ``min(height, width) / 32``.

    Raises:
        DualAdapterError: a field outside the vocabulary, or a non-positive size.
    """
    spec.validate()
    if frames < 1 or height < 8 or width < 8:
        raise DualAdapterError(f"render: frames={frames}, height={height}, width={width}; need >= 1 frame and >= 8 px")
    rng = random.Random(int(seed))
    traj = trajectory(spec.motion, frames)
    jx = 0.12 if spec.motion in ("up", "down", "still", "bounce") else 0.06
    jy = 0.12 if spec.motion in ("left", "right", "still") else 0.06
    off = torch.tensor([rng.uniform(-jx, jx), rng.uniform(-jy, jy)]) * jitter
    bg = torch.tensor(BACKGROUNDS[spec.background], dtype=torch.float32)
    out = bg.expand(frames, height, width, 3).clone()
    radius = SIZES[spec.size] * min(height, width) / 32.0
    _draw(out, spec.subject, traj + off, radius)
    return out.clamp(0, 1)


def render_path(subject: Subject | str, path: torch.Tensor, size: str = "large", background: str = "gray",
                height: int = HEIGHT, width: int = WIDTH, offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Draw ``subject`` following any centre path: frames ``[T, H, W, 3]`` float 0..1 (``T`` = the path's length).

    Args:
        subject: a :class:`Subject` or a held-out subject's name.
        path: ``[T, 2]`` centres (normalised x right, y down; 0.5 = the frame's middle), e.g. a loop or a corner
            that is not one of :data:`MOTIONS`.
        size: a key of :data:`SIZES`; background: a key of :data:`BACKGROUNDS`.
        offset: added to every centre (normalised units).

    Raises:
        DualAdapterError: a size, background or subject outside the vocabulary, or a path that is not ``[T, 2]``.
    """
    s = _subject(subject) if not isinstance(subject, Subject) else subject
    VideoSpec(s.shape, s.colour, s.texture, size, "still", background).validate()
    p = torch.as_tensor(path, dtype=torch.float32)
    if p.ndim != 2 or p.shape[-1] != 2 or p.shape[0] < 1:
        raise DualAdapterError(f"render_path: path must be [T, 2] centres, got {tuple(p.shape)}")
    out = torch.tensor(BACKGROUNDS[background], dtype=torch.float32).expand(p.shape[0], height, width, 3).clone()
    _draw(out, s, p + torch.tensor(offset, dtype=torch.float32), SIZES[size] * min(height, width) / 32.0)
    return out.clamp(0, 1)


def pretrain_sampler(seed: int = 0, held_in_only: bool = True) -> Iterator[VideoSpec]:
    """Endless stream of random specs (uniform over each field), seeded. With ``held_in_only``
    (default) only specs that :func:`is_held_in` accepts: the pretraining distribution."""
    rng = random.Random(int(seed))
    while True:
        spec = VideoSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(TEXTURES), rng.choice(list(SIZES)),
                         rng.choice(HELD_IN_MOTIONS if held_in_only else MOTIONS), rng.choice(list(BACKGROUNDS)))
        if not held_in_only or is_held_in(spec):
            yield spec


# --------------------------------------------------------------------------------------------
# customization inputs


def subject_photos(subject: Subject | str, n: int = 4, seed: int = 0, background: str = "gray",
                   height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """``n`` still photos of a subject at varied positions and sizes: ``[N, H, W, 3]`` float 0..1.

    Positions vary within the middle of the frame, radii between the small and large sizes.

    Raises:
        DualAdapterError: unknown subject or background, ``n < 1``.
    """
    s = _subject(subject)
    if n < 1:
        raise DualAdapterError(f"subject_photos: n={n}, expected >= 1")
    if background not in BACKGROUNDS:
        raise DualAdapterError(f"background {background!r} is not one of {sorted(BACKGROUNDS)}")
    rng = random.Random(int(seed) * 7 + 1)
    bg = torch.tensor(BACKGROUNDS[background], dtype=torch.float32)
    out = bg.expand(n, height, width, 3).clone()
    scale = min(height, width) / 32.0
    radii = torch.tensor([rng.uniform(SIZES["small"], SIZES["large"]) * scale for _ in range(n)])
    centres = torch.tensor([[rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)] for _ in range(n)])
    _draw(out, s, centres, radii)
    return out.clamp(0, 1)


def motion_clips(motion: str, n: int = 3, seed: int = 0, frames: int = FRAMES, height: int = HEIGHT,
                 width: int = WIDTH, background: str = "gray", exclude: Subject | str | None = None
                 ) -> tuple[list[torch.Tensor], list[VideoSpec]]:
    """``n`` clips of ``motion`` done by other, held-in sprites (varied shape, colour, texture, size).

    Returns ``(clips, specs)``: clips ``[T, H, W, 3]`` float 0..1 and the spec each was drawn from
    (so leakage of their appearance can be measured). ``exclude`` (a subject) is never drawn:
    clips never show the shape + colour of the subject being customized.

    Raises:
        DualAdapterError: unknown motion or background, ``n < 1``.
    """
    _motion(motion)
    if n < 1:
        raise DualAdapterError(f"motion_clips: n={n}, expected >= 1")
    ex = _subject(exclude) if exclude is not None else None
    rng = random.Random(int(seed) * 11 + 3)
    clips, specs = [], []
    while len(clips) < n:
        spec = VideoSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(TEXTURES), rng.choice(list(SIZES)),
                         motion, background)
        if (spec.shape, spec.texture) in _HELD_OUT_COMBOS:
            continue
        if ex is not None and (spec.shape == ex.shape or spec.colour == ex.colour):
            continue
        if any(s.subject == spec.subject for s in specs):
            continue
        specs.append(spec)
        clips.append(render(spec, frames, height, width, seed=rng.randrange(2 ** 31)))
    return clips, specs


def with_motion(spec: VideoSpec, motion: str) -> VideoSpec:
    """``spec`` with another motion."""
    return replace(spec, motion=_motion(motion))
