"""The node names of earlier versions, kept so that saved workflows load and run: each is a subclass of the node that
replaced it (``DEPRECATED = True``, so ComfyUI hides it from the node search), with its old display name plus
"(old name)" and its old inputs, in their old order (a UI workflow stores widget values by position). The first use
of an old name in a process logs one line naming the new node (:func:`nodes.common.old_name_notice`).

Earlier versions had two families of model nodes, one for CogVideoX / Wan (COGVIDEOX_MODEL) and one for the U-Nets
(UNET_VIDEO_MODEL, UNET_LORA), and CustomTTT nodes of their own for AnimateDiff; the nodes of :mod:`nodes.core_nodes`,
:mod:`nodes.lora_nodes` and :mod:`nodes.customttt_nodes` now take any VIDEO_MODEL / VIDEO_LORA, and the backbone
decides (docs/nodes.md).
"""
from __future__ import annotations

from dual_adapter.customttt import REFERENCES
from dual_adapter.limits import MAX_CFG, MAX_RANK, MAX_SAMPLING_STEPS, MAX_SIDE, MAX_TRAIN_STEPS, MAX_TTT_STEPS, MIN_CFG
from dual_adapter.seeds import SEED_MAX
from dual_adapter import unet_motion as UM

from . import bridge
from .common import VIDEO_LORA, VIDEO_MODEL, old_name_notice, preview_inputs, run_inputs
from .core_nodes import NODE_DISPLAY_NAME_MAPPINGS as _CORE_TITLES, Sampler
from .core_nodes import NODE_CLASS_MAPPINGS as _CORE
from .customttt_nodes import NODE_CLASS_MAPPINGS as _CUSTOMTTT
from .customttt_nodes import NODE_DISPLAY_NAME_MAPPINGS as _CUSTOMTTT_TITLES
from .customttt_nodes import DualAdapterPromptInfluence, DualAdapterTrainSelectiveLoRA, DualAdapterTTTMerge
from .lora_nodes import NODE_CLASS_MAPPINGS as _LORA
from .lora_nodes import NODE_DISPLAY_NAME_MAPPINGS as _LORA_TITLES, TrainMotionLoRA, write_lora

_NEW = {**_CORE, **_LORA, **_CUSTOMTTT}
_TITLES = {**_CORE_TITLES, **_LORA_TITLES, **_CUSTOMTTT_TITLES}


def _unet_sampler_inputs() -> dict:
    return {"required": {
        "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (with Apply nodes)."}),
        "prompt": ("STRING", {"multiline": True, "default": "a dog is playing guitar", "tooltip": "The prompt (CLIP, "
                   "77 tokens)."}),
        "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Used when cfg > 1."}),
        "frames": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "0 = the model's (tiny 8, ZeroScope 24, "
                   "AnimateDiff 16)."}),
        "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "Pixels; 0 = the model's."}),
        "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip": "Pixels; 0 = the model's."}),
        "steps": ("INT", {"default": 25, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "Denoising steps."}),
        "cfg": ("FLOAT", {"default": 9.0, "min": MIN_CFG, "max": MAX_CFG, "step": 0.5, "tooltip": "Guidance scale."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Initial-noise seed (CPU generator)."}),
        "scheduler": (["ddim", "dpm"], {"default": "ddim", "tooltip": "DDIM (the authors') or DPM-Solver++."}),
    }}


def _unet_sample(self, model, prompt, negative_prompt="", frames=0, height=0, width=0, steps=25, cfg=9.0, seed=0,
                 scheduler="ddim"):
    from .common import as_model

    bb = as_model(model).bundle
    emb = {"positive": bb.encode_prompt(prompt), "negative": bb.encode_prompt(negative_prompt)}
    return Sampler.run(self, model, emb, frames, height, width, steps, cfg, seed, scheduler)


