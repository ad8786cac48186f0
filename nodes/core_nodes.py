"""Foundation nodes: load a video model (any backbone), encode prompts, sample, VAE decode / encode, load photos and
clips.

The ``VIDEO_MODEL`` type carries a :class:`dual_adapter.patches.PatchedModel` of a CogVideoX bundle or of a Wan,
ZeroScope / ModelScope (UNet3D) or AnimateDiff backbone: the nodes that take it reach the model through the backbone
interface and :mod:`dual_adapter.dispatch`, so one Encode Prompt, Sample, Decode / Encode, and the training and Apply
nodes serve every backbone (docs/backbones.md). Folders: CogVideoX in ``models/CogVideo/``, Wan in ``models/Wan/``,
the U-Nets in ``models/diffusers/``."""
from __future__ import annotations


import torch

from dual_adapter import dispatch, media, models, sampling
from dual_adapter.backbones import as_backbone, cogvideox, tiny_names, wan
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import PatchedModel
from dual_adapter.limits import MAX_CFG, MAX_FRAMES, MAX_SAMPLING_STEPS, MAX_SIDE, MIN_CFG
from dual_adapter.seeds import SEED_MAX

from . import bridge
from .common import VIDEO_EMBEDS, VIDEO_MODEL, as_model, image_batch

CAT = "DualAdapter"


def default_model(found: list[str]) -> str:
    """Load Video Model's default choice: the first model folder found in models/CogVideo/, else the built-in
    pretrained ``mini`` (never a random ``tiny*``, which draws noise by design)."""
    return found[0] if found else "mini"


#: the ComfyUI models/ sub-folder of Wan diffusers folders (registered by :func:`nodes.bridge.register_folders`)
WAN_FOLDER = "Wan"
#: the ComfyUI models/ sub-folder of the U-Net video models (diffusers folders of ZeroScope / ModelScope, AnimateDiff)
UNET_FOLDER = "diffusers"
#: where Load Video Model looks for a folder name, in this order (a name in several loads from the first)
MODEL_FOLDERS = ("CogVideo", WAN_FOLDER, UNET_FOLDER)


def _loader_choices() -> tuple[list[str], list[str]]:
    """(every choice, CogVideoX folders found): the built-in names (CogVideoX's, then the other backbones' tiny
    models), then the folders of models/CogVideo/, models/Wan/ and models/diffusers/ (each name once)."""
    out = list(cogvideox.BUILTIN_MODELS) + list(wan.TINY_NAMES)
    out += [n for n in tiny_names() if n not in out]
    found = bridge.list_model_dirs("CogVideo")
    for folder in MODEL_FOLDERS:
        out += [n for n in bridge.list_model_dirs(folder) if n not in out]
    return out, found


def model_folder(model: str):
    """The folder of choice ``model``: the first of models/CogVideo/, models/Wan/, models/diffusers/ that lists it."""
    for folder in MODEL_FOLDERS:
        if model in bridge.list_model_dirs(folder):
            return bridge.resolve(folder, model)
    return bridge.resolve("CogVideo", model)


