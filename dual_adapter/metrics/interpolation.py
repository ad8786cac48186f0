"""Frame interpolators for Motion Smoothness.

VBench's Motion Smoothness interpolates with **AMT-S**, which has no installable package and
whose weights cannot be loaded here; so this module ships a documented flow-based default and a
weight-free linear blend. Scores computed with either follow VBench's protocol
(:func:`~dual_adapter.metrics.definitions.motion_smoothness`) but are **not** VBench numbers:
compare them only with numbers computed by the same interpolator.

An interpolator is any callable ``interp(img0, img1) -> mid`` on ``[B, 3, H, W]`` float ``0..1``
tensors (see :data:`~dual_adapter.metrics.definitions.Interpolator`); give it a ``name``
attribute so reports can say which one was used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .definitions import FlowFn

__all__ = ["backward_warp", "FlowInterpolator", "LinearBlendInterpolator"]


def backward_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at ``(x + u, y + v)``: ``out[y, x] = img[y + v, x + u]`` (bilinear,
    border replicated).

    Args:
        img: ``[B, C, H, W]``.
        flow: ``[B, 2, H, W]`` in pixels (u = x offset, v = y offset).
    """
    b, _, h, w = img.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=img.device, dtype=torch.float32),
        torch.arange(w, device=img.device, dtype=torch.float32),
        indexing="ij",
    )
    x = xs[None] + flow[:, 0].to(torch.float32)
    y = ys[None] + flow[:, 1].to(torch.float32)
    gx = 2.0 * x / max(w - 1, 1) - 1.0
    gy = 2.0 * y / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=True)


class FlowInterpolator:
    """Flow-based mid-frame interpolation (the default for Motion Smoothness; not AMT-S).

    With bidirectional flows ``F01 = flow_fn(I0, I1)`` and ``F10 = flow_fn(I1, I0)`` and the
    linear-motion approximation of Super SloMo (Jiang et al. 2018) at ``t = 1/2``::

        F_t0 = -t(1-t) F01 + t^2 F10 = (F10 - F01) / 4
        F_t1 = (1-t)^2 F01 - t(1-t) F10 = (F01 - F10) / 4
        I_t  = (warp(I0, F_t0) + warp(I1, F_t1)) / 2

    No occlusion reasoning, no learned refinement: smooth, well-tracked motion scores near 1,
    jittery motion lower; numbers differ from VBench's (AMT-S) and must be labelled as such.

    Args:
        flow_fn: see :data:`~dual_adapter.metrics.definitions.FlowFn` (e.g.
            :class:`~dual_adapter.metrics.encoders.RaftFlow`). It is called with ``(I0, I1)``
            first, then ``(I1, I0)``.
    """

    name = "flow (RAFT + linear-motion warp; not VBench's AMT-S)"

    def __init__(self, flow_fn: FlowFn):
        self.flow_fn = flow_fn

    @torch.no_grad()
    def __call__(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        f01 = self.flow_fn(img0, img1).to(torch.float32).to(img0.device)
        f10 = self.flow_fn(img1, img0).to(torch.float32).to(img0.device)
        ft0 = (f10 - f01) / 4.0
        ft1 = (f01 - f10) / 4.0
        mid = 0.5 * (backward_warp(img0, ft0) + backward_warp(img1, ft1))
        return mid.clamp(0.0, 1.0)


class LinearBlendInterpolator:
    """``(I0 + I1) / 2``: needs no weights; a lower bound that penalises any motion. Not VBench."""

    name = "linear blend (no motion compensation; not VBench's AMT-S)"

    def __call__(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        return 0.5 * (img0.to(torch.float32) + img1.to(torch.float32))
