"""LoRA nodes for every backbone: Train Motion LoRA (TAP), Save LoRA, Load LoRA, Apply LoRA, Apply Appearance
Highway.

VIDEO_LORA carries a :class:`dual_adapter.lora.LoraFile` (one type for every backbone); :mod:`dual_adapter.dispatch` picks the implementation from the model. Apply LoRA returns a new VIDEO_MODEL
with the LoRA's patch added; the loaded model is never changed and several Apply LoRA nodes stack.
"""
from __future__ import annotations

import contextlib

import torch

from dual_adapter import dispatch
from dual_adapter.experts import PerExpert, reserve_pair
from dual_adapter import unet_motion as UM
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import reservation
from dual_adapter.media import check_motion_frames
from dual_adapter.seeds import SEED_MAX
from dual_adapter.limits import MAX_RANK, MAX_SIDE, MAX_TRAIN_STEPS

from . import bridge
from dual_adapter.patches import patches_for

from .common import (VIDEO_LORA, VIDEO_MODEL, as_model, expert_result, expert_runs, finish_lora_run, image_batch,
                     node_run, node_settings, preview_inputs, preview_options, run_inputs, start_run, training_mode)

CAT = "DualAdapter/LoRA"


def _as_lora(x, name: str = "lora"):
    return dispatch.check_lora(x, name)


