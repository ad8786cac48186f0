"""Nodes for the U-Net video backbones: ZeroScope / ModelScope (UNet3D) and AnimateDiff.

Types: UNET_VIDEO_MODEL carries a :class:`dual_adapter.patches.PatchedModel` whose ``bundle`` is a
U-Net :class:`~dual_adapter.backbones.base.VideoBackbone`; UNET_LORA a
:class:`dual_adapter.unet_motion.UNetLora`. Models go in ComfyUI's ``models/diffusers/`` (diffusers
folders; ``models/CogVideo/`` stays for CogVideoX); LoRAs in ``models/loras/``.
"""
from __future__ import annotations

import torch

from dual_adapter import customttt_unet as CT
from dual_adapter import unet_motion as UM
from dual_adapter import unet_sampling
from dual_adapter.backbones import kind_of, load_backbone
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import reservation
from dual_adapter.media import check_motion_frames
from dual_adapter.patches import PatchedModel
from dual_adapter.seeds import SEED_MAX
from dual_adapter.limits import (MAX_CFG, MAX_RANK, MAX_SAMPLING_STEPS, MAX_SIDE, MAX_TRAIN_STEPS,
                                 MAX_TTT_STEPS, MIN_CFG)

from . import bridge
from .common import image_batch, node_run, node_settings, preview_inputs, preview_options, run_inputs, start_run, training_mode

CAT = "DualAdapter/U-Net"
TINY = ["tiny-unet3d", "tiny-animatediff"]


def _model(m, name="model", kind=None):
    if not isinstance(m, PatchedModel) or getattr(m.bundle, "latent_layout", None) != "BCFHW":
        raise DualAdapterError(f"{name}: expected a UNET_VIDEO_MODEL (from Load U-Net Video Model), got "
                               f"{type(getattr(m, 'bundle', m)).__name__}")
    if kind and m.bundle.kind != kind:
        raise DualAdapterError(f"{name}: this node needs a {kind} model; {m.bundle.name!r} is {m.bundle.family}")
    return m


def _lora(x, name="lora"):
    if not isinstance(x, UM.UNetLora):
        raise DualAdapterError(f"{name}: expected a UNET_LORA, got {type(x).__name__}")
    return x


class UNetVideoLoader:
    DESCRIPTION = ("Load a U-Net text-to-video model: ZeroScope / ModelScope (UNet3D) or AnimateDiff, from a diffusers "
                   "folder in models/diffusers/ (an AnimateDiff folder is an SD1.5 folder with its MotionAdapter in "
                   "a motion_adapter/ sub-folder, or a saved AnimateDiffPipeline), or a built-in random tiny model. "
                   "A folder of another backbone (e.g. CogVideoX) is refused with its name.")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_VIDEO_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (TINY + bridge.list_model_dirs("diffusers"), {"default": "tiny-unet3d", "tooltip": "tiny-unet3d / "
                      "tiny-animatediff (random, CPU, seconds) or a folder under models/diffusers/ (zeroscope_v2_576w, "
                      "text-to-video-ms-1.7b, an AnimateDiff folder)."}),
            "dtype": (["auto", "fp16", "bf16", "fp32"], {"default": "auto", "tooltip": "auto = fp16 on GPU (as the "
                      "authors ran them), fp32 on CPU and for tiny models."}),
            "device": (["auto", "cuda", "cpu"], {"default": "auto", "tooltip": "auto = CUDA if available (tiny: CPU)."}),
        }}

    def load(self, model, dtype="auto", device="auto"):
        with torch.inference_mode(False):
            dt = None if dtype == "auto" else dtype
            dev = None if device == "auto" else device
            path = model if model in TINY else str(bridge.resolve("diffusers", model))
            kind = kind_of(path, default=None) if model not in TINY else None
            if kind in ("cogvideox", "wan"):
                where = "models/CogVideo/" if kind == "cogvideox" else "models/Wan/"
                raise DualAdapterError(f"model {model!r} is a {'CogVideoX' if kind == 'cogvideox' else 'Wan'} model; "
                                       f"load it with Load CogVideoX from {where}")
            return (PatchedModel(load_backbone(path, dtype=dt, device=dev)),)