class LoadVideoModel:
    DESCRIPTION = ("Load a text-to-video model of any backbone; the backbone decides how every other node runs on it. "
                   "CogVideoX (2B, 5B, 1.5-5B) from a diffusers folder in models/CogVideo/, Wan 2.1 / 2.2 from "
                   "models/Wan/, ZeroScope / ModelScope (UNet3D) or AnimateDiff from models/diffusers/, or a "
                   "built-in model: 'mini' (pretrained miniature CogVideoX, CPU) or a random tiny one ('tiny', "
                   "'tiny-wan', 'tiny-unet3d', 'tiny-animatediff': CPU, seconds; for trying graphs and tests).")
    CATEGORY = f"{CAT}/Model"
    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        choices, found = _loader_choices()
        return {"required": {
            "model": (choices, {"default": default_model(found), "tooltip": "The default is the first folder found in "
                                "models/CogVideo/, else 'mini' (the tiny models draw noise by design: they test graphs). "
                                "CogVideoX: a diffusers folder under models/CogVideo/ (with transformer/, "
                                "vae/, text_encoder/, tokenizer/, scheduler/), or a built-in random tiny model: "
                                "'tiny' (2B-like, sincos), 'tiny-5b' (RoPE), 'tiny-1.5' (RoPE, patch_size_t=2), "
                                "or 'mini', the built-in pretrained miniature model (9 x 32 x 32 sprite videos, CPU). A mini folder "
                                "that 'miniworld pretrain' wrote can also go in models/CogVideo/. Wan: a diffusers "
                                "Wan 2.1 / 2.2 text-to-video folder under models/Wan/ (e.g. Wan2.1-T2V-1.3B-Diffusers, "
                                "81 x 480 x 832), or 'tiny-wan' (9 x 64 x 64; draws noise). U-Nets: a folder under "
                                "models/diffusers/ (zeroscope_v2_576w, text-to-video-ms-1.7b, an AnimateDiff folder: "
                                "SD1.5 with its MotionAdapter in motion_adapter/), or 'tiny-unet3d' / 'tiny-animatediff'."}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto", "tooltip": "Weights dtype. auto = bf16 for "
                      "real CogVideoX / Wan models (fp16 also suits 2B), fp16 for U-Nets on a GPU (as their authors ran "
                      "them), fp32 for the built-in models and on the CPU."}),
            "device": (["auto", "cuda", "cpu"], {"default": "auto", "tooltip": "Where the model runs. auto = CUDA if "
                       "available, else CPU (built-in models always default to CPU)."}),
        }, "optional": {
            "vae_tiling": ("BOOLEAN", {"default": True, "tooltip": "CogVideoX only: decode/encode in spatial tiles "
                           "(less VRAM)."}),
            "vae_slicing": ("BOOLEAN", {"default": True, "tooltip": "CogVideoX only: decode one video of a batch at a "
                            "time."}),
            "cpu_offload": ("BOOLEAN", {"default": False, "tooltip": "CogVideoX and Wan: keep parts on CPU and move each "
                            "to the GPU only while it runs (fits 5B in less VRAM, slower)."}),
            "native_transformer": (["none"] + bridge.list_files("diffusion_models"), {"default": "none", "tooltip":
                                   "CogVideoX only. A native ComfyUI single-file CogVideoX transformer (models/diffusion_models/, e.g. "
                                   "written by Convert to Native) used instead of the folder's transformer/; the "
                                   "folder still gives the VAE, T5 and scheduler. none = the folder's own."}),
        }}

    def load(self, model, dtype="auto", device="auto", vae_tiling=True, vae_slicing=True, cpu_offload=False,
             native_transformer="none"):
        # ComfyUI runs nodes under inference_mode; weights made there are "inference tensors" that
        # autograd cannot save for backward, so training nodes could not use them. Build them outside.
        with torch.inference_mode(False):
            tf = None if native_transformer in (None, "", "none") else bridge.resolve("diffusion_models",
                                                                                     native_transformer)
            builtin = model in cogvideox.BUILTIN_MODELS or model in tiny_names()
            path = model if builtin else str(model_folder(model))
            return (PatchedModel(models.load_video_model(path, dtype=None if dtype == "auto" else dtype,
                                                         device=None if device == "auto" else device,
                                                         vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                                                         cpu_offload=cpu_offload, transformer_file=tf)),)


class TextEncode:
    DESCRIPTION = ("Encode a prompt and a negative prompt with the model's text encoder (CogVideoX: T5, 226 tokens; "
                   "Wan: UMT5, 512 tokens; the U-Nets: CLIP, 77 tokens), padded/truncated to its text length (longer "
                   "prompts are truncated with a warning in the console).")
    CATEGORY = f"{CAT}/Model"
    RETURN_TYPES = (VIDEO_EMBEDS,)
    RETURN_NAMES = ("embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (any backbone)."}),
            "prompt": ("STRING", {"multiline": True, "default": "dog * is playing guitar",
                                  "tooltip": "What the video shows. For DualReal use the identity token, e.g. 'dog *'."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "What to steer away from (used when cfg > 1)."}),
        }}

    def encode(self, model, prompt, negative_prompt=""):
        m = as_model(model)
        emb = as_backbone(m.bundle).encode_prompt([prompt, negative_prompt])
        return ({"positive": emb[:1], "negative": emb[1:], "prompt": prompt, "negative_prompt": negative_prompt,
                 "model_name": m.bundle.name},)