class TrainMotionLoRA:
    DESCRIPTION = ("Train a motion LoRA from one to three clips on any video model ('Separate Motion from "
                   "Appearance', docs/tap.md); the backbone decides the trainer. Preset auto = the backbone's TAP: "
                   "tap (LoRA on attention query and key only: the value projection stays frozen so the pretrained "
                   "appearance is re-used, not re-learned) on CogVideoX / Wan, the SMA authors' k_out (to_k + "
                   "to_out.0 of the temporal attentions) on ZeroScope / AnimateDiff; full = q, k, v, out. Optional "
                   "MotionDirector spatial path and appearance-debiased loss. Progress per step; "
                   "Each run gets a folder output/runs/lora/<name>_NNNNN_/ (the final LoRA, losses, loss plot, previews); Cancel keeps the last checkpoint there and 'resume' continues it. While it trains "
                   "the node shows the loss curve and validation previews. On Wan 2.2 A14B one LoRA per expert is "
                   "trained, each on the timesteps its expert serves, in runs <name>_high_noise and <name>_low_noise "
                   "(steps each); the output carries both.")
    CATEGORY = CAT
    RETURN_TYPES = (VIDEO_LORA, "IMAGE")
    RETURN_NAMES = ("lora", "loss_plot")
    FUNCTION = "train"
    #: the run folder's method (output/runs/<method>/)
    RUN_METHOD = "lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (any backbone). LoRAs already applied to it stay "
                                    "under the new LoRA during training (CogVideoX / Wan)."}),
            "clip": ("IMAGE", {"tooltip": "The motion clip as frames [F, H, W, 3] (e.g. from Load Clip Frames): on "
                               "CogVideoX 4k+1 frames, 49 on the released models, resized and centre-cropped to width "
                               "x height; on a U-Net at a size the model takes (16 frames at 384x384 in the SMA code). "
                               "A still (identical frames) is refused."}),
            "prompt": ("STRING", {"multiline": True, "default": "a person is playing guitar",
                                  "tooltip": "Training prompt describing the motion."}),
            "preset": (["auto", "tap", "k_out", "full", "custom"], {"default": "auto", "tooltip": "Which attention "
                       "projections get the LoRA: auto = the backbone's (tap on CogVideoX / Wan, k_out on the U-Nets), "
                       "tap = to_q + to_k (TAP), k_out = to_k + to_out.0 (the SMA authors' code), full = q, k, v, "
                       "out, custom = the 'targets' list (CogVideoX / Wan). On a U-Net: the temporal attentions."}),
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
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8,
                               "tooltip": "Training height in pixels (CogVideoX / Wan: multiple of 16). 0 = the "
                               "model's (480; tiny 64); on a U-Net 0 = the clip's own size."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8,
                              "tooltip": "Training width in pixels (CogVideoX / Wan: multiple of 16). 0 = the model's "
                              "(720; tiny 96); on a U-Net 0 = the clip's own size."}),
            "targets": ("STRING", {"default": "", "tooltip": "CogVideoX / Wan, with preset 'custom': comma-separated "
                                   "modules inside each block, e.g. attn1.to_q,attn1.to_k,ff.net.2."}),
            "blocks": ("STRING", {"default": "", "tooltip": "CogVideoX / Wan: blocks that get the LoRA, e.g. '0-5,12'. "
                                  "Empty = all."}),
            "spatial_path": ("BOOLEAN", {"default": False, "tooltip": "MotionDirector dual path: also train a spatial "
                             "LoRA on single frames (absorbs appearance); it is dropped from the output. On in the SMA "
                             "authors' U-Net code."}),
            "debiased_loss": ("BOOLEAN", {"default": False, "tooltip": "Add MotionDirector's appearance-debiased "
                              "loss (noise of a random anchor frame subtracted). On in the SMA authors' U-Net code."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute activations in the backward "
                                       "pass: much less VRAM, about 30% slower. Needed for 5B at 49x480x720. (U-Nets: "
                                       "on a GPU only.)"}),
            **run_inputs("motion_lora"),
            **preview_inputs(),
            "fp8_base": ("BOOLEAN", {"default": False, "tooltip": "CogVideoX / Wan: store the frozen base Linear weights in fp8 (e4m3, a scale per row) for training, upcast per layer: they take half their bf16 memory; the forward differs from bf16 by fp8 rounding of the base weights. The loaded model is not changed."}),
            "block_swap": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "CogVideoX / Wan: keep the frozen weights of the first N transformer blocks on the CPU during training and copy each to the GPU just before it runs, the next one ahead (0 = off). Bit-identical results; saves N - 2 blocks of weights with gradient checkpointing; costs two host-to-device copies of those blocks per step (docs/performance.md)."}),
        }}

    def train(self, model, clip, prompt, preset="auto", rank=32, alpha=32.0, dropout=0.1, learning_rate=5e-4,
              steps=1000, seed=0, clip_2=None, clip_3=None, height=0, width=0, targets="", blocks="",
              spatial_path=False, debiased_loss=False, gradient_checkpointing=True, name="motion_lora",
              resume=False, checkpoint_every=100, preview_every=-1, preview_prompt="", fp8_base=False, block_swap=0):
        settings = node_settings(locals())
        m = as_model(model)
        clips = [check_motion_frames(image_batch(c, name), name)
                 for name, c in (("clip", clip), ("clip_2", clip_2), ("clip_3", clip_3)) if c is not None]
        title = f"motion LoRA ({spec_name(dispatch.motion_preset(m.bundle, preset), targets)}) loss"
        halves, all_losses = {}, []
        for expert, sub, run_name, resume_e, done in expert_runs(m.bundle, self.RUN_METHOD,
                                                                  (name or "").strip() or "motion_lora", resume):
            if done is not None:  # Wan 2.2 A14B resumed: this expert's run finished before
                halves[expert] = dispatch.load_lora(done, pairs=False)
                continue
            run = start_run(self.RUN_METHOD, run_name, "motion_lora", resume_e,
                            dict(settings, trainer="motion LoRA", expert=expert))
            progress = bridge.Progress(int(steps))
            pv = preview_options(progress, preview_every, preview_prompt, sub, run.previews)
            with node_run(run, progress, "Load LoRA"), training_mode():
                lf, losses = dispatch.train_motion_lora(
                    sub, clips, prompt, preset=preset, rank=int(rank), alpha=float(alpha), dropout=float(dropout),
                    lr=float(learning_rate), steps=int(steps), seed=int(seed), spatial_path=bool(spatial_path),
                    debiased_loss=bool(debiased_loss), gradient_checkpointing=bool(gradient_checkpointing),
                    targets=targets, blocks=blocks, height=int(height), width=int(width),
                    checkpoint_every=int(checkpoint_every), fp8_base=bool(fp8_base), block_swap=int(block_swap),
                    run=run, resume=resume_e, callback=progress, preview=pv,
                    patches=patches_for(m.patches, expert) if expert else m.patches)
                finish_lora_run(run, lf, losses, title if expert is None else f"{title}, {expert} expert")
            halves[expert] = lf
            all_losses += [dict(r, phase=expert) if expert else r for r in losses]
        from dual_adapter.plots import plot_loss_curve

        return (expert_result(halves, (name or "").strip() or "motion_lora"),
                plot_loss_curve(all_losses, title=title, smooth=20, group_by="phase" if len(halves) > 1 else None))


def spec_name(preset: str, targets: str = "") -> str:
    """The preset's name in the loss plot's title (a custom target list by the preset it equals, if any)."""
    from dual_adapter import lora as L

    return L.preset_name(L.resolve_targets(targets)) if preset == "custom" and targets.strip() else preset


