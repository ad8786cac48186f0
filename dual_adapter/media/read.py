"""Read photos and clips into frame tensors (``[H, W, 3]`` / ``[F, H, W, 3]`` float32 in ``0..1``).

Images (:func:`load_image`, :func:`load_images`, :func:`expand_folders`) through Pillow, with alpha composited on a
background and embedded colour profiles converted to sRGB; clips (:func:`load_clip`, :func:`probe_clip`) through
PyAV, or Pillow for GIF and animated WebP, with the frame-rate and length policy of :mod:`dual_adapter.media`.
Every failure a user can cause raises :class:`~dual_adapter.errors.DualAdapterError` naming the file.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from .. import limits
from ..errors import DualAdapterError
from .frames import _check_policy, check_motion_frames, pad_or_trim_frames

log = logging.getLogger(__package__)


#: File extensions :func:`load_images` treats as images when it expands a directory.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".tga", ".ppm", ".pgm"}
)


#: File extensions of clips :func:`load_clip` reads, for listing folders (Load Clip Frames, ``miniworld score``).
CLIP_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".webp"})


_NAMED_BACKGROUNDS = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "grey": (0.5, 0.5, 0.5),
}


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------
def _background_rgb(background) -> np.ndarray:
    """``background`` (name, 0..1 floats or 0..255 ints) -> float32 array [3] in 0..1."""
    if isinstance(background, str):
        key = background.strip().lower()
        if key not in _NAMED_BACKGROUNDS:
            raise DualAdapterError(
                f"background {background!r} is not known; expected one of "
                f"{sorted(_NAMED_BACKGROUNDS)} or an (r, g, b) triple"
            )
        return np.asarray(_NAMED_BACKGROUNDS[key], dtype=np.float32)
    try:
        vals = [float(v) for v in background]
    except TypeError:
        vals = []
    if len(vals) != 3:
        raise DualAdapterError(
            f"background {background!r} must be a colour name or an (r, g, b) triple"
        )
    arr = np.asarray(vals, dtype=np.float32)
    if arr.max() > 1.0:  # given as 0..255
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def _to_srgb(im, path: Path):
    """Convert an image with an embedded ICC profile to sRGB; unchanged when that is not possible."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA"):
        return im
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, src, dst, outputMode=im.mode)
    except Exception:  # broken profile or no LittleCMS: keep the pixels as stored
        return im


