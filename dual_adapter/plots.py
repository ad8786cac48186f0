"""Small plotting helpers (matplotlib, Agg backend) that return ComfyUI-style IMAGE tensors.

IMAGE layout: ``[1, H, W, 3]`` float32 in 0..1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["figure_to_image", "plot_loss_curve", "new_figure", "input_output_strip", "training_view"]


def new_figure(width_in: float = 6.4, height_in: float = 3.6, dpi: int = 100):
    """A matplotlib Figure on the Agg canvas (no display needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=dpi)


def figure_to_image(fig) -> torch.Tensor:
    """Render a matplotlib Figure to an IMAGE tensor ``[1, H, W, 3]`` float 0..1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.uint8)
    return torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0).unsqueeze(0)


def plot_loss_curve(losses: Sequence[dict], title: str = "training loss", key: str = "loss",
                    group_by: str | None = None, smooth: int = 0) -> torch.Tensor:
    """Plot per-step records (``{"step", "loss", ...}``) as an IMAGE ``[1, H, W, 3]``.

    ``group_by`` (e.g. ``"phase"``) draws one series per value of that field; ``smooth`` > 1 adds a
    moving average over that many steps.
    """
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in losses:
        g = str(r.get(group_by, "")) if group_by else key
        groups.setdefault(g, []).append((int(r["step"]), float(r[key])))
    for g, pts in groups.items():
        if not pts:
            continue
        x, y = zip(*pts)
        (raw,) = ax.plot(x, y, lw=0.7, alpha=0.35 if smooth > 1 else 1.0, label=g if group_by else None)
        if smooth > 1 and len(y) >= smooth:
            k = np.ones(smooth) / smooth
            ax.plot(x[smooth - 1:], np.convolve(y, k, mode="valid"), lw=1.8, color=raw.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_yscale("log" if all(v > 0 for p in groups.values() for _, v in p) else "linear")
    ax.set_title(title)
    if group_by and len(groups) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_image(fig)


def input_output_strip(photos: torch.Tensor, clip: torch.Tensor, video: torch.Tensor, n: int = 4,
                       tile: int = 96, gap: int = 6) -> torch.Tensor:
    """One strip image: ``n`` subject photos | ``n`` frames of a motion clip | ``n`` frames of the result,
    each tile resized to cover ``tile x tile`` px (nearest for small frames, so pixels stay visible) and
    centre-cropped, with a white ``gap`` between tiles and a wider one between the three parts.

    Args:
        photos: ``[N, H, W, 3]`` float 0..1 (repeated when fewer than ``n``). clip, video: ``[T, H, W, 3]``
            float 0..1 (``n`` evenly spaced frames are shown).

    Returns:
        ``[H', W', 3]`` float 0..1.
    """
    import torch.nn.functional as F

    def fit(img: torch.Tensor) -> torch.Tensor:
        x = img.detach().float().clamp(0, 1).permute(2, 0, 1).unsqueeze(0)
        s = tile / min(x.shape[-2:])
        size = (max(tile, round(x.shape[-2] * s)), max(tile, round(x.shape[-1] * s)))
        x = F.interpolate(x, size=size, mode="nearest" if s >= 1 else "area")
        t0, l0 = (size[0] - tile) // 2, (size[1] - tile) // 2
        return x[0, :, t0:t0 + tile, l0:l0 + tile].permute(1, 2, 0)

    def frames(v: torch.Tensor) -> list:
        T = v.shape[0]
        return [v[round(i * (T - 1) / max(1, n - 1))] for i in range(n)]

    parts = [[photos[i % photos.shape[0]] for i in range(n)], frames(clip), frames(video)]
    white = lambda w: torch.ones(tile, w, 3)  # noqa: E731
    cols = []
    for k, part in enumerate(parts):
        if k:
            cols.append(white(gap * 4))
        for j, img in enumerate(part):
            if j:
                cols.append(white(gap))
            cols.append(fit(img))
    return torch.cat(cols, 1)


def training_view(records: Sequence[dict], frames: torch.Tensor | None = None, step: int | None = None,
                  columns: int = 6, title: str = "training loss") -> torch.Tensor:
    """What a training node shows while it runs: the latest validation preview's frames (``frames``
    ``[F, H, W, 3]`` 0..1, ``columns`` evenly spaced, made at ``step``) above the loss curve of ``records``
    (``{"step", "loss", ...}``; one series per ``phase`` when the records have one, a moving average over a
    tenth of the steps). Either part may be missing. Returns ``[H, W, 3]`` float 0..1.
    """
    import torch.nn.functional as F

    parts = []
    if frames is not None and frames.shape[0]:
        T = frames.shape[0]
        idx = [round(i * (T - 1) / max(1, columns - 1)) for i in range(min(columns, T))]
        tile = 640 // len(idx)
        x = frames[idx].detach().float().clamp(0, 1).permute(0, 3, 1, 2)
        h = max(1, round(x.shape[-2] * tile / x.shape[-1]))
        x = F.interpolate(x, size=(h, tile), mode="nearest" if tile >= x.shape[-1] else "area")
        strip = torch.cat(list(x.permute(0, 2, 3, 1)), 1)
        parts.append(strip)
    recs = [r for r in records if r.get("loss") is not None]
    if recs:
        where = f" (preview: step {step})" if frames is not None and step is not None else ""
        img = plot_loss_curve(recs, title=title + where, group_by="phase" if any("phase" in r for r in recs) else None,
                              smooth=max(1, min(25, len(recs) // 10)))[0]
        parts.append(img)
    if not parts:
        return torch.ones(8, 8, 3)
    W = max(p.shape[1] for p in parts)
    padded = [torch.cat([p, torch.ones(p.shape[0], W - p.shape[1], 3)], 1) if p.shape[1] < W else p for p in parts]
    return torch.cat(padded, 0)