def _unet_train_inputs() -> dict:
    d = UM.UNetMotionTrainConfig()
    return {"required": {
        "model": (VIDEO_MODEL, {"tooltip": "ZeroScope/ModelScope or AnimateDiff."}),
        "clip": ("IMAGE", {"tooltip": "The motion clip [F, H, W, 3] at a size the model takes."}),
        "prompt": ("STRING", {"multiline": True, "default": "a person is playing guitar",
                              "tooltip": "Training prompt describing the motion."}),
        "preset": (list(UM.PRESETS), {"default": d.preset, "tooltip": "Temporal-attention projections that get the "
                   "LoRA: k_out = to_k + to_out.0 (the authors' code), tap = to_q + to_k, full = q, k, v, out."}),
        "rank": ("INT", {"default": d.rank, "min": 1, "max": MAX_RANK, "tooltip": "LoRA rank (32)."}),
        "steps": ("INT", {"default": d.steps, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Optimiser steps (1000)."}),
        "learning_rate": ("FLOAT", {"default": d.lr, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                    "tooltip": "AdamW learning rate (5e-4), weight decay 1e-2."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds every step's randomness."}),
        "spatial_path": ("BOOLEAN", {"default": d.spatial_path, "tooltip": "MotionDirector's spatial LoRA path."}),
        "debiased_loss": ("BOOLEAN", {"default": d.debiased_loss, "tooltip": "Add the appearance-debiased loss."}),
    }, "optional": {**run_inputs("unet_motion_lora", method="unet", load="Load LoRA"), **preview_inputs()}}


def _unet_train(self, model, clip, prompt, preset=UM.UNetMotionTrainConfig.preset, rank=32, steps=1000,
                learning_rate=5e-4, seed=0, spatial_path=True, debiased_loss=True, name="unet_motion_lora",
                resume=False, checkpoint_every=100, preview_every=-1, preview_prompt=""):
    return TrainMotionLoRA.train(self, model, clip, prompt, preset=preset, rank=rank, alpha=float(rank),
                                 learning_rate=learning_rate, steps=steps, seed=seed, spatial_path=spatial_path,
                                 debiased_loss=debiased_loss, name=name, resume=resume,
                                 checkpoint_every=checkpoint_every, preview_every=preview_every,
                                 preview_prompt=preview_prompt)


def _unet_save_inputs() -> dict:
    return {"required": {"lora": (VIDEO_LORA, {"tooltip": "The LoRA to save."}),
                         "filename_prefix": ("STRING", {"default": "motion", "tooltip": "File name in "
                                             "output/unet_lora/ (sub-folders allowed); a counter is appended."})}}


def _unet_save(self, lora, filename_prefix="motion"):
    from dual_adapter.dispatch import check_lora

    out = bridge.saved_output_path("unet_lora", filename_prefix or "motion")
    return write_lora(check_lora(lora), out, "fp32")


# ---- the AnimateDiff CustomTTT nodes (one concept prompt per analysis; a stage per LoRA kind; the recipe's merge)
def _ad_influence_inputs() -> dict:
    return {"required": {
        "model": (VIDEO_MODEL, {"tooltip": "An AnimateDiff model."}),
        "concept_prompt": ("STRING", {"default": "a photo of a tiger", "tooltip": "p* (e.g. 'A tiger')."}),
        "neutral_prompt": ("STRING", {"default": "a photo of a koala", "tooltip": "p (e.g. 'A koala')."}),
        "frames": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "0 = the model's."}),
        "timesteps": ("INT", {"default": 3, "min": 1, "max": 20, "tooltip": "Noise levels averaged over, spread "
                      "evenly in (0, 1000): 3 = t 750, 500, 250."}),
    }}


def _ad_influence(self, model, concept_prompt, neutral_prompt, frames=0, timesteps=3):
    """One concept (as appearance), seed 0, the U-Net's own output space; the table's scores are the old node's."""
    ts = [int(1000 * (k + 1) / (int(timesteps) + 1)) for k in range(int(timesteps))][::-1]
    return DualAdapterPromptInfluence.analyse(self, model, concept_prompt, "", neutral_prompt, group_size=1, top_k=1,
                                              timesteps=",".join(map(str, ts)), seeds="0", space="v",
                                              frames=frames)


_AD_COMMON = {
    "rank": ("INT", {"default": 32, "min": 1, "max": MAX_RANK, "tooltip": "LoRA rank (32)."}),
    "optimizer": (["auto", "lion", "adamw"], {"default": "auto", "tooltip": "auto = Lion (the authors') when "
                  "lion-pytorch is installed, else AdamW (a console message says so)."}),
    "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds every step's randomness."}),
}


