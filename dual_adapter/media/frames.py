"""Shape frame tensors: fix a clip's length, check values and stills, resize and crop, convert to and from
the VAE's ``[B, 3, F, H, W]`` layout in ``-1..1``, and round frame counts to ``4k + 1``.

Every failure a user can cause raises :class:`~dual_adapter.errors.DualAdapterError` naming the input.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DualAdapterError


#: Accepted values of ``short_policy`` / ``policy``.
SHORT_POLICIES = ("loop", "hold", "error")


# --------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------
def _check_policy(policy: str) -> str:
    if policy not in SHORT_POLICIES:
        raise DualAdapterError(f"short_policy {policy!r} is not known; expected one of {SHORT_POLICIES}")
    return policy


def pad_or_trim_frames(frames: torch.Tensor, n: int, policy: str = "loop", name: str | None = None) -> torch.Tensor:
    """Return exactly ``n`` frames: trim the tail, or complete a short clip by ``policy``.

    Args:
        frames: ``[M, ...]`` (typically ``[M, H, W, 3]``), ``M >= 1``.
        n: wanted number of frames, ``>= 1``.
        policy: ``"loop"`` (output frame ``i`` is ``frames[i % M]``: a plain loop from the start,
            not ping-pong), ``"hold"`` (repeat the last frame) or ``"error"`` (raise when ``M < n``).
        name: what the frames come from (a file path), used in error messages.

    Returns:
        ``[n, ...]`` tensor, same dtype/device (``frames`` itself when ``M == n``).

    Raises:
        DualAdapterError: ``n < 1``, no frames, unknown policy, or ``M < n`` with ``"error"``.
    """
    what = f"clip {name!r}" if name else "clip"
    _check_policy(policy)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DualAdapterError(f"number of frames for {what} must be an integer >= 1, got {n!r}")
    n = int(n)
    m = int(frames.shape[0])
    if m == 0:
        raise DualAdapterError(f"{what} has no frames")
    if m == n:
        return frames
    if m > n:
        return frames[:n]
    if policy == "error":
        raise DualAdapterError(
            f"{what} has only {m} frame(s) where {n} were asked for (short_policy='error'); "
            f"ask for fewer frames, a lower fps, or use short_policy 'loop' or 'hold'"
        )
    if policy == "loop":
        idx = torch.arange(n, device=frames.device) % m
    else:  # hold
        idx = torch.clamp(torch.arange(n, device=frames.device), max=m - 1)
    return frames.index_select(0, idx)


def check_motion_frames(frames: torch.Tensor, name: str = "motion clip") -> torch.Tensor:
    """Refuse a still where a motion clip is expected (training on it would learn no motion).

    Args:
        frames: ``[F, H, W, 3]`` (or any ``[F, ...]``) frames of one clip.
        name: what the frames are (an input name or a file), used in the message.

    Returns:
        ``frames`` unchanged.

    Raises:
        DualAdapterError: fewer than 2 frames, or every frame equal to the first (a photo, or a
            still looped / held to length).
    """
    if not isinstance(frames, torch.Tensor) or frames.ndim < 2:
        raise DualAdapterError(f"{name}: expected clip frames [F, H, W, 3], got "
                               f"{list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    n = int(frames.shape[0])
    if n < 2:
        raise DualAdapterError(f"{name} is a still ({n} frame): a motion clip needs a video of the motion "
                               f"(MP4, AVI, WEBM...); photos of the subject go to the subject/identity input")
    if bool((frames == frames[:1]).all()):
        raise DualAdapterError(f"{name} is a still: all {n} frames are identical (a photo or a 1-frame video "
                               f"repeated to length); a motion clip needs a video of the motion")
    return frames


# --------------------------------------------------------------------------------------
# shaping
# --------------------------------------------------------------------------------------
def _check_frames(frames, what: str = "frames") -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        raise DualAdapterError(f"{what} must be a torch.Tensor [F, H, W, 3], got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DualAdapterError(f"{what} must have shape [F, H, W, 3], got {list(frames.shape)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise DualAdapterError(f"{what} is empty: shape {list(frames.shape)}")
    return frames


#: How far frame values may stray outside ``0..1`` before they are refused as another range (they are clamped).
FRAME_VALUE_SLACK = 0.5


def check_frame_values(frames: torch.Tensor, what: str = "frames") -> torch.Tensor:
    """Refuse frames that are not images in ``0..1``: NaN / inf values, or a range that is clearly another
    convention (``0..255`` values, or ``-1..1`` VAE-space frames). Values within :data:`FRAME_VALUE_SLACK` of
    ``0..1`` pass (the consumers clamp them).

    Args:
        frames: any float tensor of pixel values (``[F, H, W, 3]``, ``[H, W, 3]``...).
        what: the input's name, for the message.

    Returns:
        ``frames`` unchanged.

    Raises:
        DualAdapterError: naming ``what``, how many values are non-finite, or the range found.
    """
    if not isinstance(frames, torch.Tensor) or not frames.numel():
        return frames
    x = frames.detach()
    if not x.is_floating_point():
        raise DualAdapterError(f"{what}: expected float pixel values in 0..1, got {x.dtype} (divide by 255 first)")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DualAdapterError(f"{what}: {bad} of {x.numel()} values are NaN or infinite; the frames upstream are "
                               f"broken (a diverged model or a failed decode), nothing is made from them")
    lo, hi = float(x.min()), float(x.max())
    if hi > 1.0 + FRAME_VALUE_SLACK or lo < -FRAME_VALUE_SLACK:
        hint = (" (they look like 0..255 values: divide by 255)" if hi > 1.0 + FRAME_VALUE_SLACK and lo >= -0.5
                else " (they look like -1..1 values: map them with (x + 1) / 2)" if lo >= -1.0 - FRAME_VALUE_SLACK
                else "")
        raise DualAdapterError(f"{what}: values range {lo:.3g} .. {hi:.3g}; images are 0..1{hint}")
    return frames


def fit_frames(frames: torch.Tensor, height: int, width: int, chunk: int = 32) -> torch.Tensor:
    """Resize to cover ``height x width`` keeping the aspect ratio, then centre-crop.

    The scale is ``max(height / H, width / W)`` so the resized frames cover the target in
    both directions; the excess of the longer side is cropped equally from both ends, before
    scaling, so memory never exceeds the input plus the output (bilinear interpolation with
    antialiasing, ``torch.nn.functional.interpolate``).

    Args:
        frames: ``[N, H, W, 3]`` float in ``0..1`` (any float dtype/device).
        height, width: target size in pixels (``>= 1``).
        chunk: frames resized at once (bounds peak memory on long clips).

    Returns:
        ``[N, height, width, 3]`` float32 in ``0..1`` on the input device (a new tensor).

    Raises:
        DualAdapterError: wrong shape or non-positive target size.
    """
    frames = _check_frames(frames)
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DualAdapterError(f"fit_frames {name} must be an integer >= 1, got {v!r}")
    height, width = int(height), int(width)
    n, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    # crop the source to the target's aspect first, then scale only that region: memory stays that of the input
    # plus the output (scaling a 1 x 1000 strip to cover 480 x 720 first would make a 480 x 480000 image)
    ch = min(h, max(1, int(round(height / scale))))
    cw = min(w, max(1, int(round(width / scale))))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = torch.empty((n, height, width, 3), dtype=torch.float32, device=frames.device)
    for i in range(0, n, max(1, int(chunk))):
        x = frames[i : i + chunk, top : top + ch, left : left + cw].to(torch.float32).permute(0, 3, 1, 2)
        if (ch, cw) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = x.permute(0, 2, 3, 1).clamp(0.0, 1.0)
    return out


def frames_to_video_tensor(frames: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[F, H, W, 3]`` in ``0..1`` -> ``[1, 3, F, H, W]`` in ``-1..1`` (the CogVideoX VAE input).

    Args:
        frames: ``[F, H, W, 3]`` float in ``0..1``.
        dtype: output dtype (default: float32 or the input's float dtype).

    Raises:
        DualAdapterError: wrong shape.
    """
    frames = _check_frames(frames)
    if dtype is None:
        dtype = frames.dtype if frames.is_floating_point() else torch.float32
    x = frames.to(dtype).permute(3, 0, 1, 2).unsqueeze(0)
    return (x * 2.0 - 1.0).contiguous()


