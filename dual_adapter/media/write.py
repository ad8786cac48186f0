"""Write frames, atomically and never over an existing file unless asked: videos (:func:`write_video`: MP4 through
PyAV, GIF and animated WebP through Pillow), single images (:func:`save_image`) and PNG sequences
(:func:`write_png_frames`). Frames are ``[F, H, W, 3]`` float in ``0..1`` (clamped, rounded to 8 bit).
"""
from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import DualAdapterError
from ..io import atomic_write, atomic_write_bytes
from .frames import _check_frames, check_frame_values


#: File extensions :func:`write_video` can write (``.mp4`` via PyAV/H.264, the others via Pillow).
VIDEO_EXTENSIONS = frozenset({".mp4", ".gif", ".webp"})


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    check_frame_values(frames, "frames to write")  # NaN frames are refused, not written as black
    x = frames.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round_()
    return x.to(torch.uint8).numpy()


def _atomic_file(path: Path, write_fn, overwrite: bool = False) -> Path:
    """Write through ``write_fn(tmp_path)`` to a temp file beside ``path``, then rename (io.atomic_write)."""
    return atomic_write(path, write_fn, overwrite)


def write_video(
    frames: torch.Tensor,
    path,
    fps: float = 8,
    crf: int = 18,
    overwrite: bool = False,
) -> Path:
    """Write frames as a video file, atomically, never replacing an existing file.

    Args:
        frames: ``[F, H, W, 3]`` float in ``0..1`` (clamped, rounded to 8 bit).
        path: output file; the extension picks the format: ``.mp4`` (H.264, yuv420p, via PyAV;
            odd widths/heights are padded to even by repeating the last row/column; one encoder
            thread and no macroblock-tree, so the same frames give the same bytes), ``.gif``
            (Pillow, 256-colour palette, looping) or ``.webp`` (Pillow, animated, lossless).
        fps: frames per second (``> 0``).
        crf: H.264 quality for ``.mp4`` (0 = lossless .. 51; 18 is visually near-lossless).
        overwrite: replace an existing file (default: refuse).

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees a half-written video.

    Returns:
        the ``Path`` written.

    Raises:
        DualAdapterError: wrong shape, bad fps, unsupported extension, existing file, or an
            encoder failure.
    """
    frames = _check_frames(frames)
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise DualAdapterError(
            f"cannot write video {str(path)!r}: extension {ext!r} is not supported; expected one of {sorted(VIDEO_EXTENSIONS)}"
        )
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0 or not math.isfinite(fps):
        raise DualAdapterError(f"fps for video {str(path)!r} must be a number > 0, got {fps!r}")
    data = _to_uint8(frames)

    if ext == ".mp4":
        h, w = data.shape[1:3]
        ph, pw = h % 2, w % 2
        if ph or pw:
            data = np.pad(data, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")

        def _w(tmp):
            import av

            rate = Fraction(fps).limit_denominator(1001)
            with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
                st = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=rate)
                st.width = int(data.shape[2])
                st.height = int(data.shape[1])
                st.pix_fmt = "yuv420p"
                # Byte-reproducible output: one encoder thread (the default thread count differs between PyAV
                # versions and machines) and no macroblock-tree rate control, which made identical runs write
                # different bytes (measured: 2 of 8 runs of the same 9-frame video differed with it on).
                st.codec_context.thread_count = 1
                opts = {"crf": str(int(crf)), "threads": "1"}
                if st.codec_context.name == "libx264":
                    opts["x264-params"] = "mbtree=0:threads=1"
                st.options = opts
                for arr in data:
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                    for pkt in st.encode(vf):
                        out.mux(pkt)
                for pkt in st.encode(None):
                    out.mux(pkt)

    else:
        from PIL import Image

        def _w(tmp):
            imgs = [Image.fromarray(a, mode="RGB") for a in data]
            duration = max(1, int(round(1000.0 / fps)))
            kwargs = dict(save_all=True, append_images=imgs[1:], duration=duration, loop=0)
            if ext == ".webp":
                imgs[0].save(tmp, format="WEBP", lossless=True, **kwargs)
            else:
                imgs[0].save(tmp, format="GIF", optimize=False, **kwargs)

    try:
        return _atomic_file(path, _w, overwrite=overwrite)
    except DualAdapterError:
        raise
    except Exception as e:
        raise DualAdapterError(f"could not write video {str(path)!r}: {e}") from e


def _encode_image(image: torch.Tensor, fmt: str) -> bytes:
    from PIL import Image

    arr = _to_uint8(image.unsqueeze(0))[0]
    buf = io.BytesIO()
    im = Image.fromarray(arr, mode="RGB")
    if fmt == "JPEG":
        im.save(buf, format=fmt, quality=95)
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def save_image(image: torch.Tensor, path, overwrite: bool = False) -> Path:
    """Save one ``[H, W, 3]`` float image in ``0..1`` (clamped, 8 bit), atomically.

    The extension picks the format: ``.png`` (lossless), ``.jpg``/``.jpeg`` (quality 95),
    ``.webp``, ``.bmp``. An existing file is refused unless ``overwrite=True``.

    Returns:
        the ``Path`` written.

    Raises:
        DualAdapterError: wrong shape, unsupported extension, or an existing file.
    """
    path = Path(path)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[-1] != 3:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DualAdapterError(f"image for {str(path)!r} must be a tensor [H, W, 3], got {shape}")
    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DualAdapterError(
            f"cannot save image {str(path)!r}: extension {path.suffix!r} not supported; expected one of {sorted(_IMAGE_FORMATS)}"
        )
    return atomic_write_bytes(path, _encode_image(image, fmt), overwrite=overwrite)


def write_png_frames(
    frames: torch.Tensor, folder, prefix: str = "frame_", start: int = 0, overwrite: bool = False
) -> list[Path]:
    """Save each frame of ``[F, H, W, 3]`` (``0..1``) as ``folder/{prefix}{index:05d}.png``, atomically.

    Every target name is checked before anything is written, so an existing file fails the
    call without leaving a partial sequence (unless ``overwrite=True``).

    Returns:
        the list of ``Path`` written, in frame order.

    Raises:
        DualAdapterError: wrong shape or an existing file.
    """
    frames = _check_frames(frames)
    folder = Path(folder)
    paths = [folder / f"{prefix}{start + i:05d}.png" for i in range(frames.shape[0])]
    if not overwrite:
        for p in paths:
            if p.exists():
                raise DualAdapterError(f"output file {str(p)!r} already exists; choose another folder or prefix")
    return [save_image(frames[i], p, overwrite=overwrite) for i, p in enumerate(paths)]
