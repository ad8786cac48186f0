"""Tables, CSV / JSON files and a plot of evaluation results.

A *result* is what :func:`~dual_adapter.metrics.suite.evaluate_video` returns. A *batch* is a
list of ``(group, name, result)`` triples; :func:`batch_rows` averages it per group (one row per
method, like Table 1 of the papers) and overall.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Sequence

import numpy as np
import torch

from ..io import atomic_write_text
from .suite import METRICS, MOTION_SMOOTHNESS_NOTE

__all__ = [
    "format_value",
    "format_table",
    "batch_rows",
    "format_batch_table",
    "batch_csv_text",
    "write_batch_csv",
    "write_json",
    "plot_result",
]


def format_value(v) -> str:
    """Four decimals; ``-`` for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.4f}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def format_table(result: dict) -> str:
    """A plain-text (Markdown) table of one result: metric, value, source, then notes and the
    reasons metrics were skipped."""
    rows = []
    for k, spec in METRICS.items():
        if k in result.get("metrics", {}):
            v = result["metrics"][k]
            extra = ""
            if k == "dynamic_degree":
                dd = result.get("details", {}).get("dynamic_degree", {})
                if dd:
                    extra = f" ({dd['count_exceeding']}/{len(dd['magnitudes'])} pairs > {dd['threshold']:.2f} px, need {dd['count_required']})"
            rows.append([spec.label, format_value(v) + extra, spec.source])
    info = result.get("info", {})
    out = []
    if info:
        out.append(
            f"{info.get('frames')} frames, {info.get('width')}x{info.get('height')}, {info.get('fps'):g} fps, "
            f"{info.get('references', 0)} reference photo(s)"
        )
    out.append(_grid(["Metric", "Value", "Source"], rows) if rows else "(no metric computed)")
    for n in result.get("notes", []):
        out.append("* " + n)
    out += skipped_lines(result.get("skipped", {}))
    return "\n".join(out)


def skipped_lines(skipped: dict) -> list[str]:
    """``skipped A, B: reason``: one line per distinct reason (several metrics often miss the same weights)."""
    by_reason: dict[str, list[str]] = {}
    for k, why in skipped.items():
        by_reason.setdefault(why, []).append(METRICS[k].label if k in METRICS else k)
    return [f"skipped {', '.join(labels)}: {why}" for why, labels in by_reason.items()]


def batch_rows(items: Sequence[tuple[str, str, dict]], per_video: bool = False) -> list[dict]:
    """Average a batch per group and overall.

    Args:
        items: ``(group, video name, result)`` triples.
        per_video: also emit one row per video (before its group's mean row).

    Returns:
        rows ``{"method": group, "video": name or "mean (n)", "videos": n, <metric key>: value}``;
        a metric missing from some videos is averaged over the videos that have it. The last row
        is ``method="all"`` when there is more than one group.
    """
    groups: dict[str, list[tuple[str, dict]]] = {}
    for g, name, res in items:
        groups.setdefault(g, []).append((name, res))

    def mean_row(method, members):
        row = {"method": method, "video": f"mean ({len(members)})", "videos": len(members)}
        for k in METRICS:
            vals = [r["metrics"][k] for _, r in members if k in r.get("metrics", {})]
            row[k] = float(np.mean(vals)) if vals else None
        return row

    rows = []
    for g, members in groups.items():
        if per_video:
            for name, res in members:
                row = {"method": g, "video": name, "videos": 1}
                row.update({k: res.get("metrics", {}).get(k) for k in METRICS})
                rows.append(row)
        rows.append(mean_row(g, members))
    if len(groups) > 1:
        rows.append(mean_row("all", [m for ms in groups.values() for m in ms]))
    return rows


def _present(rows: Sequence[dict]) -> list[str]:
    return [k for k in METRICS if any(r.get(k) is not None for r in rows)]


def format_batch_table(rows: Sequence[dict]) -> str:
    """A plain-text table of :func:`batch_rows` (metrics no video has are left out)."""
    keys = _present(rows)
    header = ["Method", "Video", "N"] + [METRICS[k].label for k in keys]
    body = [[r["method"], r["video"], str(r["videos"])] + [format_value(r.get(k)) for k in keys] for r in rows]
    text = _grid(header, body)
    if "motion_smoothness" in keys:
        text += "\n* " + MOTION_SMOOTHNESS_NOTE
    return text


def batch_csv_text(rows: Sequence[dict]) -> str:
    """CSV of :func:`batch_rows`: columns ``method, video, videos`` then one column per metric
    present (header = the table label, e.g. ``CLIP-T``); empty cell = not computed."""
    keys = _present(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "video", "videos"] + [METRICS[k].label for k in keys])
    for r in rows:
        w.writerow([r["method"], r["video"], r["videos"]] + ["" if r.get(k) is None else f"{r[k]:.6f}" for k in keys])
    return buf.getvalue()


def write_batch_csv(rows: Sequence[dict], path: str | os.PathLike, overwrite: bool = False):
    """Write :func:`batch_csv_text` atomically (refuses to replace a file unless ``overwrite``)."""
    return atomic_write_text(path, batch_csv_text(rows), overwrite=overwrite)


