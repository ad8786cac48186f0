"""Foundation nodes: load CogVideoX (or Wan), encode prompts, sample, VAE decode / encode, load photos and clips.

The ``COGVIDEOX_MODEL`` type carries a :class:`dual_adapter.patches.PatchedModel` of a CogVideoX bundle or of a Wan
backbone (:mod:`dual_adapter.backbones.wan`): the nodes that take it reach the model through the backbone
interface, so Encode Prompt, Sample, Decode / Encode, the training and Apply nodes serve both (docs/wan.md).
Wan folders go in ``models/Wan/`` (a Wan folder put in ``models/CogVideo/`` loads too)."""
from __future__ import annotations


import torch

from dual_adapter import media, models, sampling
from dual_adapter.backbones import as_backbone, cogvideox, wan
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import PatchedModel
from dual_adapter.limits import MAX_CFG, MAX_FRAMES, MAX_SAMPLING_STEPS, MAX_SIDE, MIN_CFG
from dual_adapter.seeds import SEED_MAX

from . import bridge
from .common import as_model, image_batch

CAT = "DualAdapter"


def default_model(found: list[str]) -> str:
    """Load CogVideoX's default choice: the first model folder found in models/CogVideo/, else the built-in
    pretrained ``mini`` (never a random ``tiny*``, which draws noise by design)."""
    return found[0] if found else "mini"


#: the ComfyUI models/ sub-folder of Wan diffusers folders (registered by :func:`nodes.bridge.register_folders`)
WAN_FOLDER = "Wan"


def _loader_choices() -> tuple[list[str], list[str], list[str]]:
    """(every choice, CogVideoX folders found, Wan folders found): the built-in names, then the folders of
    models/CogVideo/, then those of models/Wan/ not already listed (a name in both loads from models/CogVideo/)."""
    found = bridge.list_model_dirs("CogVideo")
    wan_found = [n for n in bridge.list_model_dirs(WAN_FOLDER) if n not in found]
    return list(cogvideox.BUILTIN_MODELS) + list(wan.TINY_NAMES) + found + wan_found, found, wan_found