class UNetSampler:
    DESCRIPTION = ("Generate video latents with a U-Net video model (DDIM or DPM-Solver++, classifier-free guidance). "
                   "Applied LoRAs and AH are used for this run only.")
    CATEGORY = CAT
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "From Load U-Net Video Model (with Apply nodes)."}),
            "prompt": ("STRING", {"multiline": True, "default": "a dog is playing guitar", "tooltip": "The prompt (CLIP, "
                       "77 tokens)."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Used when cfg > 1."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "0 = the model's (tiny 8, ZeroScope 24, "
                       "AnimateDiff 16)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "Pixels; 0 = the model's."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "Pixels; 0 = the model's."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "Denoising steps (CustomTTT: 25 DDIM)."}),
            "cfg": ("FLOAT", {"default": 9.0, "min": MIN_CFG, "max": MAX_CFG, "step": 0.5, "tooltip": "Guidance scale "
                    "(CustomTTT 9; SMA configs 12)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Initial-noise seed (CPU generator)."}),
            "scheduler": (["ddim", "dpm"], {"default": "ddim", "tooltip": "DDIM (the authors') or DPM-Solver++."}),
        }}

    def sample(self, model, prompt, negative_prompt="", frames=0, height=0, width=0, steps=25, cfg=9.0, seed=0,
               scheduler="ddim"):
        m = _model(model)
        bb = m.bundle
        lat = unet_sampling.sample(bb, bb.encode_prompt(prompt), bb.encode_prompt(negative_prompt),
                                   num_frames=frames or None, height=height or None, width=width or None,
                                   steps=int(steps), cfg=float(cfg), seed=int(seed), scheduler=scheduler,
                                   patches=m.patches, callback=bridge.Progress(int(steps), "sampling"))
        return ({"samples": lat.float().cpu()},)


class UNetVAEDecode:
    DESCRIPTION = "Decode U-Net video latents [B, C, F, h, w] to frames (IMAGE [F, H, W, 3]) with the model's VAE."
    CATEGORY = CAT
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("UNET_VIDEO_MODEL", {"tooltip": "The model that made the latent."}),
                             "latent": ("LATENT", {"tooltip": "From U-Net Sampler."})}}

    def decode(self, model, latent):
        bb = _model(model).bundle
        x = latent.get("samples") if isinstance(latent, dict) else None
        if not torch.is_tensor(x) or x.ndim != 5:
            raise DualAdapterError("latent: expected a LATENT {'samples': [B, C, F, h, w]} from U-Net Sampler")
        return (bb.decode_latents(x.to(bb.device, bb.dtype)).flatten(0, 1),)


class UNetApplyAH:
    DESCRIPTION = ("Appearance highway (AH), the SMA authors' inference change on ZeroScope/ModelScope: up block 1 takes "
                   "its skip connections from the spatial-attention outputs of down block 2 (so appearance bypasses the "
                   "temporal motion LoRA), with their FreeU-style scaling (s1 1.1 by default). Off = the plain model.")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_VIDEO_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        f = {"min": 0.0, "max": 3.0, "step": 0.05}
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "A ZeroScope / ModelScope (UNet3D) model."}),
            "enabled": ("BOOLEAN", {"default": True, "tooltip": "Off passes the model through unchanged."}),
            "freeu": ("BOOLEAN", {"default": True, "tooltip": "Apply the authors' FreeU-style scaling with s1, s2, b1, b2 "
                      "(their inference always does). Off = skip relocation only."}),
            "s1": ("FLOAT", {"default": 1.1, **f, "tooltip": "Skip scale where the up path has 1280 channels (ZeroScope)."}),
            "s2": ("FLOAT", {"default": 1.0, **f, "tooltip": "Skip scale where it has 640 channels."}),
            "b1": ("FLOAT", {"default": 1.0, **f, "tooltip": "Backbone scale on the first half of the 1280 channels."}),
            "b2": ("FLOAT", {"default": 1.0, **f, "tooltip": "Backbone scale on the first half of the 640 channels."}),
        }}

    def apply(self, model, enabled=True, freeu=True, s1=1.1, s2=1.0, b1=1.0, b2=1.0):
        m = _model(model)
        if not enabled:
            return (m,)
        if m.bundle.kind != "unet3d":
            raise DualAdapterError(f"model: AH is defined on ZeroScope/ModelScope (UNet3D); {m.bundle.name!r} is "
                                   f"{m.bundle.family}")
        return (m.with_patch(UM.AppearanceHighway(freeu=(s1, s2, b1, b2) if freeu else None)),)


