"""Upper bounds on every size a user or a file can ask for, defined once.

The nodes' ``INPUT_TYPES`` ``max`` values, the command line's argument checks and the library's own
checks all read these constants, so a value the ComfyUI widget refuses is refused by
``python -m dual_adapter`` and by the Python API too. Each bound is checked on cheap facts (a number,
an image header, a config file, tensor names) *before* anything is allocated, so a tiny hostile file
cannot make the process build millions of modules or ask for tens of gigabytes. The values and the
reasons for them are listed in ``docs/limits.md``.

Functions raise :class:`~dual_adapter.errors.DualAdapterError` naming the input, its value and the
bound.
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
from pathlib import Path

from .errors import DualAdapterError

__all__ = [
    "MAX_FRAMES", "MAX_SIDE", "MAX_SAMPLING_STEPS", "MAX_TRAIN_STEPS", "MAX_TTT_STEPS", "MIN_CFG", "MAX_CFG",
    "MAX_RANK",
    "MAX_ADAPTER_HIDDEN", "MAX_GROUPS", "MAX_BATCH", "MAX_BLOCKS", "MAX_WIDTH", "MAX_CONFIG_INT",
    "MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "MAX_DECODED_BYTES", "MAX_CLIP_FRAMES",
    "check_int", "check_float", "check_video_size", "check_model_config", "check_config_files", "check_decoded_size", "arg_int",
    "arg_float",
]

# ----------------------------------------------------------------------------- what a run may ask for
#: Frames of a generated or training video (CogVideoX 1.5 makes 81 and 161-frame videos exist; 4 * 256 + 1).
MAX_FRAMES = 1025
#: Height and width in pixels of a generated or training video (and of Load Photos / Load Clip Frames output).
MAX_SIDE = 2048
#: Denoising steps of one sampling run (and of a CustomTTT teacher schedule).
MAX_SAMPLING_STEPS = 1000
#: Optimiser steps of one training run (LoRA, DualReal, CustomTTT merge, mini-world pre-training).
MAX_TRAIN_STEPS = 100_000
#: Optimiser steps of a CustomTTT merge (30 in the paper; each step runs the teachers).
MAX_TTT_STEPS = 10_000
#: Classifier-free guidance scale: 1 = no guidance; below 1 is not guidance (it extrapolates away from the prompt).
MIN_CFG = 1.0
MAX_CFG = 30.0
#: LoRA rank.
MAX_RANK = 512
#: DualReal adapter bottleneck width (64 in the paper) and controller hidden width (128).
MAX_ADAPTER_HIDDEN = 4096
#: StageBlender weight groups (7 in the paper); also bounded by the block count.
MAX_GROUPS = 256
#: Clips / photos per optimiser step.
MAX_BATCH = 64

# ----------------------------------------------------------------------------- what a file may declare
#: Transformer blocks / U-Net layers a model or adapter config may declare (CogVideoX 5B has 42).
MAX_BLOCKS = 256
#: Width of a model or adapter (hidden size, channels, attention heads x head size; CogVideoX 5B: 3072).
MAX_WIDTH = 16_384
#: Any other integer in a model config (sample sizes, text length, vocabulary...).
MAX_CONFIG_INT = 1 << 20

# ----------------------------------------------------------------------------- what media may decode to
#: Pixels of one decoded photo or clip frame, read from the file header before decoding (8192 x 8192).
MAX_IMAGE_PIXELS = 8192 * 8192
#: Longest side of a decoded photo or clip frame (a 1 x 100000 strip is refused before it is decoded).
MAX_IMAGE_SIDE = 16_384
#: Bytes of float32 RGB frames one clip read may hold at once (4 GiB: just enough for the longest clip the
#: nodes allow, 1025 frames, at 720 x 480, which takes 3.96 GiB).
MAX_DECODED_BYTES = 4 << 30
#: Frames one clip read may return when it is read to its end (``num_frames=None``).
MAX_CLIP_FRAMES = 4096


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an ``int`` in ``lo .. hi`` (inclusive).

    Raises:
        DualAdapterError: not an integer (a bool, a float such as ``1e8`` from a JSON file, a string),
            or out of range; the message names ``name``.
    """
    if not _is_int(value):
        raise DualAdapterError(f"{name}={value!r}: must be an integer in {lo} .. {hi}")
    if not lo <= int(value) <= hi:
        raise DualAdapterError(f"{name}={value}: must be in {lo} .. {hi}")
    return int(value)


