"""Evaluate Video: the papers' metrics (DreamVideo's CLIP-T / CLIP-I / DINO-I / T-Cons and VBench's
consistency, flicker, dynamic degree, motion smoothness) as a ComfyUI node."""
from __future__ import annotations

import json

import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.metrics import DEFAULT_NAMES, METRICS, EncoderSet, evaluate_video, format_table, plot_result

from . import bridge

_FOLDERS = ("metrics", "clip_vision")
_CACHE: dict = {}


def _search_dirs():
    dirs = []
    for f in _FOLDERS:
        dirs += bridge.folder_dirs(f)
    return dirs


def _dir_choices(default: str) -> list[str]:
    found = []
    for f in _FOLDERS:
        try:
            found += bridge.list_model_dirs(f)
        except Exception:
            pass
    return [default] + sorted({n for n in found if n != default})


def _raft_choices() -> list[str]:
    found = []
    try:
        found = [n for n in bridge.list_files("metrics") if "raft" in n.lower()]
    except Exception:
        pass
    return [DEFAULT_NAMES["raft"]] + sorted({n for n in found if n != DEFAULT_NAMES["raft"]})


def _encoders(clip: str, dino: str, raft: str) -> EncoderSet:
    key = (clip, dino, raft, tuple(str(d) for d in _search_dirs()))
    enc = _CACHE.get(key)
    if enc is None:
        _CACHE.clear()  # keep one set of encoders in memory
        enc = EncoderSet(clip=clip, dino=dino, raft=raft, search_dirs=_search_dirs())
        _CACHE[key] = enc
    return enc


class DualAdapterEvaluateVideo:
    DESCRIPTION = (
        "Measure a generated video with the papers' metrics: CLIP-T (text alignment), CLIP-I and DINO-I "
        "(subject fidelity to the reference photos), T-Cons (DreamVideo's definitions) and VBench's subject / "
        "background consistency, temporal flickering, dynamic degree and motion smoothness. Encoders load "
        "offline from ComfyUI/models/metrics (or models/clip_vision): clip-vit-base-patch32/, dino-vits16/ "
        "(transformers folders) and raft_large_C_T_SKHT_V2-ff5fadd5.pth (torchvision RAFT-large). Motion "
        "smoothness uses a flow-based (or blend) interpolator instead of VBench's AMT-S, so that number is "
        "not comparable with VBench's. Outputs a text table, a plot and the full report as JSON."
    )
    CATEGORY = "DualAdapter/Evaluate"
    FUNCTION = "evaluate"
    RETURN_TYPES = ("STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("table", "plot", "report_json")
    OUTPUT_TOOLTIPS = (
        "the metrics as a text table, with notes and the reasons any metric was skipped",
        "a plot: summary bars, per-frame similarities, per-pair differences, flow magnitudes vs. threshold",
        "the full report (per-frame values included) as JSON",
    )
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "the generated video's frames (IMAGE batch, at least 2 frames)"}),
                "prompt": (
                    "STRING",
                    {"multiline": True, "default": "", "tooltip": "the prompt the video was made from (CLIP-T); empty skips CLIP-T"},
                ),
                "metrics": (
                    "STRING",
                    {
                        "default": "all",
                        "tooltip": "'all' = every metric whose inputs and weights are present (others are listed as "
                        "skipped), or a comma list of: " + ", ".join(METRICS) + " (a listed metric that cannot run is an error)",
                    },
                ),
                "fps": (
                    "FLOAT",
                    {
                        "default": 8.0,
                        "min": 0.1,
                        "max": 240.0,
                        "step": 0.1,
                        "tooltip": "frame rate of the video (CogVideoX: 8). Dynamic degree samples at ~8 fps and scales its threshold",
                    },
                ),
                "clip_model": (
                    _dir_choices(DEFAULT_NAMES["clip"]),
                    {"tooltip": "CLIP folder (transformers format, with tokenizer) in models/metrics or models/clip_vision; "
                     "used by CLIP-T, CLIP-I, T-Cons and background consistency"},
                ),
                "dino_model": (
                    _dir_choices(DEFAULT_NAMES["dino"]),
                    {"tooltip": "DINO ViT folder (transformers, e.g. facebook/dino-vits16) in models/metrics; used by DINO-I and "
                     "subject consistency"},
                ),
                "raft_weights": (
                    _raft_choices(),
                    {"tooltip": "torchvision RAFT-large state dict in models/metrics; used by dynamic degree and the flow interpolator"},
                ),
                "motion_interpolator": (
                    ["flow", "blend"],
                    {"tooltip": "motion smoothness interpolator: 'flow' (RAFT + linear-motion warp) or 'blend' (average, no "
                     "weights). Neither is VBench's AMT-S: the number is not VBench's"},
                ),
            },
            "optional": {
                "reference_photos": ("IMAGE", {"tooltip": "the subject photos (CLIP-I, DINO-I); leave unconnected to skip them"}),
            },
        }

    def evaluate(self, frames, prompt, metrics, fps, clip_model, dino_model, raft_weights, motion_interpolator, reference_photos=None):
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DualAdapterError(f"frames must be an IMAGE batch [N, H, W, 3], got {getattr(frames, 'shape', type(frames))}")
        if frames.shape[0] < 2:
            raise DualAdapterError(f"frames: a video needs at least 2 frames to evaluate, got {frames.shape[0]}")
        refs = None
        if reference_photos is not None:
            if not isinstance(reference_photos, torch.Tensor) or reference_photos.ndim != 4 or reference_photos.shape[-1] != 3:
                raise DualAdapterError("reference_photos must be an IMAGE batch [N, H, W, 3]")
            refs = reference_photos
        state: dict = {}

        def cb(step, total, info):
            if "bar" not in state:
                state["bar"] = bridge.Progress(total)
            state["bar"](step, total, info)

        bridge.throw_if_interrupted()
        enc = _encoders(clip_model, dino_model, raft_weights)
        with torch.inference_mode():
            result = evaluate_video(
                frames,  # read only: every metric copies what it converts
                prompt=prompt,
                references=refs,
                metrics=metrics,
                encoders=enc,
                fps=float(fps),
                interpolator=motion_interpolator,
                callback=cb,
            )
        table = format_table(result)
        plot = torch.from_numpy(plot_result(result))[None]
        report = json.dumps(result, indent=2)
        return {"ui": {"text": [table]}, "result": (table, plot, report)}


NODE_CLASS_MAPPINGS = {"DualAdapterEvaluateVideo": DualAdapterEvaluateVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"DualAdapterEvaluateVideo": "Evaluate Video (DualAdapter)"}