class UNetTrainMotionLoRA:
    DESCRIPTION = ("Train a TAP motion LoRA on a U-Net's temporal attention from a clip, MotionDirector-style, as the "
                   "SMA authors' code does (rank 32, dropout 0.1, AdamW 5e-4, 1000 steps, 16 frames at 384x384; "
                   "spatial path and debiased loss on). Preset k_out = to_k + to_out.0 (the authors' code, default), "
                   "tap = to_q + to_k (the paper's wording), full = q, k, v, out; the value projection stays frozen "
                   "with k_out and tap.")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_LORA",)
    RETURN_NAMES = ("lora",)
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        d = UM.UNetMotionTrainConfig()  # one set of defaults: the library's (the authors' code)
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "ZeroScope/ModelScope or AnimateDiff."}),
            "clip": ("IMAGE", {"tooltip": "The motion clip [F, H, W, 3] at a size the model takes (e.g. Load Clip "
                     "Frames with height/width set)."}),
            "prompt": ("STRING", {"multiline": True, "default": "a person is playing guitar",
                                  "tooltip": "Training prompt describing the motion."}),
            "preset": (list(UM.PRESETS), {"default": d.preset, "tooltip": "Temporal-attention projections that get "
                       "the LoRA, in every temporal attention (transformer_in included): k_out = to_k + to_out.0 (the "
                       "authors' code), tap = to_q + to_k, full = q, k, v, out."}),
            "rank": ("INT", {"default": d.rank, "min": 1, "max": MAX_RANK, "tooltip": "LoRA rank (32)."}),
            "steps": ("INT", {"default": d.steps, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Optimiser steps (1000)."}),
            "learning_rate": ("FLOAT", {"default": d.lr, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                        "tooltip": "AdamW learning rate (5e-4), weight decay 1e-2."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds every step's randomness."}),
            "spatial_path": ("BOOLEAN", {"default": d.spatial_path, "tooltip": "MotionDirector's spatial LoRA path "
                             "on single frames through the U-Net without its temporal modules (dropped at inference; "
                             "on in the authors' code)."}),
            "debiased_loss": ("BOOLEAN", {"default": d.debiased_loss, "tooltip": "Add the appearance-debiased loss "
                              "(the authors' code always does)."}),
        }, "optional": {**_RUN("unet_motion_lora"), **preview_inputs()}}

    def train(self, model, clip, prompt, preset=UM.UNetMotionTrainConfig.preset, rank=32, steps=1000,
              learning_rate=5e-4, seed=0, spatial_path=True, debiased_loss=True, name="unet_motion_lora",
              resume=False, checkpoint_every=100, preview_every=-1, preview_prompt=""):
        settings = node_settings(locals())
        m = _model(model)
        frames = check_motion_frames(image_batch(clip, "clip"), "clip")  # a still would train no motion
        cfg = UM.UNetMotionTrainConfig(preset=preset, rank=int(rank), steps=int(steps), lr=float(learning_rate),
                                       seed=int(seed), spatial_path=bool(spatial_path), debiased_loss=bool(debiased_loss),
                                       gradient_checkpointing=m.bundle.device != "cpu",
                                       checkpoint_every=int(checkpoint_every))
        run = start_run("unet", name, "unet_motion_lora", resume, settings)
        bar = bridge.Progress(int(steps), "motion LoRA")

        def keep(lf, step):
            UM.save_unet_lora(lf, run.checkpoint, overwrite=True)

        with node_run(run, bar, "Load U-Net LoRA"), training_mode():
            with torch.random.fork_rng():  # the LoRA's random init: the run's seed, so a run repeats
                torch.manual_seed(int(seed))
                lf, _, losses = UM.train_unet_motion_lora(
                    m.bundle, [frames], prompt, cfg, callback=bar, on_checkpoint=keep, state_path=run.state,
                    resume=bool(resume), preview=preview_options(bar, preview_every, preview_prompt, m.bundle,
                                                                 run.previews))
            _finish(run, lf, losses, "U-Net motion LoRA loss")
        return (lf,)


def _RUN(default: str) -> dict:
    return run_inputs(default, method="unet", load="Load U-Net LoRA")


def _finish(run, lf, losses, title: str) -> None:
    """A finished U-Net run: the LoRA saved as the run's final file, then its checkpoint and state go and its losses
    and plot are written (:meth:`dual_adapter.runs.RunFolder.finish`)."""
    UM.save_unet_lora(lf, run.final)
    run.finish(losses, title)


class UNetApplyLoRA:
    DESCRIPTION = "Add a UNET_LORA to a U-Net video model at a strength (returns a patched copy; LoRAs stack)."
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_VIDEO_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "The model the LoRA was trained on."}),
            "lora": ("UNET_LORA", {"tooltip": "From a U-Net train node or Load U-Net LoRA."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "1 = as trained; 0 = off."}),
        }}

    def apply(self, model, lora, strength=1.0):
        m = _model(model)
        lf = _lora(lora)
        UM.check_unet_lora(lf, m.bundle)
        return (m.with_patch(UM.UNetLoraPatch(lf, float(strength), name=lf.name)),)


