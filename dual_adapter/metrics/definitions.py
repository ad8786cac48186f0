"""The metric definitions, as pure math on tensors (no model is loaded here).

Every function takes embeddings or frames that the caller computed, so each definition can be
checked on constructed inputs. Sources:

* **DreamVideo** (Wei et al. 2024) evaluation script, also used by DualReal / CustomTTT:
  CLIP-T, CLIP-I, DINO-I, T-Cons (:func:`clip_t`, :func:`image_alignment`,
  :func:`temporal_consistency`).
* **VBench** (Huang et al. 2024, ``vbench/*.py``): subject / background consistency,
  temporal flickering, dynamic degree, motion smoothness (:func:`vbench_consistency`,
  :func:`temporal_flickering`, :func:`dynamic_degree`, :func:`motion_smoothness`).

Layouts: embeddings are ``[N, D]`` (any float dtype; they are L2-normalised here), frames are
``[F, H, W, 3]`` float in ``0..1`` (the ComfyUI ``IMAGE`` layout) or ``uint8`` in ``0..255``.
Progress callbacks have the signature ``cb(step: int, total: int, info: dict)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import DualAdapterError

__all__ = [
    "FlowFn",
    "Interpolator",
    "Callback",
    "cosine_matrix",
    "clip_t_per_frame",
    "clip_t",
    "image_alignment_matrix",
    "image_alignment",
    "consecutive_similarity",
    "temporal_consistency",
    "vbench_consistency_per_frame",
    "vbench_consistency",
    "to_uint8_levels",
    "flicker_pair_mae",
    "temporal_flickering",
    "dynamic_degree_sampling",
    "dynamic_degree_params",
    "top_flow_magnitude",
    "is_moving",
    "DynamicDegreeResult",
    "dynamic_degree",
    "MotionSmoothnessResult",
    "motion_smoothness",
]

#: ``flow_fn(img1, img2) -> flow``: images ``[B, 3, H, W]`` float ``0..1``; flow ``[B, 2, H, W]``
#: in pixels (x then y) that moves ``img1`` onto ``img2``.
FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``interpolator(img0, img1) -> mid``: ``[B, 3, H, W]`` float ``0..1`` -> the frame half-way between.
Interpolator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, dict], None]


def _noop(step: int, total: int, info: dict) -> None:
    return None


# --------------------------------------------------------------------------------------
# embeddings (DreamVideo, VBench consistency)
# --------------------------------------------------------------------------------------
def _emb(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DualAdapterError(f"{what} must be embeddings of shape [N, D] with N >= 1, got {tuple(x.shape)}")
    return F.normalize(x.detach().to("cpu", torch.float64), dim=-1)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` ``[N, D]`` with every row of ``b`` ``[M, D]``.

    Returns ``[N, M]`` float64 in ``-1..1`` (identical directions give 1, orthogonal 0).
    """
    a, b = _emb(a, "a"), _emb(b, "b")
    if a.shape[1] != b.shape[1]:
        raise DualAdapterError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    return a @ b.T