def _check_embeds(embeds, negative=None, bundle=None):
    """VIDEO_EMBEDS, or core CONDITIONING (CLIPLoader type ``cogvideox`` + CLIPTextEncode) with an optional
    negative CONDITIONING -> ``{"positive": [1, L, D], "negative": [1, L, D] | None}``."""
    from .common import conditioning_embeds

    if isinstance(embeds, (list, tuple)):
        return {"positive": conditioning_embeds(embeds, "embeds", bundle),
                "negative": conditioning_embeds(negative, "negative", bundle) if negative is not None else None}
    if not isinstance(embeds, dict) or "positive" not in embeds:
        raise DualAdapterError("embeds: expected VIDEO_EMBEDS from 'Encode Prompt' or a CONDITIONING "
                               "from core CLIPTextEncode (CLIPLoader type cogvideox)")
    if negative is not None:
        return {**embeds, "negative": conditioning_embeds(negative, "negative", bundle)}
    return embeds


#: the Sample node's scheduler names: auto (the backbone's own), CogVideoX's, then Wan's (Wan takes dpm / ddim as
#: unipc / euler; the U-Nets take ddim and dpm)
SAMPLER_SCHEDULERS = ("auto",) + tuple(cogvideox.SCHEDULERS) + \
    tuple(n for n in wan.SCHEDULERS if n not in cogvideox.SCHEDULERS)


def check_scheduler(bundle, scheduler: str) -> str:
    """``scheduler`` (``auto`` = :func:`dual_adapter.dispatch.default_scheduler`) if ``bundle``'s backbone takes it.

    Raises:
        DualAdapterError: a Wan-only scheduler (unipc, euler) on a CogVideoX or U-Net model, naming the input.
    """
    if scheduler == "auto":
        return dispatch.default_scheduler(bundle)
    if as_backbone(bundle).kind != wan.KIND and scheduler not in cogvideox.SCHEDULERS:
        raise DualAdapterError(f"scheduler: {scheduler!r} is a Wan scheduler; this {as_backbone(bundle).family} "
                               f"model takes {' or '.join(cogvideox.SCHEDULERS)}")
    return scheduler


