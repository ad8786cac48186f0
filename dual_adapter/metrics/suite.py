"""Evaluate one video with any selection of the metrics (the node and the CLI call this).

>>> enc = EncoderSet(clip="models/metrics/clip-vit-base-patch32", dino=..., raft=...)
>>> result = evaluate_video(frames, prompt="a dog surfing", references=photos, encoders=enc, fps=8)
>>> result["metrics"]["clip_t"]

Encoders are loaded lazily, only for the metrics asked for; any of them can be replaced by an
object with the same methods (``encode_images`` / ``encode_text``, or a flow callable), which is
how the tests stub them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import DualAdapterError
from . import definitions as D
from .encoders import ClipEncoder, DinoEncoder, RaftFlow, default_device, locate
from .interpolation import FlowInterpolator, LinearBlendInterpolator

__all__ = ["MetricSpec", "METRICS", "ALIASES", "parse_metrics", "EncoderSet", "evaluate_video", "MOTION_SMOOTHNESS_NOTE"]

MOTION_SMOOTHNESS_NOTE = (
    "Motion Smoothness follows VBench's protocol but VBench interpolates with AMT-S, which is not "
    "available here; these numbers come from another interpolator and are NOT comparable with VBench's."
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``key``, table ``label``, the encoder it needs (``clip``/``dino``/``raft``/None),
    whether it needs a prompt / reference photos, its source and its range."""

    key: str
    label: str
    encoder: str | None
    needs_prompt: bool
    needs_references: bool
    source: str
    description: str


METRICS: dict[str, MetricSpec] = {
    m.key: m
    for m in (
        MetricSpec("clip_t", "CLIP-T", "clip", True, False, "DreamVideo", "mean over frames of cos(CLIP text, CLIP frame)"),
        MetricSpec("clip_i", "CLIP-I", "clip", False, True, "DreamVideo", "mean over frame x photo pairs of CLIP image cosine"),
        MetricSpec("dino_i", "DINO-I", "dino", False, True, "DreamVideo", "mean over frame x photo pairs of DINO CLS cosine"),
        MetricSpec("t_cons", "T-Cons", "clip", False, False, "DreamVideo", "mean CLIP cosine of consecutive frames"),
        MetricSpec("subject_consistency", "Subject Cons.", "dino", False, False, "VBench", "mean of (cos(f_i,f_0)+cos(f_i,f_i-1))/2, DINO"),
        MetricSpec("background_consistency", "Background Cons.", "clip", False, False, "VBench", "same as subject, CLIP image features"),
        MetricSpec("temporal_flickering", "Temporal Flicker.", None, False, False, "VBench", "(255 - mean |frame_i+1 - frame_i|) / 255"),
        MetricSpec("motion_smoothness", "Motion Smooth.*", "raft", False, False, "VBench protocol*", "(255 - MAE of interpolated odd frames) / 255"),
        MetricSpec("dynamic_degree", "Dynamic Degree", "raft", False, False, "VBench", "1 if enough RAFT pairs exceed the flow threshold"),
    )
}

ALIASES = {
    "clipt": "clip_t",
    "clipi": "clip_i",
    "dinoi": "dino_i",
    "tcons": "t_cons",
    "t_consistency": "t_cons",
    "temporal_consistency": "t_cons",
    "subject": "subject_consistency",
    "subject_cons": "subject_consistency",
    "background": "background_consistency",
    "background_cons": "background_consistency",
    "flicker": "temporal_flickering",
    "flickering": "temporal_flickering",
    "temporal_flicker": "temporal_flickering",
    "smoothness": "motion_smoothness",
    "motion": "motion_smoothness",
    "dynamic": "dynamic_degree",
}