class UNetSaveLoRA:
    DESCRIPTION = ("Save a UNET_LORA (.safetensors, keys unet.<module>.lora_A/B.weight, metadata naming the backbone) "
                   "to output/unet_lora/ with a counter; never overwrites. Load U-Net LoRA lists it in the next queue.")
    CATEGORY = CAT
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora": ("UNET_LORA", {"tooltip": "The LoRA to save."}),
                             "filename_prefix": ("STRING", {"default": "motion", "tooltip": "File name in "
                                                 "output/unet_lora/ (sub-folders allowed); a counter is appended. Load "
                                                 "U-Net LoRA lists it at once, as output/unet_lora/<name>_NNNNN_."})}}

    def save(self, lora, filename_prefix="motion"):
        lf = _lora(lora)
        out = bridge.saved_output_path("unet_lora", filename_prefix or "motion")
        with reservation(out):  # a failed save leaves no empty file behind
            path = UM.save_unet_lora(lf, out)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


class UNetLoadLoRA:
    DESCRIPTION = ("Load a U-Net LoRA from models/loras/, output/unet_lora/ (what Save U-Net LoRA wrote) or the U-Net "
                   "training runs in output/runs/unet/<name>_NNNNN_/ (the final file, or a stopped run's checkpoint); only "
                   "U-Net LoRAs are listed, a CogVideoX LoRA is refused with a message saying so; the "
                   "backbone it was trained on is checked when it is applied.")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_LORA",)
    RETURN_NAMES = ("lora",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from .lora_nodes import lora_files

        return {"required": {"lora_name": (lora_files(unet=True) or [""], {"tooltip": "A U-Net LoRA in models/loras/ "
                             "or one Save U-Net LoRA wrote (output/unet_lora/...), or a U-Net training run's file "
                             "(output/runs/unet/...). CogVideoX LoRAs are left out."})}}

    def load(self, lora_name):
        return (UM.load_unet_lora(bridge.resolve("loras", lora_name)),)


class AnimateDiffPromptInfluence:
    DESCRIPTION = ("CustomTTT's prompt-influence analysis on AnimateDiff: the concept prompt at one U-Net text layer "
                   "only (the neutral prompt elsewhere); how far that alone moves the prediction toward the concept "
                   "(1 = as much as everywhere). Layers are the blocks where text enters, 0-based.")
    CATEGORY = CAT
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("table",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "An AnimateDiff model."}),
            "concept_prompt": ("STRING", {"default": "a photo of a tiger", "tooltip": "p* (e.g. 'A tiger')."}),
            "neutral_prompt": ("STRING", {"default": "a photo of a koala", "tooltip": "p (e.g. 'A koala')."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "0 = the model's."}),
            "timesteps": ("INT", {"default": 3, "min": 1, "max": 20, "tooltip": "Noise levels averaged over, spread "
                          "evenly in (0, 1000): 3 = t 750, 500, 250."}),
        }}

    def run(self, model, concept_prompt, neutral_prompt, frames=0, timesteps=3):
        m = _model(model, kind="animatediff")
        ts = [int(1000 * (k + 1) / (int(timesteps) + 1)) for k in range(int(timesteps))][::-1]
        rows = CT.prompt_influence(m.bundle, concept_prompt, neutral_prompt, timesteps=ts, num_frames=frames or None)
        text = "\n".join(f"layer {r['layer']} ({r['name']}): {r['influence']:.3f}" for r in rows)
        return {"ui": {"text": [text]}, "result": (text,)}


