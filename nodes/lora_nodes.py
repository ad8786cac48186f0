"""LoRA nodes: Train Motion LoRA (TAP), Save LoRA, Load LoRA, Apply LoRA.

VIDEO_LORA carries a :class:`dual_adapter.lora.LoraFile` (diffusers-format tensors + metadata).
Apply LoRA returns a new COGVIDEOX_MODEL with a :class:`dual_adapter.lora.LoraPatch` added; the
loaded model is never changed and several Apply LoRA nodes stack.
"""
from __future__ import annotations

import torch

from dual_adapter import lora as L
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import reservation
from dual_adapter.media import check_motion_frames
from dual_adapter.seeds import SEED_MAX
from dual_adapter.limits import MAX_RANK, MAX_SIDE, MAX_TRAIN_STEPS

from . import bridge
from .common import (as_model, finish_lora_run, image_batch, node_run, node_settings, preview_inputs, preview_options, start_run,
                     run_inputs, training_mode)

CAT = "DualAdapter/LoRA"


def _as_lora(x, name: str = "lora") -> L.LoraFile:
    if not isinstance(x, L.LoraFile):
        raise DualAdapterError(f"{name}: expected a VIDEO_LORA (from Train Motion LoRA or Load LoRA), "
                               f"got {type(x).__name__}")
    return x