class SaveLoRA:
    DESCRIPTION = ("Save a VIDEO_LORA (.safetensors with rank, alpha, targets and base-model metadata). A CogVideoX / Wan "
                   "LoRA in the diffusers format (loads with diffusers' CogVideoXPipeline.load_lora_weights and ComfyUI "
                   "CogVideoX tools) or core ComfyUI's; a U-Net LoRA as unet.<module>.lora_A/B.weight. A Wan 2.2 A14B LoRA (one per "
                   "expert) writes two files with one counter, <prefix>_high_noise_NNNNN_ and "
                   "<prefix>_low_noise_NNNNN_ (path: the first). Never overwrites: a counter is added to the name.")
    CATEGORY = CAT
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": (VIDEO_LORA, {"tooltip": "From Train Motion LoRA or Load LoRA."}),
            "filename_prefix": ("STRING", {"default": "motion_lora", "tooltip": "File name start; sub-folders allowed "
                                "(e.g. tap/guitar). A counter _00001_ is appended."}),
            "folder": (["models/loras", "output"], {"default": "models/loras", "tooltip": "models/loras: listed by Load "
                       "LoRA right away; output: ComfyUI's output folder (under loras/)."}),
            "precision": (["fp32", "bf16", "fp16"], {"default": "bf16", "tooltip": "Tensor dtype in the file "
                          "(bf16 halves the size; fp32 keeps it exact)."}),
        }, "optional": {
            "key_format": (["diffusers", "comfyui_native"], {"default": "diffusers", "tooltip": "CogVideoX / Wan. "
                           "diffusers: transformer.transformer_blocks.N.attn1.to_q.lora_A/B (diffusers, CogVideoX wrappers); "
                           "comfyui_native: diffusion_model.blocks.N.q.lora_up/lora_down + .alpha, what core "
                           "LoraLoaderModelOnly loads on a native CogVideoX MODEL. This pack reads both. U-Net LoRAs: "
                           "diffusers only."}),
        }}

    def save(self, lora, filename_prefix="motion_lora", folder="models/loras", precision="bf16",
             key_format="diffusers"):
        lf = _as_lora(lora)

        def reserve(prefix):
            if folder == "models/loras":
                return bridge.output_path(prefix, "safetensors", base=bridge.folder_dirs("loras")[0])
            return bridge.saved_output_path("loras", prefix)

        if isinstance(lf, PerExpert):  # Wan 2.2 A14B: one file per expert, one counter
            paths = reserve_pair(reserve, filename_prefix)
            dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            with contextlib.ExitStack() as held:
                for p in paths.values():
                    held.enter_context(reservation(p))
                written = dispatch.save_lora_pair(lf, paths, dtype=dt, key_format=key_format)
            text = [str(p) for p in written.values()]
            return {"ui": {"text": text}, "result": (text[0],)}
        return write_lora(lf, reserve(filename_prefix), precision, key_format)


def write_lora(lf, path, precision: str = "bf16", key_format: str = "diffusers") -> dict:
    """Write ``lf`` to the reserved ``path`` (a refused LoRA leaves no empty file behind); the Save node's output."""
    dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with reservation(path):
        path = dispatch.save_lora(lf, path, dtype=dt, key_format=key_format)
    return {"ui": {"text": [str(path)]}, "result": (str(path),)}


def lora_files(unet: bool | None = None) -> list[str]:
    """The ``.safetensors`` LoRAs of models/loras and the pack's output folders (:func:`bridge.list_files`); with
    ``unet`` only those for a U-Net (``True``) or for CogVideoX / Wan (``False``), told apart by their keys (header
    only)."""
    from dual_adapter.unet_motion import is_unet_lora_file

    out = []
    for f in bridge.list_files("loras"):
        if not f.lower().endswith(".safetensors"):
            continue
        try:
            path = bridge.resolve("loras", f)
        except DualAdapterError:
            continue
        if unet is None or is_unet_lora_file(path) == unet:
            out.append(f)
    return out


class LoadLoRA:
    DESCRIPTION = ("Load a LoRA of any backbone from models/loras or from what this pack's Save / Train nodes wrote in "
                   "the output folder (output/loras, the training run folders output/runs/..., older "
                   "output/lora_checkpoints and output/unet_lora). CogVideoX / Wan: files saved by this pack, diffusers / "
                   "peft LoRAs from other trainers (CogVideoX factory, finetrainers...) and kohya-style lora_unet_* "
                   "files (CogVideoX-Fun, also VideoX-Fun's lora_unet__ names), ComfyUI-native "
                   "diffusion_model.blocks.N.q files (.alpha read; .diff refused) and finetrainers files (alpha from "
                   "lora_config); text-encoder parts are not applied. U-Nets: unet.<module>.lora_A/B files (this "
                   "pack's, diffusers / peft). A file named for a Wan 2.2 A14B expert (X_high_noise / X_low_noise, with "
                   "or without a counter) loads with its twin when the twin is there, one LoRA per expert "
                   "(docs/wan.md). Apply LoRA checks that it fits the model.")
    CATEGORY = CAT
    RETURN_TYPES = (VIDEO_LORA,)
    RETURN_NAMES = ("lora",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora_name": (lora_files() or [""], {"tooltip": "A .safetensors LoRA in models/loras (sub-folders "
                          "included), or one this pack wrote in the output folder (output/loras/..., a training "
                          "run's final file or stopped run's checkpoint.safetensors in "
                          "output/runs/<method>/<name>_NNNNN_/)."}),
        }}

    def load(self, lora_name):
        if not lora_name:
            raise DualAdapterError("Load LoRA: no LoRA chosen (put .safetensors files in models/loras)")
        return (dispatch.load_lora(bridge.resolve("loras", lora_name)),)