class CogVideoXLoader:
    DESCRIPTION = ("Load a CogVideoX model (2B, 5B, 1.5-5B) from a diffusers folder in models/CogVideo/, or a Wan 2.1 / "
                   "2.2 text-to-video model from a diffusers folder in models/Wan/, or build a built-in random tiny "
                   "model ('tiny', 'tiny-wan': CPU, seconds; for trying graphs and tests). The other nodes that take "
                   "this model (Encode Prompt, Sample, Decode, Train / Apply LoRA, Train / Apply DualReal) serve both.")
    CATEGORY = f"{CAT}/Model"
    RETURN_TYPES = ("COGVIDEOX_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        choices, found, _ = _loader_choices()
        return {"required": {
            "model": (choices, {"default": default_model(found), "tooltip": "The default is the first folder found in "
                                "models/CogVideo/, else 'mini' (the tiny models draw noise by design: they test graphs). "
                                "A diffusers folder under models/CogVideo/ (with transformer/, "
                                "vae/, text_encoder/, tokenizer/, scheduler/), or a built-in random tiny model: "
                                "'tiny' (2B-like, sincos), 'tiny-5b' (RoPE), 'tiny-1.5' (RoPE, patch_size_t=2), "
                                "or 'mini', the built-in pretrained miniature model (9 x 32 x 32 sprite videos, CPU). A mini folder "
                                "that 'miniworld pretrain' wrote can also go in models/CogVideo/. Wan: a diffusers "
                                "Wan 2.1 / 2.2 text-to-video folder under models/Wan/ (e.g. Wan2.1-T2V-1.3B-Diffusers, "
                                "81 x 480 x 832), or 'tiny-wan', a built-in random Wan (9 x 64 x 64; draws noise)."}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto", "tooltip": "Weights dtype. auto = bf16 for "
                      "real models (fp16 also suits 2B), fp32 for tiny."}),
            "device": (["auto", "cuda", "cpu"], {"default": "auto", "tooltip": "Where the model runs. auto = CUDA if "
                       "available, else CPU (tiny models always default to CPU)."}),
            "vae_tiling": ("BOOLEAN", {"default": True, "tooltip": "Decode/encode in spatial tiles (less VRAM)."}),
            "vae_slicing": ("BOOLEAN", {"default": True, "tooltip": "Decode one video of a batch at a time."}),
            "cpu_offload": ("BOOLEAN", {"default": False, "tooltip": "Keep parts on CPU and move each to the GPU only "
                            "while it runs (fits 5B in less VRAM, slower)."}),
        }, "optional": {
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
            return self._load(model, dtype, device, vae_tiling, vae_slicing, cpu_offload, native_transformer)

    def _load(self, model, dtype, device, vae_tiling, vae_slicing, cpu_offload, native_transformer="none"):
        tf = None if native_transformer in (None, "", "none") else bridge.resolve("diffusion_models", native_transformer)
        dt = None if dtype == "auto" else dtype
        dev = None if device == "auto" else device
        # tiny*, mini and a mini folder (one 'miniworld pretrain' wrote, put in models/CogVideo/): load_model builds or
        # loads them (CPU and fp32 unless set) and refuses a native transformer file with them
        if model in wan.TINY_NAMES:
            return (PatchedModel(self._wan(model, tf, dt, dev, cpu_offload)),)
        path = None if model in cogvideox.BUILTIN_MODELS else self._folder(model)
        from dual_adapter.miniworld.model import is_mini_folder

        if path is None or is_mini_folder(path):
            return (PatchedModel(models.load_model(model if path is None else str(path), device=dev, dtype=dt,
                                                     transformer_file=tf)),)
        from dual_adapter.backbones import backbone_modules, identify_folder

        kind = identify_folder(path)
        if kind == wan.KIND:
            return (PatchedModel(self._wan(str(path), tf, dt, dev, cpu_offload)),)
        if kind not in (None, "cogvideox"):  # a U-Net video model put in models/CogVideo/ or models/Wan/
            raise DualAdapterError(f"model {model!r} is a {backbone_modules()[kind].FAMILY} model, not CogVideoX or "
                                   f"Wan; put it in models/diffusers/ and use Load U-Net Video Model")
        b = models.load_cogvideox(path, dtype=dt or "bf16", device=dev, vae_tiling=vae_tiling,
                                    vae_slicing=vae_slicing, cpu_offload=cpu_offload, transformer_file=tf)
        return (PatchedModel(b),)

    @staticmethod
    def _folder(model: str):
        """The folder of choice ``model``: models/CogVideo/ first, then models/Wan/."""
        if model not in bridge.list_model_dirs("CogVideo") and model in bridge.list_model_dirs(WAN_FOLDER):
            return bridge.resolve(WAN_FOLDER, model)
        return bridge.resolve("CogVideo", model)

    @staticmethod
    def _wan(name_or_path: str, transformer_file, dtype, device, cpu_offload):
        """A Wan backbone (``tiny-wan`` or a diffusers folder; VAE tiling / slicing settings are CogVideoX's)."""
        if transformer_file is not None:
            raise DualAdapterError("native_transformer: a native single-file transformer is read for CogVideoX only, "
                                   "not Wan; set it to none")
        return wan.load(name_or_path, dtype=dtype, device=device, cpu_offload=cpu_offload)


class CogVideoXTextEncode:
    DESCRIPTION = ("Encode a prompt and a negative prompt with the model's text encoder (CogVideoX: T5, 226 tokens; "
                   "Wan: UMT5, 512 tokens), padded/truncated to its text length (longer prompts are truncated with a "
                   "warning in the console).")
    CATEGORY = f"{CAT}/Model"
    RETURN_TYPES = ("COGVIDEOX_EMBEDS",)
    RETURN_NAMES = ("embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("COGVIDEOX_MODEL", {"tooltip": "From Load CogVideoX (CogVideoX or Wan)."}),
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
    """COGVIDEOX_EMBEDS, or core CONDITIONING (CLIPLoader type ``cogvideox`` + CLIPTextEncode) with an optional
    negative CONDITIONING -> ``{"positive": [1, L, D], "negative": [1, L, D] | None}``."""
    from .common import conditioning_embeds

    if isinstance(embeds, (list, tuple)):
        return {"positive": conditioning_embeds(embeds, "embeds", bundle),
                "negative": conditioning_embeds(negative, "negative", bundle) if negative is not None else None}
    if not isinstance(embeds, dict) or "positive" not in embeds:
        raise DualAdapterError("embeds: expected COGVIDEOX_EMBEDS from 'Encode Prompt (CogVideoX)' or a CONDITIONING "
                               "from core CLIPTextEncode (CLIPLoader type cogvideox)")
    if negative is not None:
        return {**embeds, "negative": conditioning_embeds(negative, "negative", bundle)}
    return embeds


#: the Sample node's scheduler names: CogVideoX's, then Wan's own (Wan takes dpm / ddim as unipc / euler)
SAMPLER_SCHEDULERS = tuple(cogvideox.SCHEDULERS) + tuple(n for n in wan.SCHEDULERS if n not in cogvideox.SCHEDULERS)


def check_scheduler(bundle, scheduler: str) -> str:
    """``scheduler`` if ``bundle``'s backbone takes it.

    Raises:
        DualAdapterError: a Wan-only scheduler (unipc, euler) on a CogVideoX model, naming the input.
    """
    if as_backbone(bundle).kind != wan.KIND and scheduler not in cogvideox.SCHEDULERS:
        raise DualAdapterError(f"scheduler: {scheduler!r} is a Wan scheduler; this CogVideoX model takes "
                               f"{' or '.join(cogvideox.SCHEDULERS)}")
    return scheduler


class CogVideoXSampler:
    DESCRIPTION = ("Generate a video latent with CogVideoX or Wan. Adapters and LoRAs applied to the model (Apply DualReal, "
                   "Apply LoRA) run on a weight-sharing copy for this run only. Progress per step; Cancel stops cleanly.")
    CATEGORY = f"{CAT}/Sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("COGVIDEOX_MODEL", {"tooltip": "From Load CogVideoX (CogVideoX or Wan), optionally through Apply DualReal / Apply LoRA."}),
            "embeds": ("COGVIDEOX_EMBEDS,CONDITIONING", {"tooltip": "From Encode Prompt (CogVideoX), or a core "
                       "CONDITIONING (CLIPLoader type cogvideox -> CLIPTextEncode; T5 [1, 226, 4096]; Wan: type wan, "
                       "UMT5 [1, L, 4096])."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES, "step": 1, "tooltip": "Frames, 4k+1 (49 on the "
                       "released models). 0 = the model's training size (49 on real models, 9 on tiny)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels, multiple of 16. "
                       "0 = model default (480; 64 on tiny)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels, multiple of 16. "
                      "0 = model default (720; 96 on tiny)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "Denoising steps (50 in the papers)."}),
            "cfg": ("FLOAT", {"default": 6.0, "min": MIN_CFG, "max": MAX_CFG, "step": 0.1,
                              "tooltip": "Classifier-free guidance scale (6 in DualReal). 1 = off."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Seed of the initial noise; the same seed gives the same video. Any value 0 .. 2^64-1 (the range of every seed in the pack, as ComfyUI's KSampler)."}),
            "scheduler": (list(SAMPLER_SCHEDULERS), {"default": "dpm", "tooltip": "CogVideoX: dpm = "
                          "CogVideoXDPMScheduler (default), ddim = CogVideoXDDIMScheduler; both with trailing timestep "
                          "spacing. Wan: unipc = Wan's UniPC on flow sigmas (what dpm means on Wan), euler = flow-"
                          "matching Euler (what ddim means on Wan); both with the model's flow_shift."}),
        }, "optional": {
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt as core CONDITIONING (with a CONDITIONING "
                         "embeds; replaces the negative of COGVIDEOX_EMBEDS). None = the empty prompt."}),
        }}

    def run(self, model, embeds, frames=0, height=0, width=0, steps=50, cfg=6.0, seed=0, scheduler="dpm",
            negative=None):
        m = as_model(model)
        e = _check_embeds(embeds, negative, m.bundle)
        check_scheduler(m.bundle, scheduler)
        progress = bridge.Progress(steps)
        lat = sampling.sample(m.bundle, e["positive"], e.get("negative"), num_frames=frames or None,
                              height=height or None, width=width or None, steps=steps, cfg=cfg, seed=seed,
                              scheduler=scheduler, patches=m.patches, callback=progress,
                              image=e.get("image"))  # attached by Image To Video (first frame)
        return (sampling.to_comfy_latent(lat.float().cpu(), sampling.latent_scale(m.bundle)),)


class CogVideoXDecode:
    DESCRIPTION = "Decode a CogVideoX video LATENT into frames (IMAGE [F, H, W, 3]) with the model's VAE (tiled if enabled)."
    CATEGORY = f"{CAT}/Sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("COGVIDEOX_MODEL", {"tooltip": "The model whose VAE made the latent."}),
            "latent": ("LATENT", {"tooltip": "A video latent {samples: [B, C, T, H, W]}. A batch of B videos is "
                                  "returned as B*F frames in order."}),
        }}

    def decode(self, model, latent):
        m = as_model(model)
        lat = sampling.from_comfy_latent(latent, sampling.latent_scale(m.bundle)).to(m.bundle.device, m.bundle.dtype)
        frames = sampling.decode_latents(m.bundle, lat, callback=bridge.Progress(lat.shape[0]))
        return (frames.reshape(-1, *frames.shape[2:]),)


class CogVideoXEncode:
    DESCRIPTION = ("Encode frames (IMAGE [F, H, W, 3]) into a CogVideoX video LATENT. Frames are resized and centre-"
                   "cropped to width x height; F is cut to the largest 4k+1.")
    CATEGORY = f"{CAT}/Sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("COGVIDEOX_MODEL", {"tooltip": "The model whose VAE encodes."}),
            "frames": ("IMAGE", {"tooltip": "Video frames [F, H, W, 3], 0..1."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "0 = model default."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "0 = model default."}),
        }}

    def encode(self, model, frames, height=0, width=0):
        m = as_model(model)
        x = image_batch(frames, "frames")
        _, h0, w0 = m.bundle.default_size
        n = media.nearest_valid_frames(x.shape[0], m.bundle.vae_scale_temporal, mode="down")
        x = media.fit_frames(x[:n], height or h0, width or w0)
        return (sampling.to_comfy_latent(sampling.encode_frames(m.bundle, x).float().cpu(), sampling.latent_scale(m.bundle)),)


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
    "DualAdapterCogVideoXLoader": CogVideoXLoader,
    "DualAdapterTextEncode": CogVideoXTextEncode,
    "DualAdapterSampler": CogVideoXSampler,
    "DualAdapterVAEDecode": CogVideoXDecode,
    "DualAdapterVAEEncode": CogVideoXEncode,
    "DualAdapterLoadClip": LoadClipFrames,
    "DualAdapterLoadPhotos": LoadPhotos,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterCogVideoXLoader": "Load CogVideoX",
    "DualAdapterTextEncode": "Encode Prompt (CogVideoX)",
    "DualAdapterSampler": "Sample (CogVideoX)",
    "DualAdapterVAEDecode": "Decode (CogVideoX VAE)",
    "DualAdapterVAEEncode": "Encode Frames (CogVideoX VAE)",
    "DualAdapterLoadClip": "Load Clip Frames",
    "DualAdapterLoadPhotos": "Load Photos",
}