def write_json(obj, path: str | os.PathLike, overwrite: bool = False):
    """Write a result (or any JSON-serialisable object) atomically, indented."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n", overwrite=overwrite)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def plot_panels(result: dict) -> list[str]:
    """The panels :func:`plot_result` draws for ``result``: ``"summary"`` always, then ``"per frame"``,
    ``"consecutive frames"`` and ``"dynamic degree"`` when the result has their data."""
    d = result.get("details", {})
    out = ["summary"]
    if any(d.get(k) for k in ("clip_t_per_frame", "clip_i_per_frame", "dino_i_per_frame",
                              "subject_consistency_per_frame", "background_consistency_per_frame")):
        out.append("per frame")
    if d.get("t_cons_per_pair") or d.get("flicker_mae_per_pair") or d.get("motion_smoothness"):
        out.append("consecutive frames")
    if d.get("dynamic_degree"):
        out.append("dynamic degree")
    return out


def plot_result(result: dict, width_px: int = 1200, height_px: int = 800) -> np.ndarray:
    """Render one result as a figure: summary bars, per-frame similarities, per-pair
    differences and the Dynamic Degree flow magnitudes with their threshold.

    Only panels with data are drawn (a video measured without encoder weights gets the summary
    alone, not empty axes); metrics that were skipped are listed under the figure.

    Returns ``[H, W, 3]`` float32 in ``0..1`` (``height_px x width_px``)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    m, d = result.get("metrics", {}), result.get("details", {})
    per_frame = [(k, lab, 0) for k, lab in (("clip_t_per_frame", "CLIP-T"), ("clip_i_per_frame", "CLIP-I"),
                                            ("dino_i_per_frame", "DINO-I"))] + \
                [(k, lab, 1) for k, lab in (("subject_consistency_per_frame", "Subject cons."),
                                            ("background_consistency_per_frame", "Background cons."))]
    per_frame = [x for x in per_frame if d.get(x[0])]
    ms = d.get("motion_smoothness")
    pairs = bool(d.get("t_cons_per_pair") or d.get("flicker_mae_per_pair") or ms)
    dd = d.get("dynamic_degree")

    def summary(ax):
        keys = [k for k in METRICS if k in m]
        if keys:
            vals = [m[k] for k in keys]
            ax.barh([METRICS[k].label for k in keys][::-1], vals[::-1], color="tab:blue")
            for y, v in enumerate(vals[::-1]):
                ax.text(max(v, 0) + 0.01, y, f"{v:.3f}", va="center", fontsize=8)
            ax.set_xlim(min(0.0, min(vals)) - 0.02, 1.15)
        else:
            ax.text(0.5, 0.5, "no metric computed", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        ax.set_title("Summary")

    def frames_panel(ax):
        for key, label, off in per_frame:
            ax.plot(range(off, off + len(d[key])), d[key], label=label)
        ax.set_title("Per frame")
        ax.set_xlabel("frame")
        ax.legend(fontsize=7)

    def pairs_panel(ax):
        if d.get("t_cons_per_pair"):
            ax.plot(range(1, len(d["t_cons_per_pair"]) + 1), d["t_cons_per_pair"], label="T-Cons (cos f_i-1, f_i)")
        if d.get("flicker_mae_per_pair"):
            ax.plot(range(1, len(d["flicker_mae_per_pair"]) + 1), [1 - v / 255.0 for v in d["flicker_mae_per_pair"]],
                    label="1 - MAE/255 (flicker)")
        if ms:
            ax.plot(range(1, 2 * len(ms["mae_per_frame"]), 2), [1 - v / 255.0 for v in ms["mae_per_frame"]], "o-",
                    label="1 - MAE/255 (interp.)*")
        ax.set_title("Consecutive frames")
        ax.set_xlabel("frame")
        ax.legend(fontsize=7)

    def dd_panel(ax):
        mags = dd["magnitudes"]
        ax.bar(range(len(mags)), mags, color=["tab:red" if v > dd["threshold"] else "tab:gray" for v in mags])
        ax.axhline(dd["threshold"], color="k", linestyle="--", label=f"threshold {dd['threshold']:.2f} px")
        ax.legend(fontsize=7)
        ax.set_title(f"Dynamic degree: {dd['count_exceeding']} pairs moving, need {dd['count_required']}")
        ax.set_xlabel("sampled pair")
        ax.set_ylabel("top-5% flow (px)")

    panels = [summary] + ([frames_panel] if per_frame else []) + ([pairs_panel] if pairs else []) + \
        ([dd_panel] if dd else [])
    assert len(panels) == len(plot_panels(result))
    rows, cols = {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2)}[len(panels)]
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    from matplotlib.ticker import MaxNLocator

    for i, draw in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        draw(ax)
        if draw is not summary:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    skipped = result.get("skipped") or {}
    rect = None
    if skipped:
        labels = ", ".join(METRICS[k].label if k in METRICS else k for k in skipped)
        fig.text(0.01, 0.01, f"not measured: {labels} (see the report for why)", fontsize=8, color="0.3")
        rect = (0, 0.04, 1, 1)
    fig.tight_layout(rect=rect)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return (rgba[..., :3].astype(np.float32) / 255.0).copy()