def parse_metrics(spec: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """Turn ``"all"``, ``"clip_t, DINO-I, flicker"`` or a list into metric keys.

    Returns ``(keys in table order, explicit)``; ``explicit`` is False for ``"all"`` / None, in
    which case metrics whose inputs or weights are missing are skipped instead of raising."""
    if spec is None:
        return list(METRICS), False
    items = spec.replace(";", ",").replace("\n", ",").split(",") if isinstance(spec, str) else list(spec)
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items or any(s.lower() == "all" for s in items):
        return list(METRICS), False
    keys = []
    for s in items:
        k = s.lower().replace("-", "_").replace(" ", "_").replace(".", "")
        k = ALIASES.get(k, ALIASES.get(k.replace("_", ""), k))
        if k not in METRICS:
            raise DualAdapterError(f"unknown metric {s!r}; expected 'all' or some of: {', '.join(METRICS)}")
        if k not in keys:
            keys.append(k)
    return [k for k in METRICS if k in keys], True


class EncoderSet:
    """The encoders of one evaluation, loaded on first use and kept for the next video.

    Each of ``clip``, ``dino``, ``subject_dino``, ``raft`` may be: ``None`` (the default name in
    ``search_dirs``), a path or name (see :func:`~dual_adapter.metrics.encoders.locate`), or a
    ready object (:class:`ClipEncoder`-like with ``encode_images``/``encode_text``,
    :class:`DinoEncoder`-like, or a flow callable like :class:`RaftFlow`). ``subject_dino``
    (default: ``dino``) lets VBench subject consistency use VBench's DINO ViT-B/16 while DINO-I
    uses ViT-S/16.
    """

    def __init__(
        self,
        clip: Any = None,
        dino: Any = None,
        raft: Any = None,
        subject_dino: Any = None,
        search_dirs: Sequence[os.PathLike] | None = None,
        device: str | None = None,
    ):
        self._spec = {"clip": clip, "dino": dino, "raft": raft, "subject_dino": subject_dino}
        self._loaded: dict[str, Any] = {}
        self.search_dirs = search_dirs
        self.device = device or default_device()

    def _is_obj(self, v) -> bool:
        return v is not None and not isinstance(v, (str, os.PathLike))

    def check(self, role: str) -> None:
        """Raise DualAdapterError (naming the expected file) if ``role``'s weights cannot be found."""
        if role == "subject_dino" and self._spec["subject_dino"] is None:
            role = "dino"
        v = self._spec[role]
        if role in self._loaded or self._is_obj(v):
            return
        locate("dino" if role == "subject_dino" else role, v, self.search_dirs)

    def get(self, role: str):
        """The encoder for ``role`` (``clip``, ``dino``, ``subject_dino``, ``raft``), loading it once."""
        if role == "subject_dino" and self._spec["subject_dino"] is None:
            role = "dino"
        if role in self._loaded:
            return self._loaded[role]
        v = self._spec[role]
        if self._is_obj(v):
            obj = v
        else:
            kind = "dino" if role == "subject_dino" else role
            path = locate(kind, v, self.search_dirs)
            if kind == "clip":
                obj = ClipEncoder.from_pretrained(path, device=self.device)
            elif kind == "dino":
                obj = DinoEncoder.from_pretrained(path, device=self.device)
            else:
                obj = RaftFlow.from_file(path, device=self.device)
        self._loaded[role] = obj
        return obj


def _needs(key: str, interpolator) -> list[str]:
    if key == "subject_consistency":
        return ["subject_dino"]
    if key == "motion_smoothness":
        return ["raft"] if (interpolator in (None, "flow")) else []
    enc = METRICS[key].encoder
    return [enc] if enc else []


def _resolve_interpolator(interpolator, encoders: EncoderSet):
    if interpolator in (None, "flow"):
        return FlowInterpolator(encoders.get("raft"))
    if interpolator in ("blend", "linear", "linear_blend"):
        return LinearBlendInterpolator()
    if callable(interpolator):
        return interpolator
    raise DualAdapterError(f"interpolator must be 'flow', 'blend' or a callable, got {interpolator!r}")


def _encode_vbench(encoder, frames, batch_size, cb):
    """VBench's own preprocessing when the encoder offers it (stubs may not)."""
    fn = getattr(encoder, "encode_images_vbench", None) or encoder.encode_images
    return fn(frames, batch_size, cb)


class _Progress:
    def __init__(self, callback, total: int):
        self.cb, self.total, self.offset = callback, max(int(total), 1), 0

    def stage(self, n: int):
        base = self.offset
        self.offset += n

        def cb(step, total, info):
            if self.cb:
                self.cb(min(base + int(step), self.total), self.total, dict(info or {}))

        return cb

    def note(self, stage: str) -> None:
        """Report a slow step that is not a unit of work (loading an encoder) so the user sees it."""
        if self.cb:
            self.cb(min(self.offset, self.total), self.total, {"stage": stage})


def evaluate_video(
    frames: torch.Tensor,
    prompt: str | None = None,
    references: torch.Tensor | Sequence[torch.Tensor] | None = None,
    metrics: str | Sequence[str] | None = "all",
    encoders: EncoderSet | None = None,
    fps: float = 8.0,
    interpolator: str | Callable | None = "flow",
    callback: D.Callback | None = None,
    batch_size: int = 16,
) -> dict:
    """Compute the selected metrics for one video.

    Args:
        frames: ``[F, H, W, 3]`` float ``0..1`` (ComfyUI IMAGE layout; not modified), F >= 2.
        prompt: the text prompt (CLIP-T).
        references: subject photos, ``[R, H, W, 3]`` or a list of ``[H, W, 3]`` of any sizes (CLIP-I, DINO-I).
        metrics: ``"all"`` (every metric whose inputs and weights are present; the others are
            listed under ``skipped`` with the reason), or names (see :func:`parse_metrics`; a named
            metric that cannot run raises).
        encoders: an :class:`EncoderSet` (default: default names in the default search folders).
        fps: the video's frame rate (Dynamic Degree samples at ~8 fps and scales its threshold).
        interpolator: Motion Smoothness interpolator: ``"flow"`` (RAFT-based default),
            ``"blend"`` or a callable (see :mod:`~dual_adapter.metrics.interpolation`).
        callback: ``cb(step, total, info)`` per encoder batch / frame pair.
        batch_size: images per encoder batch.

    Returns:
        A JSON-serialisable dict: ``metrics`` (key -> float), ``details`` (per-frame / per-pair
        values), ``skipped`` (key -> reason), ``notes`` and ``info`` (frame count, size, fps, ...).

    Raises:
        DualAdapterError: bad frames, an explicitly requested metric whose inputs or weights are
            missing (the message names the file expected and where to put it).
    """
    frames = D._frames(frames, "video frames", min_frames=2)
    keys, explicit = parse_metrics(metrics)
    encoders = encoders or EncoderSet()
    if not fps or not (fps > 0) or not math.isfinite(float(fps)):
        raise DualAdapterError(f"fps must be a number > 0, got {fps!r}")
    fps = float(fps)
    refs = None
    if references is not None:
        refs = [r for r in (references if not isinstance(references, torch.Tensor) or references.ndim == 4 else [references])]
        if len(refs) == 0:
            refs = None
    prompt = prompt.strip() if isinstance(prompt, str) else None

    skipped: dict[str, str] = {}
    run: list[str] = []
    for k in keys:
        spec = METRICS[k]
        reason = None
        if spec.needs_prompt and not prompt:
            reason = "no prompt given"
        elif spec.needs_references and refs is None:
            reason = "no reference photos given"
        elif k == "motion_smoothness" and frames.shape[0] < 3:
            reason = "needs at least 3 frames"
        else:
            for role in _needs(k, interpolator):
                try:
                    encoders.check(role)
                except DualAdapterError as e:
                    reason = str(e)
                    break
        if reason:
            if explicit:
                raise DualAdapterError(f"{spec.label}: {reason}")
            skipped[k] = reason
        else:
            run.append(k)

    n_frames = frames.shape[0]
    nb = math.ceil(n_frames / batch_size)
    nr = math.ceil(len(refs) / batch_size) if refs else 0
    need_clip_frames = any(k in run for k in ("clip_t", "clip_i", "t_cons", "background_consistency"))
    need_dino_frames = any(k in run for k in ("dino_i",))
    need_subject = "subject_consistency" in run
    idx, _ = D.dynamic_degree_sampling(n_frames, fps)
    total = (
        (nb if any(k in run for k in ("clip_t", "clip_i", "t_cons")) else 0)
        + (nb if "background_consistency" in run else 0)
        + (nr if "clip_i" in run else 0)
        + (1 if "clip_t" in run else 0)
        + (nb if need_dino_frames else 0)
        + (nr if "dino_i" in run else 0)
        + (nb if need_subject else 0)
        + (1 if "temporal_flickering" in run else 0)
        + (len(idx) - 1 if "dynamic_degree" in run else 0)
        + ((n_frames + 1) // 2 - 1 if "motion_smoothness" in run else 0)
    )
    prog = _Progress(callback, total)
    values: dict[str, float] = {}
    details: dict[str, Any] = {}

    if need_clip_frames:
        prog.note("loading CLIP")
        clip = encoders.get("clip")
    if any(k in run for k in ("clip_t", "clip_i", "t_cons")):
        clip_frames = clip.encode_images(frames, batch_size, prog.stage(nb))
        if "clip_t" in run:
            text = clip.encode_text(prompt)
            prog.stage(1)(1, 1, {"encoder": "clip", "text": True})
            per = D.clip_t_per_frame(clip_frames, text)
            values["clip_t"] = float(per.mean())
            details["clip_t_per_frame"] = per.tolist()
        if "clip_i" in run:
            clip_refs = clip.encode_images(refs, batch_size, prog.stage(nr))
            m = D.image_alignment_matrix(clip_frames, clip_refs)
            values["clip_i"] = float(m.mean())
            details["clip_i_per_frame"] = m.mean(1).tolist()
        if "t_cons" in run:
            per = D.consecutive_similarity(clip_frames)
            values["t_cons"] = float(per.mean())
            details["t_cons_per_pair"] = per.tolist()
    if "background_consistency" in run:
        per = D.vbench_consistency_per_frame(_encode_vbench(clip, frames, batch_size, prog.stage(nb)))
        values["background_consistency"] = float(per.mean())
        details["background_consistency_per_frame"] = per.tolist()

    if need_dino_frames:
        prog.note("loading DINO")
        dino = encoders.get("dino")
        dino_frames = dino.encode_images(frames, batch_size, prog.stage(nb))
        dino_refs = dino.encode_images(refs, batch_size, prog.stage(nr))
        m = D.image_alignment_matrix(dino_frames, dino_refs)
        values["dino_i"] = float(m.mean())
        details["dino_i_per_frame"] = m.mean(1).tolist()

    if need_subject:
        prog.note("loading subject DINO")
        feats = _encode_vbench(encoders.get("subject_dino"), frames, batch_size, prog.stage(nb))
        per = D.vbench_consistency_per_frame(feats)
        values["subject_consistency"] = float(per.mean())
        details["subject_consistency_per_frame"] = per.tolist()

    if "temporal_flickering" in run:
        mae = D.flicker_pair_mae(frames)
        values["temporal_flickering"] = float((255.0 - mae.mean()) / 255.0)
        details["flicker_mae_per_pair"] = mae.tolist()
        prog.stage(1)(1, 1, {"metric": "temporal_flickering"})

    if "dynamic_degree" in run:
        prog.note("loading RAFT")
        dd = D.dynamic_degree(frames, encoders.get("raft"), fps, prog.stage(len(idx) - 1))
        values["dynamic_degree"] = dd.value
        details["dynamic_degree"] = dd.to_dict()

    notes: list[str] = []
    if "motion_smoothness" in run:
        prog.note("motion smoothness")
        interp = _resolve_interpolator(interpolator, encoders)
        ms = D.motion_smoothness(frames, interp, prog.stage((n_frames + 1) // 2 - 1))
        values["motion_smoothness"] = ms.value
        details["motion_smoothness"] = ms.to_dict()
        notes.append(MOTION_SMOOTHNESS_NOTE + f" Interpolator: {ms.interpolator}.")

    return {
        "metrics": {k: values[k] for k in METRICS if k in values},
        "details": details,
        "skipped": skipped,
        "notes": notes,
        "info": {
            "frames": int(n_frames),
            "height": int(frames.shape[1]),
            "width": int(frames.shape[2]),
            "fps": fps,
            "references": len(refs) if refs else 0,
            "prompt": prompt or "",
        },
    }
