"""``python -m dual_adapter evaluate``: the papers' metrics for one video or a folder of videos.

One video::

    python -m dual_adapter evaluate --video OUT.mp4 --reference dog1.jpg dog2.jpg \\
        --prompt "a dog surfing" --json report.json [--plot report.png]

A folder (one row per sub-folder = method, like Table 1 of the papers)::

    python -m dual_adapter evaluate --batch results/ --reference photos/ --prompt "..." --csv table.csv

In batch mode a video's prompt is taken from ``--manifest`` (JSON ``{"<video path relative to
the folder>": {"prompt": "...", "reference": ["photo.jpg", ...]}}``), else from a ``<video
stem>.txt`` file beside it, else from ``--prompt``; its references from the manifest, else
``--reference``. Encoder weights are looked up in ``--models-dir`` (default
``$DUAL_ADAPTER_MODELS/metrics`` and ``.../clip_vision``, ``DUAL_ADAPTER_MODELS=./models``).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from .. import limits as lim
from ..errors import DualAdapterError

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="measure generated videos: CLIP-T, CLIP-I, DINO-I, T-Cons, VBench metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="one video file (mp4, webm, gif, ...)")
    src.add_argument("--batch", metavar="DIR", help="a folder of videos (searched recursively); sub-folders are methods")
    p.add_argument("--reference", nargs="+", default=None, metavar="PHOTO", help="subject photos (files or folders) for CLIP-I / DINO-I")
    p.add_argument("--prompt", default=None, help="the prompt the video was made from (CLIP-T)")
    p.add_argument(
        "--metrics",
        default="all",
        help="'all' (default: every metric whose inputs and weights are present) or a comma list of: "
        "clip_t, clip_i, dino_i, t_cons, subject_consistency, background_consistency, temporal_flickering, "
        "motion_smoothness, dynamic_degree",
    )
    p.add_argument("--fps", type=float, default=None, help="frame rate to assume (default: the file's)")
    p.add_argument("--frames", type=lim.arg_int(2, lim.MAX_CLIP_FRAMES), default=None, metavar="N",
                   help=f"evaluate the first N frames (default: the whole clip; a clip with more than "
                        f"{lim.MAX_CLIP_FRAMES} frames, or more than {lim.MAX_DECODED_BYTES >> 30} GiB of decoded "
                        f"frames, is refused: see docs/limits.md)")
    p.add_argument("--clip", default=None, help="CLIP folder or name (default clip-vit-base-patch32 in the models dirs)")
    p.add_argument("--dino", default=None, help="DINO folder or name (default dino-vits16)")
    p.add_argument("--subject-dino", default=None, help="DINO for VBench subject consistency (default: --dino; VBench uses ViT-B/16)")
    p.add_argument("--raft", default=None, help="RAFT-large state dict (default raft_large_C_T_SKHT_V2-ff5fadd5.pth)")
    p.add_argument("--models-dir", action="append", default=None, metavar="DIR", help="folder to search for encoder weights (repeatable)")
    p.add_argument(
        "--interpolator",
        choices=["flow", "blend"],
        default="flow",
        help="Motion Smoothness interpolator: flow (RAFT-based, default) or blend; neither is VBench's AMT-S",
    )
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=16, help="images per encoder batch")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full report (per-frame values included) as JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="single video: write the plot as PNG")
    p.add_argument("--csv", default=None, metavar="PATH", help="batch: write the table as CSV")
    p.add_argument("--per-video", action="store_true", help="batch: also list every video in the table / CSV")
    p.add_argument("--manifest", default=None, metavar="JSON", help="batch: per-video prompts and references")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def _read_video(path: Path, frames: int | None = None):
    """``(frames [F,H,W,3] 0..1, fps)`` via dual_adapter.media.load_clip: the first ``frames`` frames (``None``: the
    whole clip, within :mod:`dual_adapter.limits`; a clip shorter than ``frames`` is refused)."""
    from ..media import load_clip

    frames, info = load_clip(path, num_frames=frames, short_policy="error")
    return frames, info.get("fps_src") or info.get("fps_out")


def _load_refs(paths):
    if not paths:
        return None
    from ..media import load_images

    return load_images(paths)


def _progress(label: str, verbose: bool = False):
    """The shared progress line (:mod:`dual_adapter.progress`); loading an encoder is shown too."""
    from ..progress import TextProgress

    return TextProgress(label)


def _encoders(args):
    from ..metrics import EncoderSet

    return EncoderSet(
        clip=args.clip,
        dino=args.dino,
        raft=args.raft,
        subject_dino=args.subject_dino,
        search_dirs=[Path(d) for d in args.models_dir] if args.models_dir else None,
        device=args.device,
    )


def _check_outputs(args) -> None:
    for opt in ("json", "plot", "csv"):
        v = getattr(args, opt)
        if v and Path(v).exists() and not args.overwrite:
            raise DualAdapterError(f"--{opt} {v!r} already exists; choose another name or pass --overwrite")
    if args.video and (args.csv or args.per_video or args.manifest):
        raise DualAdapterError("--csv, --per-video and --manifest belong to --batch mode")
    if args.batch and args.plot:
        raise DualAdapterError("--plot is for a single --video")
    if args.batch_size < 1:
        raise DualAdapterError(f"--batch-size must be >= 1, got {args.batch_size}")


def run(args) -> int:
    _check_outputs(args)
    if args.video:
        return _run_single(args)
    return _run_batch(args)


def _run_single(args) -> int:
    from ..metrics import evaluate_video, format_table, plot_result, write_json

    video = Path(args.video)
    frames, fps = _read_video(video, args.frames)
    fps = args.fps or fps or 8.0
    refs = _load_refs(args.reference)
    result = evaluate_video(
        frames,
        prompt=args.prompt,
        references=refs,
        metrics=args.metrics,
        encoders=_encoders(args),
        fps=fps,
        interpolator=args.interpolator,
        callback=_progress(video.name, getattr(args, "verbose", False)),
        batch_size=args.batch_size,
    )
    result["info"]["video"] = str(video)
    print(format_table(result))
    if args.json:
        write_json(result, args.json, overwrite=args.overwrite)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from PIL import Image

        from ..io import atomic_write_bytes

        arr = (plot_result(result) * 255.0).round().clip(0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
        atomic_write_bytes(args.plot, buf.getvalue(), overwrite=args.overwrite)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _skipped_lines(skipped: dict, n_videos: int) -> list[str]:
    """``skipped <metrics>: <reason> (<which videos>)``, one line per distinct reason."""
    from ..metrics.suite import METRICS

    by_reason: dict[str, list[str]] = {}
    videos_of: dict[str, set] = {}
    for (k, why), vids in skipped.items():
        by_reason.setdefault(why, [])
        if k not in by_reason[why]:
            by_reason[why].append(k)
        videos_of.setdefault(why, set()).update(vids)
    out = []
    for why, keys in by_reason.items():
        n = len(videos_of[why])
        which = "all videos" if n == n_videos else f"{n} of {n_videos} videos"
        out.append(f"skipped {', '.join(METRICS[k].label if k in METRICS else k for k in keys)} ({which}): {why}")
    return out


def find_videos(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursive, sorted, hidden files skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )


def _run_batch(args) -> int:
    from ..metrics import batch_rows, evaluate_video, format_batch_table, write_batch_csv, write_json

    folder = Path(args.batch)
    if not folder.is_dir():
        raise DualAdapterError(f"--batch {str(folder)!r} is not a folder")
    videos = find_videos(folder)
    if not videos:
        raise DualAdapterError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under {str(folder)!r}")
    manifest, mroot = {}, folder
    if args.manifest:
        mpath = Path(args.manifest)
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise DualAdapterError(f"--manifest {str(mpath)!r} is not a readable JSON file: {e}") from None
        if not isinstance(manifest, dict):
            raise DualAdapterError(f"--manifest {str(mpath)!r} must be a JSON object: video path -> {{prompt, reference}}")
        mroot = mpath.parent
    common_refs = _load_refs(args.reference)
    encoders = _encoders(args)
    items, results = [], {}
    skipped: dict[tuple[str, str], list[str]] = {}
    for n, video in enumerate(videos, 1):
        rel = video.relative_to(folder)
        entry = manifest.get(rel.as_posix()) or manifest.get(video.name) or {}
        prompt = entry.get("prompt")
        side = video.with_suffix(".txt")
        if prompt is None and side.is_file():
            prompt = side.read_text(encoding="utf-8").strip()
        if prompt is None:
            prompt = args.prompt
        refs = common_refs
        if entry.get("reference"):
            r = entry["reference"]
            refs = _load_refs([mroot / x for x in ([r] if isinstance(r, str) else r)])
        frames, fps = _read_video(video, args.frames)
        print(f"[{n}/{len(videos)}] {rel.as_posix()}", file=sys.stderr)
        res = evaluate_video(
            frames,
            prompt=prompt,
            references=refs,
            metrics=args.metrics,
            encoders=encoders,
            fps=args.fps or fps or 8.0,
            interpolator=args.interpolator,
            callback=_progress(rel.as_posix(), getattr(args, "verbose", False)),
            batch_size=args.batch_size,
        )
        res["info"]["video"] = rel.as_posix()
        group = rel.parent.as_posix() if rel.parent != Path(".") else folder.name
        items.append((group, rel.as_posix(), res))
        results[rel.as_posix()] = res
        for k, why in res["skipped"].items():
            skipped.setdefault((k, why), []).append(rel.as_posix())
    for line in _skipped_lines(skipped, len(videos)):  # once, not once per video
        print(line, file=sys.stderr)
    rows = batch_rows(items, per_video=args.per_video)
    print(format_batch_table(rows))
    if args.csv:
        write_batch_csv(rows, args.csv, overwrite=args.overwrite)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.json:
        write_json({"rows": rows, "videos": results}, args.json, overwrite=args.overwrite)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