_CT_COMMON = {
    "rank": ("INT", {"default": 32, "min": 1, "max": MAX_RANK, "tooltip": "LoRA rank (32)."}),
    "optimizer": (["auto", "lion", "adamw"], {"default": "auto", "tooltip": "auto = Lion (the authors') when "
                  "lion-pytorch is installed, else AdamW (a console message says so)."}),
    "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds every step's randomness."}),
}


def _stage(m, label, name, resume, checkpoint_every, preview_every, preview_prompt, steps, train, seed=0,
           settings=None):
    """Run one CustomTTT stage of an AnimateDiff node in its run folder (output/runs/unet/<name>_NNNNN_/: state file,
    resume, previews, Cancel notice, the final LoRA); returns the node's output tuple."""
    folder = start_run("unet", name, label.lower() + "_lora", resume, dict(settings or {}, stage=label))
    bar = bridge.Progress(steps, label)
    run = CT.StageRun(state_path=folder.state, resume=bool(resume), checkpoint_every=int(checkpoint_every),
                      preview=preview_options(bar, preview_every, preview_prompt, m.bundle, folder.previews))
    with node_run(folder, bar, "Load U-Net LoRA"), training_mode():
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))  # the LoRAs' random init: the run's seed, so a run repeats (and resumes)
            lf = train(run, bar)
        _finish(folder, lf, folder.records() or bar.losses, f"{label} loss")
    return (lf,)


class AnimateDiffTrainAppearanceLoRA:
    DESCRIPTION = ("CustomTTT appearance LoRA: spatial attention of the appearance layers (default 2,6), trained on the "
                   "subject photos as 1-frame videos with the motion modules bypassed (authors: lr 1e-5, 500 steps).")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_LORA",)
    RETURN_NAMES = ("appearance_lora",)
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "An AnimateDiff model."}),
            "photos": ("IMAGE", {"tooltip": "Subject photos [N, H, W, 3] at a size the model takes."}),
            "prompt": ("STRING", {"default": "a photo of a sks dog", "tooltip": "Appearance prompt."}),
            "layers": ("STRING", {"default": "2,6", "tooltip": "Text layers (0-based) that get the LoRA."}),
            "steps": ("INT", {"default": 500, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Steps (500)."}),
            "learning_rate": ("FLOAT", {"default": 1e-5, "min": 1e-8, "max": 1.0, "step": 1e-6, "round": False,
                                        "tooltip": "Learning rate (1e-5)."}),
            **_CT_COMMON}, "optional": {**_RUN("appearance_lora"), **preview_inputs()}}

    def train(self, model, photos, prompt, layers="2,6", steps=500, learning_rate=1e-5, rank=32, optimizer="auto", seed=0,
              name="appearance_lora", resume=False, checkpoint_every=100, preview_every=-1, preview_prompt=""):
        settings = node_settings(locals())
        m = _model(model, kind="animatediff")
        ph = list(image_batch(photos, "photos"))
        cfg = CT.CustomTTTUNetConfig(appearance_layers=CT.parse_layers(layers), appearance_steps=int(steps),
                                     appearance_lr=float(learning_rate), rank=int(rank), optimizer=optimizer, seed=int(seed))
        return _stage(m, "appearance", name, resume, checkpoint_every, preview_every, preview_prompt, int(steps),
                      lambda run, bar: CT.train_appearance_lora(m.bundle, ph, prompt, cfg, callback=bar, run=run)[0], seed=seed,
                      settings=settings)