class TrainMotionLoRA:
    DESCRIPTION = ("Train a motion LoRA on CogVideoX from one to three clips ('Separate Motion from "
                   "Appearance', docs/tap.md). Preset tap = LoRA on attention query and key only (TAP: the value projection stays "
                   "frozen so the pretrained appearance is re-used, not re-learned); k_out = the authors' code; full = "
                   "q, k, v, out. Optional MotionDirector spatial path and appearance-debiased loss. Progress per step; "
                   "Each run gets a folder output/runs/lora/<name>_NNNNN_/ (the final LoRA, losses, loss plot, previews); Cancel keeps the last checkpoint there and 'resume' continues it. While it trains "
                   "the node shows the loss curve and validation previews.")
    CATEGORY = CAT
    RETURN_TYPES = ("VIDEO_LORA", "IMAGE")
    RETURN_NAMES = ("lora", "loss_plot")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("COGVIDEOX_MODEL", {"tooltip": "From Load CogVideoX. LoRAs already applied to it stay under the "
                                          "new LoRA during training."}),
            "clip": ("IMAGE", {"tooltip": "The motion clip as frames [F, H, W, 3] (e.g. from Load Clip Frames): 4k+1 "
                               "frames, 49 on the released models; resized and centre-cropped to width x height. A still "
                               "(identical frames) is refused."}),
            "prompt": ("STRING", {"multiline": True, "default": "a person is playing guitar",
                                  "tooltip": "Training prompt describing the motion."}),
            "preset": (["tap", "k_out", "full", "custom"], {"default": "tap", "tooltip": "Which attention projections "
                       "get the LoRA: tap = to_q + to_k (TAP), k_out = to_k + to_out.0 (authors' code), full = q, k, v, "
                       "out, custom = the 'targets' list."}),
            "rank": ("INT", {"default": 32, "min": 1, "max": MAX_RANK, "tooltip": "LoRA rank (32 in the paper)."}),
            "alpha": ("FLOAT", {"default": 32.0, "min": 0.01, "max": 1024.0, "step": 0.5,
                                "tooltip": "LoRA alpha; the update is scaled by alpha / rank (saved files fold it in)."}),
            "dropout": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.9, "step": 0.01,
                                  "tooltip": "Dropout on the LoRA input while training (0.1 in the paper)."}),
            "learning_rate": ("FLOAT", {"default": 5e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                        "tooltip": "AdamW learning rate (5e-4 in the paper), constant schedule."}),
            "steps": ("INT", {"default": 1000, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Optimiser steps (1000 in the paper)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds every step's timestep, "
                             "noise and clip choice; the same seed repeats the run."}),
        }, "optional": {
            "clip_2": ("IMAGE", {"tooltip": "A second clip of the same motion (optional)."}),
            "clip_3": ("IMAGE", {"tooltip": "A third clip of the same motion (optional)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16,
                               "tooltip": "Training height in pixels, multiple of 16. 0 = the model's (480; tiny 64)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16,
                              "tooltip": "Training width in pixels, multiple of 16. 0 = the model's (720; tiny 96)."}),
            "targets": ("STRING", {"default": "", "tooltip": "With preset 'custom': comma-separated modules inside each "
                                   "block, e.g. attn1.to_q,attn1.to_k,ff.net.2."}),
            "blocks": ("STRING", {"default": "", "tooltip": "Blocks that get the LoRA, e.g. '0-5,12'. Empty = all."}),
            "spatial_path": ("BOOLEAN", {"default": False, "tooltip": "MotionDirector dual path: also train a spatial "
                             "LoRA on single frames (absorbs appearance); it is dropped from the output."}),
            "debiased_loss": ("BOOLEAN", {"default": False, "tooltip": "Add MotionDirector's appearance-debiased "
                              "loss (noise of a random anchor frame subtracted)."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute activations in the backward "
                                       "pass: much less VRAM, about 30% slower. Needed for 5B at 49x480x720."}),
            **run_inputs("motion_lora"),
            **preview_inputs(),
            "fp8_base": ("BOOLEAN", {"default": False, "tooltip": "Store the frozen base Linear weights in fp8 (e4m3, a scale per row) for training, upcast per layer: they take half their bf16 memory; the forward differs from bf16 by fp8 rounding of the base weights. The loaded model is not changed."}),
            "block_swap": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "Keep the frozen weights of the first N transformer blocks on the CPU during training and copy each to the GPU just before it runs, the next one ahead (0 = off). Bit-identical results; saves N - 2 blocks of weights with gradient checkpointing; costs two host-to-device copies of those blocks per step (docs/performance.md)."}),
        }}

    def train(self, model, clip, prompt, preset="tap", rank=32, alpha=32.0, dropout=0.1, learning_rate=5e-4,
              steps=1000, seed=0, clip_2=None, clip_3=None, height=0, width=0, targets="", blocks="",
              spatial_path=False, debiased_loss=False, gradient_checkpointing=True, name="motion_lora",
              resume=False, checkpoint_every=100, preview_every=-1, preview_prompt="", fp8_base=False, block_swap=0):
        settings = node_settings(locals())
        m = as_model(model)
        if preset == "custom":
            if not targets.strip():
                raise DualAdapterError("preset 'custom' needs a 'targets' list, e.g. attn1.to_q,attn1.to_k")
            tg = L.resolve_targets(targets)
        else:
            tg = L.resolve_targets(preset)
        spec = L.LoraSpec(rank=int(rank), alpha=float(alpha), dropout=float(dropout), targets=tg, blocks=L.parse_blocks(blocks))
        spec.validate()
        cfg = L.lora_train_config(steps=int(steps), lr=float(learning_rate), seed=int(seed),
                                  gradient_checkpointing=bool(gradient_checkpointing),
                                  checkpoint_every=int(checkpoint_every), fp8_base=bool(fp8_base),
                                  block_swap=int(block_swap))
        clips = [check_motion_frames(image_batch(c, name), name)
                 for name, c in (("clip", clip), ("clip_2", clip_2), ("clip_3", clip_3)) if c is not None]
        t = m.bundle.vae_scale_temporal
        n = min(c.shape[0] for c in clips)
        n = min((n - 1) // t * t + 1, m.bundle.default_size[0])
        run = start_run("lora", name, "motion_lora", resume, dict(settings, trainer="motion LoRA"))
        progress = bridge.Progress(int(steps))
        pv = preview_options(progress, preview_every, preview_prompt, m.bundle, run.previews)
        with node_run(run, progress, "Load LoRA"), training_mode():
            lf, res = L.train_lora(m.bundle, clips=clips, prompt=prompt, spec=spec, cfg=cfg, spatial_path=spatial_path,
                                   debiased_loss=debiased_loss, callback=progress, checkpoint_path=run.checkpoint,
                                   resume=bool(resume), num_frames=n, height=height or None, width=width or None,
                                   patches=m.patches, preview=pv)
            title = f"motion LoRA ({spec_name(spec)}) loss"
            finish_lora_run(run, lf, res.losses, title)
        from dual_adapter.plots import plot_loss_curve

        plot = plot_loss_curve(res.losses, title=title, smooth=20)
        return (lf, plot)


def spec_name(spec: L.LoraSpec) -> str:
    return L.preset_name(spec.targets)


class SaveLoRA:
    DESCRIPTION = ("Save a VIDEO_LORA as a diffusers-format CogVideoX LoRA (.safetensors with rank, alpha, targets and "
                   "base-model metadata). Loads with diffusers' CogVideoXPipeline.load_lora_weights and ComfyUI "
                   "CogVideoX tools. Never overwrites: a counter is added to the name.")
    CATEGORY = CAT
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": ("VIDEO_LORA", {"tooltip": "From Train Motion LoRA or Load LoRA."}),
            "filename_prefix": ("STRING", {"default": "motion_lora", "tooltip": "File name start; sub-folders allowed "
                                "(e.g. tap/guitar). A counter _00001_ is appended."}),
            "folder": (["models/loras", "output"], {"default": "models/loras", "tooltip": "models/loras: listed by Load "
                       "LoRA right away; output: ComfyUI's output folder (under loras/)."}),
            "precision": (["fp32", "bf16", "fp16"], {"default": "bf16", "tooltip": "Tensor dtype in the file "
                          "(bf16 halves the size; fp32 keeps it exact)."}),
        }, "optional": {
            "key_format": (["diffusers", "comfyui_native"], {"default": "diffusers", "tooltip": "diffusers: "
                           "transformer.transformer_blocks.N.attn1.to_q.lora_A/B (diffusers, CogVideoX wrappers); "
                           "comfyui_native: diffusion_model.blocks.N.q.lora_up/lora_down + .alpha, what core "
                           "LoraLoaderModelOnly loads on a native CogVideoX MODEL. This pack reads both."}),
        }}

    def save(self, lora, filename_prefix="motion_lora", folder="models/loras", precision="bf16",
             key_format="diffusers"):
        lf = _as_lora(lora)
        if folder == "models/loras":
            path = bridge.output_path(filename_prefix, "safetensors", base=bridge.folder_dirs("loras")[0])
        else:
            path = bridge.saved_output_path("loras", filename_prefix)
        dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        with reservation(path):  # a refused LoRA leaves no empty file behind
            if key_format == "comfyui_native":
                from dual_adapter.lora import save_lora_native

                save_lora_native(path, lf, dtype=dt)
            else:
                lf.save(path, dtype=dt)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