def clip_t_per_frame(frame_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """cos(text, frame) for every frame: ``frame_emb`` ``[F, D]`` CLIP image features,
    ``text_emb`` ``[D]`` or ``[1, D]`` CLIP text features of the prompt. Returns ``[F]``."""
    return cosine_matrix(frame_emb, text_emb)[:, 0]


def clip_t(frame_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """CLIP-T (DreamVideo): mean over frames of cos(text, frame). Range ``-1..1``."""
    return float(clip_t_per_frame(frame_emb, text_emb).mean())


def image_alignment_matrix(frame_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
    """cos(frame, reference) for every frame x reference photo: ``[F, D]``, ``[R, D]`` -> ``[F, R]``."""
    return cosine_matrix(frame_emb, ref_emb)


def image_alignment(frame_emb: torch.Tensor, ref_emb: torch.Tensor) -> float:
    """CLIP-I / DINO-I (DreamVideo): mean over all frame x reference-photo pairs of the cosine
    of image features (CLIP image encoder for CLIP-I, DINO ViT-S/16 CLS token for DINO-I).
    Range ``-1..1``."""
    return float(image_alignment_matrix(frame_emb, ref_emb).mean())


def consecutive_similarity(frame_emb: torch.Tensor) -> torch.Tensor:
    """cos(frame_i, frame_{i+1}) for ``i = 0..F-2``: ``[F, D]`` -> ``[F-1]``. Needs F >= 2."""
    e = _emb(frame_emb, "frame embeddings")
    if e.shape[0] < 2:
        raise DualAdapterError(f"a temporal metric needs at least 2 frames, got {e.shape[0]}")
    return (e[1:] * e[:-1]).sum(-1)


def temporal_consistency(frame_emb: torch.Tensor) -> float:
    """T-Cons (DreamVideo): mean CLIP cosine of consecutive frames. Range ``-1..1``."""
    return float(consecutive_similarity(frame_emb).mean())


def vbench_consistency_per_frame(frame_emb: torch.Tensor) -> torch.Tensor:
    """VBench per-frame consistency for frames ``i = 1..F-1``:
    ``(max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2``. ``[F, D]`` -> ``[F-1]``."""
    e = _emb(frame_emb, "frame embeddings")
    if e.shape[0] < 2:
        raise DualAdapterError(f"a temporal metric needs at least 2 frames, got {e.shape[0]}")
    prev = (e[1:] * e[:-1]).sum(-1).clamp_min(0.0)
    first = (e[1:] * e[:1]).sum(-1).clamp_min(0.0)
    return (prev + first) / 2


def vbench_consistency(frame_emb: torch.Tensor) -> float:
    """VBench subject consistency (DINO features) / background consistency (CLIP image
    features): the mean of :func:`vbench_consistency_per_frame` over frames 1..F-1
    (``vbench/subject_consistency.py``, ``vbench/background_consistency.py``). Range ``0..1``."""
    return float(vbench_consistency_per_frame(frame_emb).mean())


# --------------------------------------------------------------------------------------
# pixels: temporal flickering (VBench)
# --------------------------------------------------------------------------------------
def _frames(frames, what: str = "frames", min_frames: int = 1) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DualAdapterError(f"{what} must be [F, H, W, 3] (ComfyUI IMAGE layout), got {tuple(frames.shape)}")
    if frames.shape[0] < min_frames:
        raise DualAdapterError(f"{what}: this metric needs at least {min_frames} frames, got {frames.shape[0]}")
    return frames


def to_uint8_levels(frames: torch.Tensor) -> torch.Tensor:
    """Frames as the 8-bit values a decoded video has: float32 holding integers ``0..255``.

    ``uint8`` input is kept; float input is read as ``0..1`` and rounded (``round(x * 255)``),
    which is exact for frames that came from an 8-bit video."""
    if frames.dtype == torch.uint8:
        return frames.to(torch.float32)
    return frames.detach().to(torch.float32).clamp(0.0, 1.0).mul(255.0).round()


def flicker_pair_mae(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of adjacent frames in 8-bit levels: ``[F, H, W, 3]`` -> ``[F-1]``
    float64 in ``0..255``."""
    frames = _frames(frames, min_frames=2)
    out = []
    for i in range(frames.shape[0] - 1):
        a, b = to_uint8_levels(frames[i]), to_uint8_levels(frames[i + 1])
        out.append((a - b).abs().to(torch.float64).mean())
    return torch.stack(out)


def temporal_flickering(frames: torch.Tensor) -> float:
    """Temporal Flickering (VBench ``temporal_flickering.py``): ``(255 - mean MAE) / 255`` where
    MAE is the mean absolute difference of adjacent frames in 8-bit levels. A constant video
    scores 1.0, alternating black and white frames 0.0. Range ``0..1``, higher = less flicker."""
    return float((255.0 - flicker_pair_mae(frames).mean()) / 255.0)


# --------------------------------------------------------------------------------------
# dynamic degree (VBench)
# --------------------------------------------------------------------------------------
def dynamic_degree_sampling(num_frames: int, fps: float) -> tuple[list[int], int]:
    """Frames VBench feeds to RAFT: every ``interval = max(1, round(fps / 8))``-th frame from 0.

    Returns ``(indices, interval)``."""
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise DualAdapterError(f"fps must be a number > 0, got {fps!r}")
    interval = max(1, round(fps / 8.0))
    return list(range(0, int(num_frames), interval)), interval


def dynamic_degree_params(height: int, width: int, num_sampled: int, fps: float) -> tuple[float, int]:
    """VBench's thresholds (``DynamicDegree.set_params``).

    Args:
        height, width: frame size in pixels.
        num_sampled: number of frames after :func:`dynamic_degree_sampling` (N).
        fps: the video's frame rate (frames/s).

    Returns:
        ``(threshold, count_required)``: a pair "moves" when its top-5% flow magnitude exceeds
        ``threshold = max(1, 8 / fps) * 6 * min(H, W) / 256`` pixels; the video is dynamic when
        at least ``count_required = round(4 * N / 16)`` pairs move (Python's ``round``).
    """
    factor = max(1.0, 8.0 / float(fps))
    return factor * 6.0 * (min(int(height), int(width)) / 256.0), int(round(4 * (int(num_sampled) / 16.0)))


def top_flow_magnitude(flow: torch.Tensor) -> float:
    """Mean of the top 5 % flow magnitudes of one pair (VBench ``get_score``).

    ``flow``: ``[2, H, W]`` or ``[1, 2, H, W]`` in pixels. The top ``int(0.05 * H * W)``
    values of ``sqrt(u^2 + v^2)`` are averaged (at least one value, for tiny frames)."""
    if flow.ndim == 4:
        if flow.shape[0] != 1:
            raise DualAdapterError(f"top_flow_magnitude takes one flow field, got a batch of {flow.shape[0]}")
        flow = flow[0]
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise DualAdapterError(f"flow must be [2, H, W], got {tuple(flow.shape)}")
    rad = flow.detach().to("cpu", torch.float64).pow(2).sum(0).sqrt().flatten()
    k = max(1, int(rad.numel() * 0.05))
    return float(torch.topk(rad, k).values.mean())


def is_moving(magnitudes: Sequence[float], threshold: float, count_required: int) -> bool:
    """VBench ``check_move``: True when at least ``count_required`` magnitudes are strictly
    above ``threshold`` (with no pair at all the video is static)."""
    if len(magnitudes) == 0:
        return False
    return sum(1 for m in magnitudes if m > threshold) >= count_required


@dataclass
class DynamicDegreeResult:
    """Outcome of :func:`dynamic_degree` for one video.

    ``value`` is 1.0 (dynamic) or 0.0 (static); VBench's dimension score is the mean of it over
    videos. ``magnitudes`` are the raw per-pair top-5% flow magnitudes in pixels."""

    value: float
    moving: bool
    magnitudes: list = field(default_factory=list)
    threshold: float = 0.0
    count_required: int = 0
    count_exceeding: int = 0
    interval: int = 1
    sampled_indices: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _chw(frame: torch.Tensor) -> torch.Tensor:
    """``[H, W, 3]`` (0..1 float or uint8) -> ``[1, 3, H, W]`` float32 0..1."""
    if frame.dtype == torch.uint8:
        frame = frame.to(torch.float32) / 255.0
    return frame.detach().to(torch.float32).permute(2, 0, 1)[None].contiguous()


def dynamic_degree(
    frames: torch.Tensor,
    flow_fn: FlowFn,
    fps: float = 8.0,
    callback: Callback | None = None,
) -> DynamicDegreeResult:
    """Dynamic Degree (VBench ``dynamic_degree.py``).

    Frames are sampled at about 8 fps (:func:`dynamic_degree_sampling`), ``flow_fn`` (RAFT-large
    in VBench, 20 refinement iterations) gives the flow of each consecutive sampled pair, the
    per-pair score is :func:`top_flow_magnitude`, and the thresholds are
    :func:`dynamic_degree_params`.

    Args:
        frames: ``[F, H, W, 3]`` float ``0..1`` (or uint8), F >= 2.
        flow_fn: see :data:`FlowFn` (e.g. :class:`~dual_adapter.metrics.encoders.RaftFlow`, or a stub).
        fps: the video's frame rate.
        callback: ``cb(step, total, info)`` after each pair.
    """
    frames = _frames(frames, min_frames=2)
    cb = callback or _noop
    idx, interval = dynamic_degree_sampling(frames.shape[0], fps)
    thres, count_num = dynamic_degree_params(frames.shape[1], frames.shape[2], len(idx), fps)
    mags: list[float] = []
    total = max(len(idx) - 1, 0)
    for k, (i, j) in enumerate(zip(idx[:-1], idx[1:])):
        flow = flow_fn(_chw(frames[i]), _chw(frames[j]))
        mags.append(top_flow_magnitude(flow))
        cb(k + 1, total, {"metric": "dynamic_degree", "pair": (i, j), "magnitude": mags[-1]})
    moving = is_moving(mags, thres, count_num)
    return DynamicDegreeResult(
        value=1.0 if moving else 0.0,
        moving=moving,
        magnitudes=mags,
        threshold=thres,
        count_required=count_num,
        count_exceeding=sum(1 for m in mags if m > thres),
        interval=interval,
        sampled_indices=idx,
    )


# --------------------------------------------------------------------------------------
# motion smoothness (VBench definition, pluggable interpolator)
# --------------------------------------------------------------------------------------
@dataclass
class MotionSmoothnessResult:
    """Outcome of :func:`motion_smoothness`: ``value`` in ``0..1`` and the per-odd-frame MAE
    (8-bit levels) between each original odd frame and its interpolation."""

    value: float
    mae_per_frame: list = field(default_factory=list)
    interpolator: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def motion_smoothness(
    frames: torch.Tensor,
    interpolator: Interpolator,
    callback: Callback | None = None,
) -> MotionSmoothnessResult:
    """Motion Smoothness with the VBench protocol (``vbench/motion_smoothness.py``).

    The even frames ``0, 2, 4, ...`` are kept, ``interpolator`` predicts the frame half-way
    between each consecutive pair of them, and each prediction is compared with the real odd
    frame it stands for: ``score = (255 - mean MAE) / 255`` in 8-bit levels.

    VBench's interpolator is AMT-S; with any other interpolator (e.g. the flow-based default
    :class:`~dual_adapter.metrics.interpolation.FlowInterpolator`) the number is **not** a
    VBench number, only the same protocol.

    Args:
        frames: ``[F, H, W, 3]`` float ``0..1`` (or uint8), F >= 3.
        interpolator: see :data:`Interpolator`.
        callback: ``cb(step, total, info)`` after each interpolated frame.
    """
    frames = _frames(frames, min_frames=3)
    cb = callback or _noop
    even = list(range(0, frames.shape[0], 2))
    odd = list(range(1, frames.shape[0], 2))
    n = len(even) - 1  # interpolated frames; when F is even the last odd frame has no partner
    maes: list[float] = []
    for k in range(n):
        mid = interpolator(_chw(frames[even[k]]), _chw(frames[even[k + 1]]))
        if mid.ndim == 4:
            mid = mid[0]
        pred = to_uint8_levels(mid.detach().to("cpu").permute(1, 2, 0))
        real = to_uint8_levels(frames[odd[k]].detach().to("cpu"))
        if pred.shape != real.shape:
            raise DualAdapterError(
                f"interpolator returned a frame of shape {tuple(pred.shape)}, expected {tuple(real.shape)}"
            )
        maes.append(float((pred - real).abs().to(torch.float64).mean()))
        cb(k + 1, n, {"metric": "motion_smoothness", "frame": odd[k], "mae": maes[-1]})
    value = (255.0 - sum(maes) / len(maes)) / 255.0
    return MotionSmoothnessResult(value=value, mae_per_frame=maes, interpolator=getattr(interpolator, "name", type(interpolator).__name__))