def load_image(path, background="white", color_manage: bool = True) -> torch.Tensor:
    """Load one image file as an RGB tensor.

    Args:
        path: image file (anything Pillow reads: PNG, JPEG, WebP, BMP, TIFF, GIF ...).
        background: colour that transparent pixels are composited over: ``"white"`` (default),
            ``"black"``, ``"gray"``, or an ``(r, g, b)`` triple in ``0..1`` (floats) or
            ``0..255``. Compositing is ``rgb * a + background * (1 - a)`` in the stored (sRGB)
            values; it applies to RGBA/LA images and to palette or grayscale images with a
            transparency entry.
        color_manage: when the file embeds an ICC profile (e.g. Display P3 phone photos),
            convert its pixels to sRGB, the space the models were trained in.

    Grayscale (8- or 16-bit) is replicated to three channels; palette, CMYK and other modes
    are converted to RGB; EXIF orientation is applied; of an animated file the first frame
    is used.

    Returns:
        ``torch.Tensor`` ``[H, W, 3]`` float32 in ``0..1`` (H, W in pixels after EXIF rotation).

    Raises:
        DualAdapterError: the file does not exist, is not an image, is corrupted/truncated, or is
            larger than :data:`~dual_adapter.limits.MAX_IMAGE_PIXELS` / ``MAX_IMAGE_SIDE`` (read
            from its header, before it is decoded).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DualAdapterError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise DualAdapterError(
            f"image path {str(path)!r} is a directory; expected an image file (use load_images for folders)"
        )
    bg = _background_rgb(background)
    try:
        with Image.open(path) as im:
            limits.check_decoded_size(f"image file {str(path)!r}", *im.size)  # from the header, before decoding
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                rgb = np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=2)
                alpha = None
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                if arr.size and float(arr.max()) > 1.0:
                    arr = arr / 255.0
                rgb = np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=2)
                alpha = None
            else:
                has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
                if has_alpha:
                    im = im.convert("RGBA")
                elif mode != "RGB":
                    im = im.convert("RGB")
                if color_manage:
                    im = _to_srgb(im, path)
                arr = np.asarray(im, dtype=np.float32) / 255.0
                rgb = arr[..., :3]
                alpha = arr[..., 3:4] if has_alpha else None
    except DualAdapterError:
        raise
    except FileNotFoundError as e:
        raise DualAdapterError(f"image file {str(path)!r} does not exist") from e
    except UnidentifiedImageError as e:
        raise DualAdapterError(
            f"{str(path)!r} is not an image Pillow can read; expected PNG, JPEG, WebP, BMP, TIFF or GIF"
        ) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DualAdapterError(f"image file {str(path)!r} is corrupted or truncated: {e}") from e
    except Exception as e:  # anything else Pillow raises on a malformed file
        raise DualAdapterError(f"image file {str(path)!r} could not be read: {e}") from e
    if alpha is not None:
        rgb = rgb * alpha + bg[None, None, :] * (1.0 - alpha)
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DualAdapterError(f"image file {str(path)!r} has no pixels")
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).clamp_(0.0, 1.0)


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def expand_folders(paths_or_dirs, extensions, what: str) -> list[Path]:
    """Files and folders -> files: a folder contributes its files whose extension is in ``extensions``, in
    natural name order (``2.png`` before ``10.png``), not recursing, skipping hidden files and other files; a
    file named explicitly is kept as it is (its reader checks it).

    Args:
        paths_or_dirs: a list of files and/or folders (a single path is accepted too).
        extensions: lower-case suffixes with the dot, e.g. :data:`IMAGE_EXTENSIONS`, :data:`CLIP_EXTENSIONS`.
        what: the kind of file, for messages (``"image"``, ``"clip"``).

    Raises:
        DualAdapterError: the list is empty, a path does not exist, or a folder holds no such files.
    """
    if isinstance(paths_or_dirs, (str, os.PathLike)):
        paths_or_dirs = [paths_or_dirs]
    entries = list(paths_or_dirs or [])
    if not entries:
        raise DualAdapterError(f"{what} list is empty; expected at least one {what} file or folder")
    files: list[Path] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            found = sorted((c for c in p.iterdir()
                            if c.is_file() and not c.name.startswith(".") and c.suffix.lower() in extensions),
                           key=_natural_key)
            if not found:
                raise DualAdapterError(f"folder {str(p)!r} contains no {what} files; expected files ending in "
                                       f"{', '.join(sorted(extensions))}")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise DualAdapterError(f"{what} path {str(p)!r} does not exist")
    return files


def load_images(paths_or_dirs, background="white", color_manage: bool = True) -> list[torch.Tensor]:
    """Load several images; directories expand to the image files directly inside them.

    Args:
        paths_or_dirs: a list of files and/or directories (a single path is accepted too).
            A directory contributes its files whose extension is in :data:`IMAGE_EXTENSIONS`,
            in natural name order (``2.png`` before ``10.png``), not recursing, skipping hidden
            files; other files in it are skipped silently. A file named explicitly must be an image.
        background, color_manage: as in :func:`load_image`.

    Returns:
        list of ``[H, W, 3]`` float32 tensors in ``0..1``, in input order (sizes may differ).

    Raises:
        DualAdapterError: the list is empty, a path does not exist, a directory holds no
            image files, or a file is not a readable image.
    """
    files = expand_folders(paths_or_dirs, IMAGE_EXTENSIONS, "image")
    return [load_image(f, background=background, color_manage=color_manage) for f in files]


def _open_container(path: Path):
    import av

    if not path.exists():
        raise DualAdapterError(f"video file {str(path)!r} does not exist")
    if path.is_dir():
        raise DualAdapterError(f"video path {str(path)!r} is a directory; expected a video file")
    try:
        container = av.open(str(path), mode="r")
    except Exception as e:
        raise DualAdapterError(
            f"{str(path)!r} is not a readable video file (corrupted, truncated or not a video): {e}"
        ) from e
    if not container.streams.video:
        container.close()
        raise DualAdapterError(f"{str(path)!r} has no video stream; expected a video clip")
    return container


def _read_with_pillow(path: Path) -> bool:
    """True when the file starts like a WebP (``RIFF....WEBP``) or a GIF (``GIF87a`` / ``GIF89a``), whatever its
    extension: those clips are read with Pillow (:class:`_PillowClip`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return (len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[:6] in (b"GIF87a", b"GIF89a")


class _PillowClip:
    """An animated (or still) WebP or GIF read with Pillow. FFmpeg, and so PyAV, cannot decode animated WebP
    (``avcodec_send_packet``: "Invalid data found"), which is what ComfyUI's SaveAnimatedWEBP and the
    pack's ``write_video(... .webp)`` write; and FFmpeg's GIF decoder ends a truncated GIF silently (a clip cut
    after its first frame came back as that frame looped), where Pillow reports the truncation. Same facts as
    :func:`_stream_facts`; frames in order as ``(seconds, PIL RGB image)``, from each frame's ``duration``
    (ms; 1/25 s when absent)."""

    def __init__(self, path: Path):
        from PIL import Image

        try:
            self.image = Image.open(path)
            limits.check_decoded_size(f"clip {str(path)!r}", *self.image.size)  # from the header, before decoding
            self.image.load()
            self.n = int(getattr(self.image, "n_frames", 1))
        except DualAdapterError:
            raise
        except Exception as e:
            raise DualAdapterError(
                f"{str(path)!r} is not a readable video file (corrupted, truncated or not a video): {e}"
            ) from e
        self.codec = str(self.image.format or "webp").lower()
        ms = self.image.info.get("duration") or 0
        rate = 1000.0 / ms if ms and ms > 0 else 25.0
        self.width, self.height = self.image.size
        self.facts = {"fps": rate, "declared": self.n, "duration": self.n / rate, "start": 0.0}

    def frames(self):
        t = 0.0
        for i in range(self.n):
            self.image.seek(i)
            yield t, self.image.convert("RGB")
            ms = self.image.info.get("duration") or 0
            t += (ms / 1000.0) if ms and ms > 0 else 1.0 / self.facts["fps"]

    def close(self):
        self.image.close()


def _stream_facts(container, stream) -> dict:
    """Frame rate, declared frame count and duration of a video stream (best effort)."""
    rate = None
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        try:
            r = getattr(stream, attr, None)
        except Exception:
            r = None
        if r:
            rate = float(r)
            break
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000.0
    declared = int(stream.frames or 0)
    if rate is None and declared and duration:
        rate = declared / duration
    if duration is None and declared and rate:
        duration = declared / rate
    start = 0.0
    if stream.start_time is not None and stream.time_base:
        start = float(stream.start_time * stream.time_base)
    return {"fps": rate, "declared": declared, "duration": duration, "start": start}


def probe_clip(path) -> dict:
    """Read a clip's metadata without decoding it.

    Returns:
        ``{"fps": float | None, "n_frames": int (0 when the container does not declare it),
        "duration_s": float | None, "width": int, "height": int, "codec": str}``.

    Raises:
        DualAdapterError: missing file, not a video, or no video stream.
    """
    path = Path(path)
    if path.is_file() and _read_with_pillow(path):
        clip = _PillowClip(path)
        clip.close()
        return {"fps": clip.facts["fps"], "n_frames": clip.n, "duration_s": clip.facts["duration"],
                "width": int(clip.width), "height": int(clip.height), "codec": clip.codec}
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        facts = _stream_facts(container, stream)
        return {
            "fps": facts["fps"],
            "n_frames": facts["declared"],
            "duration_s": facts["duration"],
            "width": int(stream.codec_context.width),
            "height": int(stream.codec_context.height),
            "codec": str(stream.codec_context.name),
        }
    finally:
        container.close()


def load_clip(
    path,
    num_frames: int | None = None,
    fps: float | None = None,
    start_s: float = 0.0,
    short_policy: str = "loop",
    require_motion: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Decode a video clip into frames, resampling its frame rate and fixing its length.

    Args:
        path: a video file PyAV/FFmpeg reads (MP4, AVI, MKV, WebM, MOV, animated PNG ...; the
            first video stream is used), or a GIF or animated WebP (read with Pillow: FFmpeg cannot decode
            animated WebP, which ComfyUI's SaveAnimatedWEBP writes, and ends a truncated GIF silently).
        num_frames: number of output frames (``>= 1``); ``None`` = every output frame until
            the clip ends.
        fps: output frame rate in frames per second (``> 0``); output frame ``k`` is the source
            frame nearest to ``start_s + k / fps`` seconds. ``None`` keeps the source rate.
        start_s: where to start, in seconds from the first frame (``>= 0``).
        short_policy: when the clip ends before ``num_frames`` output frames: ``"loop"``
            (plain loop of the frames read, from the first again), ``"hold"`` (repeat the last
            frame) or ``"error"`` (raise). A loop or hold is logged as a warning.
        require_motion: refuse a still (an image file, a 1-frame video, identical frames): for
            motion clips that a method trains on (:func:`check_motion_frames`).

    Only the frames needed are decoded (decoding stops early in long clips) and only the
    selected frames are converted to RGB.

    Returns:
        ``(frames, info)``: ``frames`` is ``[F, H, W, 3]`` float32 in ``0..1`` at the source
        resolution; ``info`` is a dict with ``fps_src`` (source frames/s), ``n_src`` (source frame
        count: the declared count, or the count decoded when the clip was read to its end, or an
        estimate from duration x fps), ``fps_out`` (frames/s of the output), ``duration_s``
        (source clip duration in seconds), ``n_out`` (= F), ``n_read`` (distinct output frames
        taken from the clip before ``short_policy`` filled the rest), ``padded`` (bool) and
        ``start_s``.

    Raises:
        DualAdapterError: missing file; not a video, corrupted or truncated file (including a
            clip that declares more frames than can be decoded when those frames are needed);
            no video stream; ``num_frames < 1``; ``fps <= 0``; ``start_s < 0`` or past the end;
            unknown ``short_policy``; too short a clip with ``short_policy="error"``; a still with
            ``require_motion=True``; a frame or a read above the bounds of :mod:`dual_adapter.limits`
            (checked from the header before decoding; a read to the end stops at ``MAX_CLIP_FRAMES``).
    """
    path = Path(path)
    _check_policy(short_policy)
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1
    ):
        raise DualAdapterError(f"num_frames for clip {str(path)!r} must be an integer >= 1 or None, got {num_frames!r}")
    if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0 or not math.isfinite(fps)):
        raise DualAdapterError(f"fps for clip {str(path)!r} must be a number > 0 or None, got {fps!r}")
    if not isinstance(start_s, (int, float)) or isinstance(start_s, bool) or not start_s >= 0 or not math.isfinite(start_s):
        raise DualAdapterError(f"start_s for clip {str(path)!r} must be a number of seconds >= 0, got {start_s!r}")

    if path.is_file() and _read_with_pillow(path):
        source = _PillowClip(path)
        facts = source.facts
        try:
            picked, n_decoded, reached_end = _decode_selected(source.frames(), facts, num_frames, fps, float(start_s),
                                                              path, _max_frames(path, source.width, source.height,
                                                                                num_frames))
        finally:
            source.close()
    else:
        container = _open_container(path)
        try:
            stream = container.streams.video[0]
            facts = _stream_facts(container, stream)
            cc = stream.codec_context
            max_out = _max_frames(path, cc.width, cc.height, num_frames)
            try:
                stream.thread_type = "AUTO"
            except Exception:
                pass
            picked, n_decoded, reached_end = _decode_selected(
                _av_frames(container, stream, facts), facts, num_frames, fps, float(start_s), path, max_out)
        finally:
            container.close()
    fps_src = facts["fps"]

    declared = facts["declared"]
    if not picked:
        if n_decoded == 0:
            raise DualAdapterError(
                f"{str(path)!r} has a video stream but no frame could be decoded (corrupted or truncated file)"
            )
        raise DualAdapterError(
            f"start_s={start_s} s is past the end of clip {str(path)!r} "
            f"(duration {facts['duration'] or n_decoded / (fps_src or 1):.3f} s)"
        )
    wanted = num_frames
    short = wanted is not None and len(picked) < wanted
    if reached_end and declared and n_decoded + max(2, int(0.02 * declared)) < declared:
        raise DualAdapterError(
            f"clip {str(path)!r} declares {declared} frames but only {n_decoded} could be decoded; "
            f"the file is truncated or corrupted"
        )
    # convert each distinct source frame once
    cache: dict[int, torch.Tensor] = {}
    out = []
    for src_idx, frame in picked:
        t = cache.get(src_idx)
        if t is None:
            try:
                arr = np.array(frame) if not hasattr(frame, "to_ndarray") else frame.to_ndarray(format="rgb24")
            except Exception as e:
                raise DualAdapterError(f"clip {str(path)!r}: frame {src_idx} could not be converted to RGB: {e}") from e
            t = torch.from_numpy(arr)
            cache[src_idx] = t
        out.append(t)
    frames = torch.stack(out).to(torch.float32).div_(255.0)
    n_read = frames.shape[0]
    if require_motion:
        check_motion_frames(torch.stack(list(cache.values())), f"clip {str(path)!r}")
    if wanted is not None:
        frames = pad_or_trim_frames(frames, wanted, short_policy, name=str(path))
        if short:
            how = ("looped from its first frame" if short_policy == "loop" else "completed by repeating its last frame")
            rate = f" at {float(fps):g} fps" if fps is not None else ""
            log.warning("clip %r has only %d of the %d frames asked for%s; %s (short_policy=%r; 'hold' repeats "
                        "the last frame, 'error' refuses; or ask for fewer frames / a lower fps)", str(path), n_read,
                        wanted, rate, how, short_policy)
    n_src = declared or (n_decoded if reached_end else None)
    if not n_src and facts["duration"] and fps_src:
        n_src = int(round(facts["duration"] * fps_src))
    duration = facts["duration"]
    if duration is None and reached_end and fps_src:
        duration = n_decoded / fps_src
    info = {
        "fps_src": fps_src,
        "n_src": n_src,
        "fps_out": float(fps) if fps is not None else fps_src,
        "duration_s": duration,
        "n_out": int(frames.shape[0]),
        "n_read": int(n_read),
        "padded": bool(short),
        "start_s": float(start_s),
    }
    return frames, info


def _av_frames(container, stream, facts):
    """PyAV's frames of ``stream`` in decoding order as ``(seconds from the stream start, av.VideoFrame)``."""
    fps_src, t0 = facts["fps"], facts["start"]
    for idx, frame in enumerate(container.decode(stream)):
        if frame.pts is not None and frame.time_base:
            t = float(frame.pts * frame.time_base) - t0
        else:
            t = idx / fps_src if fps_src else float(idx)
        yield t, frame


def _max_frames(path: Path, width: int, height: int, num_frames: int | None) -> int:
    """How many output frames of ``width x height`` one read may hold (:mod:`dual_adapter.limits`): the header's
    size is checked first (0 = not declared: the first decoded frame is checked instead); ``num_frames`` frames
    must fit in :data:`~dual_adapter.limits.MAX_DECODED_BYTES`; a read to the end stops at
    :data:`~dual_adapter.limits.MAX_CLIP_FRAMES` or that many bytes."""
    w, h = int(width or 0), int(height or 0)
    if w and h:
        limits.check_decoded_size(f"clip {str(path)!r}", w, h, num_frames or 1)
    if num_frames is not None:
        return int(num_frames)
    if not (w and h):
        return limits.MAX_CLIP_FRAMES
    return max(1, min(limits.MAX_CLIP_FRAMES, limits.MAX_DECODED_BYTES // (w * h * 12)))


def _decode_selected(frames, facts, num_frames, fps, start_s, path, max_out: int | None = None):
    """Decode frames in order and pick those nearest to the wanted timestamps.

    ``frames`` yields ``(seconds, frame)`` in order (:func:`_av_frames`, :meth:`_PillowClip.frames`).
    Returns ``(picked, n_decoded, reached_end)`` where ``picked`` is a list of
    ``(source_index, frame)`` in output order (one entry per output frame). More than ``max_out`` output frames
    (a read to the end of a very long clip), or a first frame above the size bounds, raise
    :class:`DualAdapterError` while decoding, before the frames are converted.
    """
    fps_src = facts["fps"]
    half = 0.5 / fps_src if fps_src else 0.0
    picked: list = []
    n_decoded = 0
    prev = None  # (index, time, frame)
    k = 0  # next output frame
    reached_end = True

    def done():
        return num_frames is not None and len(picked) >= num_frames

    try:
        for t, frame in frames:
            idx = n_decoded
            n_decoded += 1
            if idx == 0:  # the decoded size, where the header declared none
                fw, fh = (frame.width, frame.height) if hasattr(frame, "width") else frame.size
                limits.check_decoded_size(f"clip {str(path)!r}", fw, fh, num_frames or 1)
            if max_out is not None and len(picked) > max_out:
                raise DualAdapterError(
                    f"clip {str(path)!r} has more than {max_out} frames to return: at most {limits.MAX_CLIP_FRAMES} "
                    f"frames and {limits.MAX_DECODED_BYTES / 2**30:.0f} GiB of decoded frames are read at once (see "
                    f"docs/limits.md); ask for a number of frames or a lower fps")
            if fps is None:
                # native rate: every frame from the first one at/after start_s (half-frame tolerance)
                if t + half >= start_s - 1e-9:
                    picked.append((idx, frame))
                    if done():
                        reached_end = False
                        break
                continue
            # resampling: fill every target time T_k <= t with the nearer of prev / this frame
            while True:
                target = start_s + k / fps
                if t < target:
                    break
                if prev is not None and abs(prev[1] - target) <= abs(t - target):
                    picked.append((prev[0], prev[2]))
                else:  # (also when the stream starts after the first target)
                    picked.append((idx, frame))
                k += 1
                if done():
                    break
            if done():
                reached_end = False
                break
            prev = (idx, t, frame)
    except DualAdapterError:
        raise
    except Exception as e:
        raise DualAdapterError(
            f"clip {str(path)!r} could not be decoded after {n_decoded} frame(s) (corrupted or truncated file): {e}"
        ) from e

    if fps is not None and reached_end and prev is not None:
        # targets after the last decoded frame: it still covers those within half a source frame
        while not done():
            target = start_s + k / fps
            if target - prev[1] > half + 1e-9:
                break
            picked.append((prev[0], prev[2]))
            k += 1
    if max_out is not None and len(picked) > max_out:
        raise DualAdapterError(f"clip {str(path)!r} has {len(picked)} frames to return: at most {max_out} are read at "
                               f"once (see docs/limits.md); ask for a number of frames or a lower fps")
    return picked, n_decoded, reached_end
