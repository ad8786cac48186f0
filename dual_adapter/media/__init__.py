"""Read photos and clips into frame tensors, shape them for CogVideoX, and write results.

Layouts used throughout (the ComfyUI ``IMAGE`` convention):

* an image is ``[H, W, 3]`` float32 in ``0..1`` (RGB, sRGB-encoded);
* a clip is ``[F, H, W, 3]`` float32 in ``0..1`` (F frames);
* the CogVideoX VAE (diffusers ``AutoencoderKLCogVideoX``) takes ``[B, 3, F, H, W]`` in
  ``-1..1``; :func:`frames_to_video_tensor` / :func:`video_tensor_to_frames` convert.

Frame-rate and length policy of :func:`load_clip`, in one place:

* ``fps=None`` keeps the source frame rate (every decoded frame from ``start_s`` on);
* ``fps=r`` resamples: output frame ``k`` is the source frame whose timestamp is nearest to
  ``start_s + k / r`` seconds (frames are repeated when ``r`` is above the source rate and
  skipped when below; no blending);
* ``num_frames=n`` takes exactly ``n`` output frames; ``None`` takes every output frame until
  the clip ends;
* a clip that runs out first is completed by ``short_policy``: ``"loop"`` repeats the frames
  that were read from the first one again (a plain loop, not ping-pong: output frame ``i`` is
  read frame ``i % m``), ``"hold"`` repeats the last frame, ``"error"`` raises; a loop or hold is
  logged as a warning naming the clip and how many frames it had;
* ``require_motion=True`` (motion clips for training) refuses a still: a single image, a
  1-frame video, or a video whose frames are all identical (:func:`check_motion_frames`);
* only what is needed is decoded: decoding stops as soon as the last wanted frame is known.

CogVideoX takes ``4k + 1`` frames (its VAE compresses time by 4 and keeps the first frame):
:func:`nearest_valid_frames` rounds a count to such a number.

Every failure a user can cause raises :class:`~dual_adapter.errors.DualAdapterError` whose
message names the file and what was expected; no raw PyAV or Pillow exception escapes.
"""
from __future__ import annotations

from .frames import (SHORT_POLICIES, check_frame_values, check_motion_frames, fit_frames,
                     frames_to_video_tensor, nearest_valid_frames, pad_or_trim_frames, video_tensor_to_frames)
from .read import (CLIP_EXTENSIONS, IMAGE_EXTENSIONS, expand_folders, load_clip, load_image, load_images,
                   probe_clip)
from .write import VIDEO_EXTENSIONS, save_image, write_png_frames, write_video

__all__ = [
    "check_frame_values",
    "check_motion_frames",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "SHORT_POLICIES",
    "load_image",
    "load_images",
    "expand_folders",
    "CLIP_EXTENSIONS",
    "load_clip",
    "probe_clip",
    "fit_frames",
    "pad_or_trim_frames",
    "frames_to_video_tensor",
    "video_tensor_to_frames",
    "nearest_valid_frames",
    "write_video",
    "save_image",
    "write_png_frames",
]