class AnimateDiffTrainMotionLoRA:
    DESCRIPTION = ("CustomTTT motion LoRA: the motion modules of the motion layers (default 2,5), trained on a clip "
                   "(authors: lr 5e-5, 500 steps).")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_LORA",)
    RETURN_NAMES = ("motion_lora",)
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "An AnimateDiff model."}),
            "clip": ("IMAGE", {"tooltip": "Motion clip [F, H, W, 3] at a size the model takes."}),
            "prompt": ("STRING", {"default": "a person is playing guitar", "tooltip": "Motion prompt."}),
            "layers": ("STRING", {"default": "2,5", "tooltip": "Text layers (0-based) whose motion modules get the LoRA."}),
            "preset": (list(UM.PRESETS), {"default": "full", "tooltip": "Projections of the motion-module attention."}),
            "steps": ("INT", {"default": 500, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Steps (500)."}),
            "learning_rate": ("FLOAT", {"default": 5e-5, "min": 1e-8, "max": 1.0, "step": 1e-6, "round": False,
                                        "tooltip": "Learning rate (5e-5)."}),
            **_CT_COMMON}, "optional": {**_RUN("motion_lora"), **preview_inputs()}}

    def train(self, model, clip, prompt, layers="2,5", preset="full", steps=500, learning_rate=5e-5, rank=32,
              optimizer="auto", seed=0, name="motion_lora", resume=False, checkpoint_every=100, preview_every=-1,
              preview_prompt=""):
        settings = node_settings(locals())
        m = _model(model, kind="animatediff")
        cfg = CT.CustomTTTUNetConfig(motion_layers=CT.parse_layers(layers), motion_preset=preset, motion_steps=int(steps),
                                     motion_lr=float(learning_rate), rank=int(rank), optimizer=optimizer, seed=int(seed))
        x = check_motion_frames(image_batch(clip, "clip"), "clip")
        return _stage(m, "motion", name, resume, checkpoint_every, preview_every, preview_prompt, int(steps),
                      lambda run, bar: CT.train_motion_lora(m.bundle, [x], prompt, cfg, callback=bar, run=run)[0], seed=seed,
                      settings=settings)