def _ad_stage_inputs(data: tuple, prompt: str, layers: str, lr: float, motion: bool) -> dict:
    req = {"model": (VIDEO_MODEL, {"tooltip": "An AnimateDiff model."}), data[0]: ("IMAGE", {"tooltip": data[1]}),
           "prompt": ("STRING", {"default": prompt, "tooltip": "Training prompt."}),
           "layers": ("STRING", {"default": layers, "tooltip": "Text layers (0-based) that get the LoRA."})}
    if motion:
        req["preset"] = (list(UM.PRESETS), {"default": "full", "tooltip": "Projections of the motion-module attention."})
    req["steps"] = ("INT", {"default": 500, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Steps (500)."})
    req["learning_rate"] = ("FLOAT", {"default": lr, "min": 1e-8, "max": 1.0, "step": 1e-6, "round": False,
                                      "tooltip": f"Learning rate ({lr:g})."})
    name = ("motion" if motion else "appearance") + "_lora"
    return {"required": {**req, **_AD_COMMON},
            "optional": {**run_inputs(name, method="unet", load="Load LoRA"), **preview_inputs()}}


def _ad_stage(self, kind, model, data, prompt, layers, preset, steps, learning_rate, rank, optimizer, seed, name,
              resume, checkpoint_every, preview_every, preview_prompt):
    return DualAdapterTrainSelectiveLoRA.train(
        self, model, kind, prompt, blocks=layers, preset=preset, rank=rank, learning_rate=learning_rate, steps=steps,
        seed=seed, name=name, resume=resume, checkpoint_every=checkpoint_every, preview_every=preview_every,
        preview_prompt=preview_prompt, optimizer=optimizer, **{"photos" if kind == "appearance" else "clip": data})


def _ad_appearance(self, model, photos, prompt, layers="2,6", steps=500, learning_rate=1e-5, rank=32,
                   optimizer="auto", seed=0, name="appearance_lora", resume=False, checkpoint_every=100,
                   preview_every=-1, preview_prompt=""):
    return _ad_stage(self, "appearance", model, photos, prompt, layers, "full", steps, learning_rate, rank, optimizer,
                     seed, name, resume, checkpoint_every, preview_every, preview_prompt)


def _ad_motion(self, model, clip, prompt, layers="2,5", preset="full", steps=500, learning_rate=5e-5, rank=32,
               optimizer="auto", seed=0, name="motion_lora", resume=False, checkpoint_every=100, preview_every=-1,
               preview_prompt=""):
    return _ad_stage(self, "motion", model, clip, prompt, layers, preset, steps, learning_rate, rank, optimizer,
                     seed, name, resume, checkpoint_every, preview_every, preview_prompt)


def _ad_merge_inputs() -> dict:
    return {"required": {
        "model": (VIDEO_MODEL, {"tooltip": "The AnimateDiff model both LoRAs were trained on."}),
        "appearance_lora": (VIDEO_LORA, {"tooltip": "The appearance LoRA."}),
        "motion_lora": (VIDEO_LORA, {"tooltip": "The motion LoRA."}),
        "appearance_prompt": ("STRING", {"default": "a photo of a sks dog", "tooltip": "Appearance teacher prompt."}),
        "motion_prompt": ("STRING", {"default": "a person is playing guitar", "tooltip": "Motion teacher prompt."}),
        "prompt": ("STRING", {"default": "a sks dog is playing guitar", "tooltip": "Combined prompt."}),
        "steps": ("INT", {"default": 30, "min": 1, "max": MAX_TTT_STEPS, "tooltip": "TTT steps (30)."}),
        "learning_rate": ("FLOAT", {"default": 1e-6, "min": 1e-9, "max": 1.0, "step": 1e-7, "round": False,
                                    "tooltip": "TTT learning rate (1e-6)."}),
        "frames": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Teacher video frames; 0 = the model's."}),
        "reference": (list(REFERENCES), {"default": "x0_pred", "tooltip": "What the student is trained toward."}),
        "teacher_steps": ("INT", {"default": 5, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "f (5)."}),
        "sampler_steps": ("INT", {"default": 25, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "The DDIM schedule "
                          "the teachers step through (25), at CFG 9."}),
        "optimizer": _AD_COMMON["optimizer"], "seed": _AD_COMMON["seed"]},
        "optional": {**run_inputs("customttt", checkpoint_every=10, method="unet", load="Load LoRA"),
                     **preview_inputs()}}


def _ad_merge(self, model, appearance_lora, motion_lora, appearance_prompt, motion_prompt, prompt, steps=30,
              learning_rate=1e-6, frames=0, reference="x0_pred", teacher_steps=5, sampler_steps=25, optimizer="auto",
              seed=0, name="customttt", resume=False, checkpoint_every=10, preview_every=-1, preview_prompt=""):
    """The recipe's CFG, noise and clipping are the unified node's defaults on AnimateDiff (teacher_cfg 0)."""
    return DualAdapterTTTMerge.merge(
        self, model, appearance_lora, appearance_prompt, motion_lora, motion_prompt, prompt, steps=steps,
        teacher_steps=teacher_steps, learning_rate=learning_rate, optimizer=optimizer, seed=seed,
        teacher_schedule=sampler_steps, reference=reference, frames=frames, name=name, resume=resume,
        checkpoint_every=checkpoint_every, preview_every=preview_every, preview_prompt=preview_prompt)


#: old key -> (new key, old display name, options): ``keep`` = the old input names (a subset of the new node's, in
#: its order), ``inputs`` = the old inputs where they differ, ``run`` = the old call mapped onto the new node
OLD_NAMES: dict[str, tuple[str, str, dict]] = {
    "DualAdapterCogVideoXLoader": ("DualAdapterLoadVideoModel", "Load CogVideoX", {}),
    "DualAdapterUNetVideoLoader": ("DualAdapterLoadVideoModel", "Load U-Net Video Model (ZeroScope / AnimateDiff)",
                                   {"keep": ("model", "dtype", "device")}),
    "DualAdapterUNetSampler": ("DualAdapterSampler", "U-Net Video Sampler",
                               {"inputs": _unet_sampler_inputs, "run": _unet_sample}),
    "DualAdapterUNetVAEDecode": ("DualAdapterVAEDecode", "U-Net Video VAE Decode", {}),
    "DualAdapterUNetApplyAH": ("DualAdapterApplyAH", "Apply Appearance Highway (AH, ZeroScope)", {}),
    "DualAdapterUNetTrainMotionLoRA": ("DualAdapterTrainMotionLoRA", "Train Motion LoRA (TAP, U-Net)",
                                       {"inputs": _unet_train_inputs, "run": _unet_train, "RUN_METHOD": "unet"}),
    "DualAdapterUNetApplyLoRA": ("DualAdapterApplyLoRA", "Apply U-Net LoRA", {"keep": ("model", "lora", "strength")}),
    "DualAdapterUNetSaveLoRA": ("DualAdapterSaveLoRA", "Save U-Net LoRA",
                                {"inputs": _unet_save_inputs, "run": _unet_save}),
    "DualAdapterUNetLoadLoRA": ("DualAdapterLoadLoRA", "Load U-Net LoRA", {}),
    "DualAdapterAnimateDiffPromptInfluence": ("DualAdapterPromptInfluence", "Prompt Influence (CustomTTT, AnimateDiff)",
                                              {"inputs": _ad_influence_inputs, "run": _ad_influence}),
    "DualAdapterAnimateDiffTrainAppearanceLoRA": (
        "DualAdapterTrainSelectiveLoRA", "Train Appearance LoRA (CustomTTT, AnimateDiff)",
        {"inputs": lambda: _ad_stage_inputs(("photos", "Subject photos [N, H, W, 3] at a size the model takes."),
                                            "a photo of a sks dog", "2,6", 1e-5, motion=False),
         "run": _ad_appearance, "RUN_METHOD": "unet"}),
    "DualAdapterAnimateDiffTrainMotionLoRA": (
        "DualAdapterTrainSelectiveLoRA", "Train Motion LoRA (CustomTTT, AnimateDiff)",
        {"inputs": lambda: _ad_stage_inputs(("clip", "Motion clip [F, H, W, 3] at a size the model takes."),
                                            "a person is playing guitar", "2,5", 5e-5, motion=True),
         "run": _ad_motion, "RUN_METHOD": "unet"}),
    "DualAdapterAnimateDiffTTTMerge": ("DualAdapterTTTMerge", "TTT Merge (CustomTTT, AnimateDiff)",
                                       {"inputs": _ad_merge_inputs, "run": _ad_merge, "RUN_METHOD": "unet"}),
}


def _alias(old: str, new_key: str, opts: dict) -> type:
    new = _NEW[new_key]
    title = _TITLES[new_key]
    keep, inputs, run = opts.get("keep"), opts.get("inputs"), opts.get("run")

    def input_types(cls):
        if inputs is not None:
            return inputs()
        spec = new.INPUT_TYPES()
        if keep is None:
            return spec
        return {sec: {k: v for k, v in (spec.get(sec) or {}).items() if k in keep} for sec in ("required", "optional")}

    def run_old_name(self, **kw):
        old_name_notice(old, new_key, title)
        return (run or getattr(new, new.FUNCTION))(self, **kw)

    attrs = {"INPUT_TYPES": classmethod(input_types), "FUNCTION": "run_old_name", "run_old_name": run_old_name,
             "DEPRECATED": True, "__module__": __name__,
             "DESCRIPTION": f"The old name of '{title}', kept so that saved workflows run; use '{title}'. "
                            + new.DESCRIPTION}
    attrs.update({k: v for k, v in opts.items() if k.isupper()})
    return type(old.removeprefix("DualAdapter"), (new,), attrs)


NODE_CLASS_MAPPINGS = {old: _alias(old, new, opts) for old, (new, _, opts) in OLD_NAMES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {old: f"{title} (old name)" for old, (_, title, _) in OLD_NAMES.items()}