def lora_files(unet: bool) -> list[str]:
    """The ``.safetensors`` LoRAs of models/loras and the pack's output folders (:func:`bridge.list_files`) that are
    for a U-Net (``unet=True``) or for CogVideoX (``unet=False``), told apart by their keys (header only)."""
    from dual_adapter.unet_motion import is_unet_lora_file

    out = []
    for f in bridge.list_files("loras"):
        if not f.lower().endswith(".safetensors"):
            continue
        try:
            path = bridge.resolve("loras", f)
        except DualAdapterError:
            continue
        if is_unet_lora_file(path) == unet:
            out.append(f)
    return out


def cogvideox_lora_files() -> list[str]:
    """CogVideoX LoRAs for Load LoRA (CogVideoX)'s list (see :func:`lora_files`)."""
    return lora_files(unet=False)


class LoadLoRA:
    DESCRIPTION = ("Load a CogVideoX LoRA from models/loras or from what this pack's Save / Train nodes wrote in the "
                   "output folder (output/loras, the training run folders output/runs/..., older output/lora_checkpoints): files saved by this pack, diffusers / peft LoRAs from "
                   "other trainers (CogVideoX factory, finetrainers...) and kohya-style lora_unet_* files "
                   "(CogVideoX-Fun, also VideoX-Fun's lora_unet__ names), ComfyUI-native diffusion_model.blocks.N.q files "
                   "(.alpha read; .diff refused) and finetrainers files (alpha from lora_config). Text-encoder parts "
                   "are not applied.")
    CATEGORY = CAT
    RETURN_TYPES = ("VIDEO_LORA",)
    RETURN_NAMES = ("lora",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora_name": (cogvideox_lora_files() or [""], {"tooltip": "A .safetensors CogVideoX LoRA in models/loras "
                          "(sub-folders included), or one this pack wrote in the output folder (output/loras/..., a training "
                          "run's final file or stopped run's checkpoint.safetensors in output/runs/<method>/<name>_NNNNN_/). U-Net LoRAs are left out (Load U-Net LoRA takes them)."}),
        }}

    def load(self, lora_name):
        if not lora_name:
            raise DualAdapterError("Load LoRA: no LoRA chosen (put .safetensors files in models/loras)")
        return (L.load_lora(bridge.resolve("loras", lora_name)),)


class ApplyLoRA:
    DESCRIPTION = ("Add a LoRA to a CogVideoX model at a strength. Returns a new model; the input model is unchanged "
                   "and the weights are shared. Chain several Apply LoRA nodes to stack LoRAs (their updates add up). "
                   "Strength 0 = the model without the LoRA.")
    CATEGORY = CAT
    RETURN_TYPES = ("COGVIDEOX_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("COGVIDEOX_MODEL", {"tooltip": "From Load CogVideoX (or another Apply node)."}),
            "lora": ("VIDEO_LORA", {"tooltip": "From Load LoRA or Train Motion LoRA."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.0001,
                                   "tooltip": "Multiplier of the LoRA update: 1 = as trained, 0 = off, negative subtracts. "
                                   "Fine steps (0.0001) reach 1/rank for LoRAs trained with alpha 1 (or use alpha_override)."}),
        }, "optional": {
            "alpha_override": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5, "tooltip":
                               "0 = the file's alpha (scale alpha/rank). Set e.g. 1 for LoRAs trained with alpha 1 but "
                               "saved without it (DimensionX-style; the same as strength 1/rank)."}),
        }}

    def apply(self, model, lora, strength=1.0, alpha_override=0.0):
        m = as_model(model)
        lf = _as_lora(lora)
        if alpha_override:
            from dual_adapter.lora import with_alpha

            lf = with_alpha(lf, float(alpha_override))
        L.check_compatible(lf, m.bundle.transformer)
        k = sum(isinstance(p, L.LoraPatch) for p in m.patches)
        return (m.with_patch(L.LoraPatch(lf, float(strength), name=f"{lf.name}_{k}")),)


NODE_CLASS_MAPPINGS = {
    "DualAdapterTrainMotionLoRA": TrainMotionLoRA,
    "DualAdapterSaveLoRA": SaveLoRA,
    "DualAdapterLoadLoRA": LoadLoRA,
    "DualAdapterApplyLoRA": ApplyLoRA,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterTrainMotionLoRA": "Train Motion LoRA (TAP)",
    "DualAdapterSaveLoRA": "Save LoRA (CogVideoX)",
    "DualAdapterLoadLoRA": "Load LoRA (CogVideoX)",
    "DualAdapterApplyLoRA": "Apply LoRA (CogVideoX)",
}