def video_tensor_to_frames(video: torch.Tensor) -> torch.Tensor:
    """``[1, 3, F, H, W]`` (or ``[3, F, H, W]``) in ``-1..1`` -> ``[F, H, W, 3]`` float32 in ``0..1``.

    The inverse of :func:`frames_to_video_tensor`; values are clamped to ``0..1`` (VAE decodes
    overshoot slightly).

    Raises:
        DualAdapterError: wrong shape, or a batch of more than one video.
    """
    if not isinstance(video, torch.Tensor):
        raise DualAdapterError(f"video must be a torch.Tensor [1, 3, F, H, W], got {type(video).__name__}")
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise DualAdapterError(
                f"video has a batch of {video.shape[0]}; expected [1, 3, F, H, W] (split the batch first)"
            )
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise DualAdapterError(f"video must have shape [1, 3, F, H, W] or [3, F, H, W], got {list(video.shape)}")
    x = video.to(torch.float32).permute(1, 2, 3, 0)
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0).contiguous()


def nearest_valid_frames(n: int, temporal_compression: int = 4, mode: str = "nearest") -> int:
    """The frame count of the form ``temporal_compression * k + 1`` nearest to ``n``.

    CogVideoX's VAE keeps the first frame and compresses the rest by 4 in time, so it takes
    1, 5, 9, ..., 49 frames. ``mode="nearest"`` rounds ties up (``3 -> 5``); ``"down"`` gives
    the largest valid count ``<= n``; ``"up"`` the smallest ``>= n``. Never less than 1.

    Raises:
        DualAdapterError: ``n < 1``, ``temporal_compression < 1`` or an unknown mode.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DualAdapterError(f"frame count must be an integer >= 1, got {n!r}")
    c = temporal_compression
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
        raise DualAdapterError(f"temporal_compression must be an integer >= 1, got {c!r}")
    n, c = int(n), int(c)
    down = ((n - 1) // c) * c + 1
    up = down if down == n else down + c
    if mode == "down":
        return down
    if mode == "up":
        return up
    if mode != "nearest":
        raise DualAdapterError(f"mode {mode!r} is not known; expected 'nearest', 'down' or 'up'")
    return up if (up - n) <= (n - down) else down