class Sampler:
    DESCRIPTION = ("Generate a video latent with any loaded video model. Adapters and LoRAs applied to the model (Apply "
                   "DualReal, Apply LoRA, Apply Appearance Highway) run on a weight-sharing copy for this run only. "
                   "Progress per step; Cancel stops cleanly.")
    CATEGORY = f"{CAT}/Sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model, optionally through Apply DualReal / Apply LoRA."}),
            "embeds": (f"{VIDEO_EMBEDS},CONDITIONING", {"tooltip": "From Encode Prompt, or a core CONDITIONING "
                       "(CLIPLoader type cogvideox -> CLIPTextEncode; T5 [1, 226, 4096]; Wan: type wan, "
                       "UMT5 [1, L, 4096])."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES, "step": 1, "tooltip": "Frames; CogVideoX and "
                       "Wan take 4k+1 (49 on the released CogVideoX). 0 = the model's training size (CogVideoX 49, "
                       "ZeroScope 24, AnimateDiff 16; 9 or 8 on the built-in models)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "Pixels: a multiple of 16 "
                       "on CogVideoX / Wan, of 8 on the U-Nets. 0 = model default (CogVideoX 480; tiny 64)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "Pixels: a multiple of 16 "
                      "on CogVideoX / Wan, of 8 on the U-Nets. 0 = model default (CogVideoX 720; tiny 96)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "Denoising steps (50 in "
                      "DualReal; CustomTTT on AnimateDiff: 25 DDIM)."}),
            "cfg": ("FLOAT", {"default": 6.0, "min": MIN_CFG, "max": MAX_CFG, "step": 0.1,
                              "tooltip": "Classifier-free guidance scale (6 in DualReal; CustomTTT on AnimateDiff 9, "
                              "the SMA configs 12). 1 = off."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Seed of the initial noise; the same seed gives the same video. Any value 0 .. 2^64-1 (the range of every seed in the pack, as ComfyUI's KSampler)."}),
            "scheduler": (list(SAMPLER_SCHEDULERS), {"default": "auto", "tooltip": "auto = the backbone's own: dpm on "
                          "CogVideoX, unipc on Wan, ddim on the U-Nets. CogVideoX: dpm = "
                          "CogVideoXDPMScheduler, ddim = CogVideoXDDIMScheduler; both with trailing timestep "
                          "spacing. Wan: unipc = Wan's UniPC on flow sigmas (what dpm means on Wan), euler = flow-"
                          "matching Euler (what ddim means on Wan); both with the model's flow_shift. U-Nets: ddim "
                          "(the authors') or dpm (DPM-Solver++)."}),
        }, "optional": {
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt as core CONDITIONING (with a CONDITIONING "
                         "embeds; replaces the negative of VIDEO_EMBEDS). None = the empty prompt."}),
        }}

    def run(self, model, embeds, frames=0, height=0, width=0, steps=50, cfg=6.0, seed=0, scheduler="auto",
            negative=None):
        m = as_model(model)
        e = _check_embeds(embeds, negative, m.bundle)
        progress = bridge.Progress(steps)
        lat = sampling.sample(m.bundle, e["positive"], e.get("negative"), num_frames=frames or None,
                              height=height or None, width=width or None, steps=steps, cfg=cfg, seed=seed,
                              scheduler=check_scheduler(m.bundle, scheduler), patches=m.patches, callback=progress,
                              image=e.get("image"))  # attached by Image To Video (first frame)
        return (dispatch.to_latent(m.bundle, lat),)


class Decode:
    DESCRIPTION = "Decode a video LATENT into frames (IMAGE [F, H, W, 3]) with the model's VAE (tiled if enabled)."
    CATEGORY = f"{CAT}/Sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "The model whose VAE made the latent."}),
            "latent": ("LATENT", {"tooltip": "A video latent {samples: [B, C, T, H, W]}. A batch of B videos is "
                                  "returned as B*F frames in order."}),
        }}

    def decode(self, model, latent):
        m = as_model(model)
        return (dispatch.decode(m.bundle, latent, callback=bridge.Progress(int(latent["samples"].shape[0]))
                                if isinstance(latent, dict) and torch.is_tensor(latent.get("samples")) else None),)


class Encode:
    DESCRIPTION = ("Encode frames (IMAGE [F, H, W, 3]) into a video LATENT with the model's VAE. Frames are resized and "
                   "centre-cropped to width x height; F is cut to the largest count the VAE takes (4k+1 on CogVideoX "
                   "and Wan).")
    CATEGORY = f"{CAT}/Sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "The model whose VAE encodes."}),
            "frames": ("IMAGE", {"tooltip": "Video frames [F, H, W, 3], 0..1."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "0 = model default."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "0 = model default."}),
        }}

    def encode(self, model, frames, height=0, width=0):
        m = as_model(model)
        return (dispatch.encode(m.bundle, image_batch(frames, "frames"), int(height), int(width)),)


def _input_videos() -> list[str]:
    d = bridge.input_dir()
    if not d.is_dir():
        return []
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.suffix.lower() in media.CLIP_EXTENSIONS)