def check_float(name: str, value, lo: float, hi: float) -> float:
    """``value`` as a finite ``float`` in ``lo .. hi`` (inclusive).

    Raises:
        DualAdapterError: not a number, NaN/inf, or out of range; the message names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise DualAdapterError(f"{name}={value!r}: must be a finite number in {lo:g} .. {hi:g}")
    if not lo <= float(value) <= hi:
        raise DualAdapterError(f"{name}={value!r}: must be in {lo:g} .. {hi:g}")
    return float(value)


def check_video_size(num_frames, height, width) -> None:
    """The upper bounds of a video's size: ``num_frames <= MAX_FRAMES``, ``height, width <= MAX_SIDE``.

    The backbones check their own lower bounds and multiples (4k+1 frames, multiples of 16 px) after this.

    Raises:
        DualAdapterError: a value above its bound (naming ``frames`` / ``height`` / ``width``).
    """
    for name, v, hi in (("frames", num_frames, MAX_FRAMES), ("height", height, MAX_SIDE), ("width", width, MAX_SIDE)):
        if _is_int(v) and v > hi:
            raise DualAdapterError(f"{name}={v}: at most {hi} (the bound shared by the nodes and the command line; "
                                   f"see docs/limits.md)")


#: Config keys that count blocks / layers.
_BLOCK_KEYS = ("num_layers", "num_blocks", "num_hidden_layers", "layers_per_block", "transformer_layers_per_block",
               "num_single_layers")
#: Config keys that are widths.
_WIDTH_KEYS = ("num_attention_heads", "attention_head_dim", "time_embed_dim", "text_embed_dim", "in_channels",
               "out_channels", "cross_attention_dim", "hidden_size", "dim", "d_model", "d_ff", "intermediate_size",
               "latent_channels", "block_out_channels", "attention_head_dims", "hidden", "cond_dim",
               "controller_hidden", "norm_num_groups", "num_heads")


def check_model_config(config: dict, what: str) -> None:
    """Bound every integer of a model's or adapter's ``config.json`` before the model is built.

    Block counts (``num_layers`` ...) are at most :data:`MAX_BLOCKS`, widths (``num_attention_heads``,
    ``attention_head_dim``, channels ...) and their product at most :data:`MAX_WIDTH`, any other integer at most
    :data:`MAX_CONFIG_INT`; lists (``block_out_channels``) hold at most :data:`MAX_BLOCKS` such integers.

    Args:
        config: the parsed JSON (keys starting with ``_`` are ignored).
        what: the file or folder, for the message.

    Raises:
        DualAdapterError: a value above its bound, or a float where a count is expected (``1e8``).
    """
    if not isinstance(config, dict):
        raise DualAdapterError(f"{what}: the config is not a JSON object")
    for key, value in config.items():
        if key.startswith("_"):
            continue
        hi = MAX_BLOCKS if key in _BLOCK_KEYS else MAX_WIDTH if key in _WIDTH_KEYS else MAX_CONFIG_INT
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > MAX_BLOCKS:
            raise DualAdapterError(f"{what}: config {key} lists {len(value)} values (at most {MAX_BLOCKS})")
        for v in values:
            if isinstance(v, float) and key in _BLOCK_KEYS + _WIDTH_KEYS:
                raise DualAdapterError(f"{what}: config {key}={v!r} must be an integer")
            if _is_int(v) and abs(int(v)) > hi:
                raise DualAdapterError(f"{what}: config {key}={v} is above the bound {hi} (see docs/limits.md); "
                                       f"the file is damaged or not made for this pack")
    heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    if _is_int(heads) and _is_int(head_dim) and heads * head_dim > MAX_WIDTH:
        raise DualAdapterError(f"{what}: config num_attention_heads x attention_head_dim = {heads * head_dim} is above "
                               f"the bound {MAX_WIDTH} (see docs/limits.md)")


def check_config_files(folder, parts) -> None:
    """:func:`check_model_config` on each ``folder/part/config.json`` that exists, before any model is built.

    Raises:
        DualAdapterError: a config that is not a JSON object, or a value above its bound (naming the file).
    """
    for part in parts:
        path = Path(folder) / part / "config.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DualAdapterError(f"config {str(path)!r} is not valid JSON ({e})") from None
        check_model_config(data, f"config {str(path)!r}")


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_decoded_size(what: str, width: int, height: int, frames: int = 1) -> None:
    """Refuse media whose decoded size is too large, from its header, before decoding.

    One frame: at most :data:`MAX_IMAGE_SIDE` a side and :data:`MAX_IMAGE_PIXELS` pixels; ``frames`` of them as
    float32 RGB: at most :data:`MAX_DECODED_BYTES`.

    Raises:
        DualAdapterError: naming ``what`` (the file), its size and the bound.
    """
    w, h, n = int(width), int(height), int(frames)
    if max(w, h) > MAX_IMAGE_SIDE or w * h > MAX_IMAGE_PIXELS:
        raise DualAdapterError(f"{what} is {w} x {h} pixels: at most {MAX_IMAGE_SIDE} a side and "
                               f"{MAX_IMAGE_PIXELS // 2**20} megapixels are decoded (see docs/limits.md); "
                               f"downscale it first")
    need = n * w * h * 3 * 4
    if need > MAX_DECODED_BYTES:
        raise DualAdapterError(f"{what}: {n} frames of {w} x {h} pixels would take {_mib(need)} decoded "
                               f"(at most {_mib(MAX_DECODED_BYTES)}, see docs/limits.md); ask for fewer frames or a "
                               f"lower fps, or downscale the clip first")


# ----------------------------------------------------------------------------- command line
def _arg(convert, lo, hi):
    """An ``argparse`` ``type=`` that parses with ``convert`` and refuses non-finite values or values outside
    ``lo .. hi`` with the bound in the message (argparse exits with status 2)."""

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if convert is int else 'a number'}") \
                from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range {lo:g} .. {hi:g} (see docs/limits.md)")
        return v

    parse.__name__ = convert.__name__
    return parse


def arg_int(lo: int, hi: int):
    """An ``argparse`` ``type=`` for an integer in ``lo .. hi``: ``--height 160000`` fails at parse time."""
    return _arg(int, lo, hi)


def arg_float(lo: float, hi: float):
    """An ``argparse`` ``type=`` for a finite number in ``lo .. hi``: ``--cfg -3`` fails at parse time."""
    return _arg(float, lo, hi)