class ApplyLoRA:
    DESCRIPTION = ("Add a LoRA to a video model at a strength. Returns a new model; the input model is unchanged "
                   "and the weights are shared. Chain several Apply LoRA nodes to stack LoRAs (their updates add up). "
                   "Strength 0 = the model without the LoRA. A LoRA of another backbone is refused. Wan 2.2 A14B: a "
                   "LoRA pair (Train Motion LoRA on A14B, Load LoRA of an X_high_noise / X_low_noise file) applies "
                   "each half to its expert; a one-file LoRA applies to both experts; a pair on a one-transformer "
                   "model is refused.")
    CATEGORY = CAT
    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (or another Apply node)."}),
            "lora": (VIDEO_LORA, {"tooltip": "From Load LoRA or Train Motion LoRA, made for this model's backbone."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.0001,
                                   "tooltip": "Multiplier of the LoRA update: 1 = as trained, 0 = off, negative subtracts. "
                                   "Fine steps (0.0001) reach 1/rank for LoRAs trained with alpha 1 (or use alpha_override)."}),
        }, "optional": {
            "alpha_override": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5, "tooltip":
                               "CogVideoX / Wan LoRAs. 0 = the file's alpha (scale alpha/rank). Set e.g. 1 for LoRAs "
                               "trained with alpha 1 but saved without it (DimensionX-style; the same as strength "
                               "1/rank)."}),
        }}

    def apply(self, model, lora, strength=1.0, alpha_override=0.0):
        m = as_model(model)
        lf = _as_lora(lora)
        patch = dispatch.lora_patch(lf, m.bundle, float(strength), alpha_override=float(alpha_override),
                                    existing=m.patches)
        return (m.with_patch(patch),)


class ApplyAppearanceHighway:
    DESCRIPTION = ("Appearance highway (AH), the SMA authors' inference change on ZeroScope/ModelScope (UNet3D only): "
                   "up block 1 takes its skip connections from the spatial-attention outputs of down block 2 (so "
                   "appearance bypasses the temporal motion LoRA), with their FreeU-style scaling (s1 1.1 by default). "
                   "Off = the plain model.")
    CATEGORY = CAT
    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        f = {"min": 0.0, "max": 3.0, "step": 0.05}
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "A ZeroScope / ModelScope (UNet3D) model; others are refused."}),
            "enabled": ("BOOLEAN", {"default": True, "tooltip": "Off passes the model through unchanged."}),
            "freeu": ("BOOLEAN", {"default": True, "tooltip": "Apply the authors' FreeU-style scaling with s1, s2, b1, b2 "
                      "(their inference always does). Off = skip relocation only."}),
            "s1": ("FLOAT", {"default": 1.1, **f, "tooltip": "Skip scale where the up path has 1280 channels (ZeroScope)."}),
            "s2": ("FLOAT", {"default": 1.0, **f, "tooltip": "Skip scale where it has 640 channels."}),
            "b1": ("FLOAT", {"default": 1.0, **f, "tooltip": "Backbone scale on the first half of the 1280 channels."}),
            "b2": ("FLOAT", {"default": 1.0, **f, "tooltip": "Backbone scale on the first half of the 640 channels."}),
        }}

    def apply(self, model, enabled=True, freeu=True, s1=1.1, s2=1.0, b1=1.0, b2=1.0):
        m = as_model(model)
        if not enabled:
            return (m,)
        as_model(m, method="appearance highway")
        return (m.with_patch(UM.AppearanceHighway(freeu=(s1, s2, b1, b2) if freeu else None)),)


NODE_CLASS_MAPPINGS = {
    "DualAdapterTrainMotionLoRA": TrainMotionLoRA,
    "DualAdapterSaveLoRA": SaveLoRA,
    "DualAdapterLoadLoRA": LoadLoRA,
    "DualAdapterApplyLoRA": ApplyLoRA,
    "DualAdapterApplyAH": ApplyAppearanceHighway,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterTrainMotionLoRA": "Train Motion LoRA (TAP)",
    "DualAdapterSaveLoRA": "Save LoRA",
    "DualAdapterLoadLoRA": "Load LoRA",
    "DualAdapterApplyLoRA": "Apply LoRA",
    "DualAdapterApplyAH": "Apply Appearance Highway (AH, ZeroScope)",
}