class AnimateDiffTTTMerge:
    DESCRIPTION = ("CustomTTT test-time-training merge: each teacher (base + one LoRA, its own prompt) denoises 5 of 25 "
                   "DDIM steps (CFG 9); the student (base + both LoRAs) is trained on the combined prompt toward both "
                   "references (authors: lr 1e-6, 30 steps). Returns one merged LoRA.")
    CATEGORY = CAT
    RETURN_TYPES = ("UNET_LORA",)
    RETURN_NAMES = ("merged_lora",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("UNET_VIDEO_MODEL", {"tooltip": "The AnimateDiff model both LoRAs were trained on."}),
            "appearance_lora": ("UNET_LORA", {"tooltip": "From Train Appearance LoRA (CustomTTT)."}),
            "motion_lora": ("UNET_LORA", {"tooltip": "From Train Motion LoRA (CustomTTT)."}),
            "appearance_prompt": ("STRING", {"default": "a photo of a sks dog", "tooltip": "Appearance teacher prompt."}),
            "motion_prompt": ("STRING", {"default": "a person is playing guitar", "tooltip": "Motion teacher prompt."}),
            "prompt": ("STRING", {"default": "a sks dog is playing guitar", "tooltip": "Combined prompt."}),
            "steps": ("INT", {"default": 30, "min": 1, "max": MAX_TTT_STEPS, "tooltip": "TTT steps (30)."}),
            "learning_rate": ("FLOAT", {"default": 1e-6, "min": 1e-9, "max": 1.0, "step": 1e-7, "round": False,
                                        "tooltip": "TTT learning rate (1e-6)."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Teacher video frames; 0 = the model's."}),
            "reference": (list(CT.REFERENCES), {"default": "x0_pred", "tooltip": "x0_pred = the teacher's x0 prediction "
                          "at step f (default: one guided teacher call at z_f); z_f_renoised = its latent z_f, "
                          "re-noised forward from the timestep it sits at; z_f_as_x0 = z_f taken as clean. As on "
                          "CogVideoX (docs/customttt.md)."}),
            "teacher_steps": ("INT", {"default": 5, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "f: sampler steps each teacher "
                              "runs before its reference is taken (5)."}),
            "sampler_steps": ("INT", {"default": 25, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "The DDIM schedule the teachers "
                              "step through (25), at CFG 9."}),
            "optimizer": _CT_COMMON["optimizer"], "seed": _CT_COMMON["seed"]},
            "optional": {**run_inputs("customttt", checkpoint_every=10, method="unet", load="Load U-Net LoRA"),
                         **preview_inputs()}}

    def merge(self, model, appearance_lora, motion_lora, appearance_prompt, motion_prompt, prompt, steps=30,
              learning_rate=1e-6, frames=0, reference="x0_pred", teacher_steps=5, sampler_steps=25, optimizer="auto",
              seed=0, name="customttt", resume=False, checkpoint_every=10, preview_every=-1, preview_prompt=""):
        settings = node_settings(locals())
        m = _model(model, kind="animatediff")
        cfg = CT.CustomTTTUNetConfig(ttt_steps=int(steps), ttt_lr=float(learning_rate), num_frames=frames or None,
                                     reference=reference, teacher_steps=int(teacher_steps),
                                     sampler_steps=int(sampler_steps), optimizer=optimizer, seed=int(seed))
        a, mo = _lora(appearance_lora, "appearance_lora"), _lora(motion_lora, "motion_lora")
        return _stage(m, "TTT", name, resume, checkpoint_every, preview_every, preview_prompt, int(steps),
                      lambda run, bar: CT.ttt_merge(m.bundle, a, mo, appearance_prompt=appearance_prompt,
                                                    motion_prompt=motion_prompt, prompt=prompt, config=cfg,
                                                    callback=bar, run=run)[0], seed=seed,
                      settings=settings)


NODE_CLASS_MAPPINGS = {
    "DualAdapterUNetVideoLoader": UNetVideoLoader,
    "DualAdapterUNetSampler": UNetSampler,
    "DualAdapterUNetVAEDecode": UNetVAEDecode,
    "DualAdapterUNetApplyAH": UNetApplyAH,
    "DualAdapterUNetTrainMotionLoRA": UNetTrainMotionLoRA,
    "DualAdapterUNetApplyLoRA": UNetApplyLoRA,
    "DualAdapterUNetSaveLoRA": UNetSaveLoRA,
    "DualAdapterUNetLoadLoRA": UNetLoadLoRA,
    "DualAdapterAnimateDiffPromptInfluence": AnimateDiffPromptInfluence,
    "DualAdapterAnimateDiffTrainAppearanceLoRA": AnimateDiffTrainAppearanceLoRA,
    "DualAdapterAnimateDiffTrainMotionLoRA": AnimateDiffTrainMotionLoRA,
    "DualAdapterAnimateDiffTTTMerge": AnimateDiffTTTMerge,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterUNetVideoLoader": "Load U-Net Video Model (ZeroScope / AnimateDiff)",
    "DualAdapterUNetSampler": "U-Net Video Sampler",
    "DualAdapterUNetVAEDecode": "U-Net Video VAE Decode",
    "DualAdapterUNetApplyAH": "Apply Appearance Highway (AH, ZeroScope)",
    "DualAdapterUNetTrainMotionLoRA": "Train Motion LoRA (TAP, U-Net)",
    "DualAdapterUNetApplyLoRA": "Apply U-Net LoRA",
    "DualAdapterUNetSaveLoRA": "Save U-Net LoRA",
    "DualAdapterUNetLoadLoRA": "Load U-Net LoRA",
    "DualAdapterAnimateDiffPromptInfluence": "Prompt Influence (CustomTTT, AnimateDiff)",
    "DualAdapterAnimateDiffTrainAppearanceLoRA": "Train Appearance LoRA (CustomTTT, AnimateDiff)",
    "DualAdapterAnimateDiffTrainMotionLoRA": "Train Motion LoRA (CustomTTT, AnimateDiff)",
    "DualAdapterAnimateDiffTTTMerge": "TTT Merge (CustomTTT, AnimateDiff)",
}