class LoadClipFrames:
    DESCRIPTION = ("Read a video clip (any container PyAV reads: MP4/H.264, AVI/MPEG-4, MOV, WEBM...; GIF and animated "
                   "WebP, as SaveAnimatedWEBP writes, through Pillow) into frames, "
                   "sampled at a target fps, resized and centre-cropped. A clip shorter than the frames asked for is "
                   "looped (or held / refused, see short_policy), with a warning in the console. Core LoadVideo + GetVideoComponents also work.")
    CATEGORY = f"{CAT}/Media"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT")
    RETURN_NAMES = ("frames", "frame_count", "fps")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": ([""] + _input_videos(), {"default": "", "video_upload": True, "tooltip": "A clip in ComfyUI's "
                      "input folder; the upload button below puts a file there (or use path)."}),
            "path": ("STRING", {"default": "", "tooltip": "Path of a clip relative to ComfyUI's input folder (or the pack's examples/, e.g. examples/guitar.mp4); overrides 'video' when set. Absolute paths and '..' are refused unless DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS=1."}),
            "frames": ("INT", {"default": 49, "min": 1, "max": MAX_FRAMES, "tooltip": "Frames to return (4k+1 for CogVideoX; 49)."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 120.0, "step": 0.5, "tooltip": "Sample at this frame "
                    "rate (CogVideoX is trained at 8 fps). 0 = every source frame."}),
            "start_s": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 36000.0, "step": 0.1, "tooltip": "Start time, seconds."}),
            "height": ("INT", {"default": 480, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "0 = keep source size."}),
            "width": ("INT", {"default": 720, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "0 = keep source size."}),
            "short_policy": (["loop", "hold", "error"], {"default": "loop", "tooltip": "A clip with fewer frames than "
                             "asked: loop it from the start, hold its last frame, or stop with an error."}),
        }}

    def load(self, video="", path="", frames=49, fps=8.0, start_s=0.0, height=480, width=720, short_policy="loop"):
        if not (path or video):
            raise DualAdapterError("Load Clip Frames: choose a video or give a path")
        src = bridge.resolve_input(path, "path") if path else bridge.resolve_input(video, "video")
        x, info = media.load_clip(src, num_frames=frames, fps=fps or None, start_s=start_s, short_policy=short_policy)
        if height and width:
            x = media.fit_frames(x, height, width)
        return (x, int(x.shape[0]), float(info.get("fps_out") or info.get("fps_src") or fps))


class LoadPhotos:
    DESCRIPTION = ("Load subject photos from a file or folder path as one IMAGE batch, each resized and centre-cropped "
                   "to width x height (alpha is composited over white). Core LoadImage works for single photos.")
    CATEGORY = f"{CAT}/Media"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("photos", "count")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "", "tooltip": "An image file or a folder of images (PNG/JPG/WEBP...) relative to ComfyUI's input "
                     "folder (or the pack's examples/, e.g. examples/dog). Absolute paths and '..' are refused unless "
                     "DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS=1."}),
            "height": ("INT", {"default": 480, "min": 16, "max": MAX_SIDE, "step": 16, "tooltip": "Output height, pixels."}),
            "width": ("INT", {"default": 720, "min": 16, "max": MAX_SIDE, "step": 16, "tooltip": "Output width, pixels."}),
        }}

    def load(self, path, height=480, width=720):
        if not path:
            raise DualAdapterError("Load Photos: path is empty; give an image file or a folder of images")
        imgs = media.load_images([bridge.resolve_input(path, "path")])
        out = torch.cat([media.fit_frames(i.unsqueeze(0), height, width) for i in imgs], 0)
        return (out, int(out.shape[0]))


NODE_CLASS_MAPPINGS = {
    "DualAdapterLoadVideoModel": LoadVideoModel,
    "DualAdapterTextEncode": TextEncode,
    "DualAdapterSampler": Sampler,
    "DualAdapterVAEDecode": Decode,
    "DualAdapterVAEEncode": Encode,
    "DualAdapterLoadClip": LoadClipFrames,
    "DualAdapterLoadPhotos": LoadPhotos,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterLoadVideoModel": "Load Video Model",
    "DualAdapterTextEncode": "Encode Prompt",
    "DualAdapterSampler": "Sample Video",
    "DualAdapterVAEDecode": "Decode (VAE)",
    "DualAdapterVAEEncode": "Encode Frames (VAE)",
    "DualAdapterLoadClip": "Load Clip Frames",
    "DualAdapterLoadPhotos": "Load Photos",
}
