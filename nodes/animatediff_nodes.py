"""CustomTTT nodes on AnimateDiff (prompt influence per U-Net text layer, appearance / motion LoRAs, TTT merge).

They take a VIDEO_MODEL holding an AnimateDiff backbone (Load Video Model, a folder in ``models/diffusers/``) and
give VIDEO_LORAs holding :class:`dual_adapter.unet_motion.UNetLora`; the other U-Net nodes (load, sample, decode,
TAP training, LoRA save / load / apply, AH) are the common ones of every backbone.
"""
from __future__ import annotations

import torch

from dual_adapter import customttt_unet as CT
from dual_adapter import unet_motion as UM
from dual_adapter.errors import DualAdapterError
from dual_adapter.media import check_motion_frames
from dual_adapter.seeds import SEED_MAX
from dual_adapter.limits import (MAX_RANK, MAX_SAMPLING_STEPS, MAX_TRAIN_STEPS,
                                 MAX_TTT_STEPS)

from . import bridge
from .common import VIDEO_LORA, VIDEO_MODEL, as_model, image_batch, node_run, node_settings, preview_inputs, preview_options, run_inputs, start_run, training_mode

CAT = "DualAdapter/U-Net"
TINY = ["tiny-unet3d", "tiny-animatediff"]


def _model(m, name="model", kind=None):
    m = as_model(m, name)
    if kind and m.bundle.kind != kind:
        raise DualAdapterError(f"{name}: this node needs a {kind} model; {m.bundle.name!r} is {m.bundle.family}")
    return m


def _lora(x, name="lora"):
    if not isinstance(x, UM.UNetLora):
        raise DualAdapterError(f"{name}: expected a U-Net VIDEO_LORA (trained on AnimateDiff), got "
                               f"{type(x).__name__}")
    return x


def _RUN(default: str) -> dict:
    return run_inputs(default, method="unet", load="Load LoRA")


def _finish(run, lf, losses, title: str) -> None:
    """A finished U-Net run: the LoRA saved as the run's final file, then its checkpoint and state go and its losses
    and plot are written (:meth:`dual_adapter.runs.RunFolder.finish`)."""
    UM.save_unet_lora(lf, run.final)
    run.finish(losses, title)


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
            "model": (VIDEO_MODEL, {"tooltip": "An AnimateDiff model."}),
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
    with node_run(folder, bar, "Load LoRA"), training_mode():
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))  # the LoRAs' random init: the run's seed, so a run repeats (and resumes)
            lf = train(run, bar)
        _finish(folder, lf, folder.records() or bar.losses, f"{label} loss")
    return (lf,)


class AnimateDiffTrainAppearanceLoRA:
    DESCRIPTION = ("CustomTTT appearance LoRA: spatial attention of the appearance layers (default 2,6), trained on the "
                   "subject photos as 1-frame videos with the motion modules bypassed (authors: lr 1e-5, 500 steps).")
    CATEGORY = CAT
    RETURN_TYPES = (VIDEO_LORA,)
    RETURN_NAMES = ("appearance_lora",)
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "An AnimateDiff model."}),
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
    RETURN_TYPES = (VIDEO_LORA,)
    RETURN_NAMES = ("motion_lora",)
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "An AnimateDiff model."}),
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
    RETURN_TYPES = (VIDEO_LORA,)
    RETURN_NAMES = ("merged_lora",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "The AnimateDiff model both LoRAs were trained on."}),
            "appearance_lora": (VIDEO_LORA, {"tooltip": "From Train Appearance LoRA (CustomTTT)."}),
            "motion_lora": (VIDEO_LORA, {"tooltip": "From Train Motion LoRA (CustomTTT)."}),
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
            "optional": {**run_inputs("customttt", checkpoint_every=10, method="unet", load="Load LoRA"),
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
    "DualAdapterAnimateDiffPromptInfluence": AnimateDiffPromptInfluence,
    "DualAdapterAnimateDiffTrainAppearanceLoRA": AnimateDiffTrainAppearanceLoRA,
    "DualAdapterAnimateDiffTrainMotionLoRA": AnimateDiffTrainMotionLoRA,
    "DualAdapterAnimateDiffTTTMerge": AnimateDiffTTTMerge,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterAnimateDiffPromptInfluence": "Prompt Influence (CustomTTT, AnimateDiff)",
    "DualAdapterAnimateDiffTrainAppearanceLoRA": "Train Appearance LoRA (CustomTTT, AnimateDiff)",
    "DualAdapterAnimateDiffTrainMotionLoRA": "Train Motion LoRA (CustomTTT, AnimateDiff)",
    "DualAdapterAnimateDiffTTTMerge": "TTT Merge (CustomTTT, AnimateDiff)",
}
