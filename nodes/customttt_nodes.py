"""CustomTTT nodes: Prompt Influence (which blocks carry a concept), Train LoRA with Block Selection and TTT Merge
(appearance LoRA + motion LoRA -> one LoRA by test-time training), on any VIDEO_MODEL CustomTTT runs on (CogVideoX,
Wan: transformer blocks; AnimateDiff: U-Net text layers, with the published recipe's settings as defaults). The
backbone decides, through :mod:`dual_adapter.dispatch`; library: :mod:`dual_adapter.customttt`."""
from __future__ import annotations

import contextlib

from dual_adapter import customttt as C
from dual_adapter import dispatch
from dual_adapter.errors import DualAdapterError
from dual_adapter.media import check_motion_frames
from dual_adapter.lora import LoraFile
from dual_adapter.seeds import SEED_MAX
from dual_adapter.limits import (MAX_BLOCKS, MAX_CFG, MAX_FRAMES, MAX_RANK, MAX_SAMPLING_STEPS, MAX_SIDE,
                                 MAX_TRAIN_STEPS, MAX_TTT_STEPS, MIN_CFG)

from . import bridge
from .common import (VIDEO_LORA, VIDEO_MODEL, as_model, finish_lora_run, image_batch, node_run, node_settings,
                     preview_inputs, preview_options, run_inputs, start_run, training_mode)

CAT = "DualAdapter/CustomTTT"


def _as_lora(x, name: str) -> LoraFile:
    if not isinstance(x, LoraFile):
        raise DualAdapterError(f"{name}: expected a VIDEO_LORA (from Load LoRA or a Train LoRA node), got "
                               f"{type(x).__name__}")
    return x


def _ints(text: str, name: str) -> list[int]:
    try:
        out = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise DualAdapterError(f"{name} {text!r}: expected comma-separated integers, e.g. 250,500,750") from None
    if not out:
        raise DualAdapterError(f"{name}: give at least one integer")
    return out


class _ProgressOnce:
    """bridge.Progress created at the first call (the total is known only then)."""

    def __init__(self):
        self.bar = None

    def show_preview(self, step, frames):
        if self.bar is not None:
            self.bar.show_preview(step, frames)

    def on_cancel(self, kept, exact=None):
        """:meth:`bridge.Progress.on_cancel` once the bar exists (a Cancel during the teachers keeps nothing)."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            try:
                yield
            except bridge.interrupt_exception_types():
                if self.bar is not None:
                    with self.bar.on_cancel(kept, exact):
                        raise
                raise
        return ctx()

    def __call__(self, step, total, info=None):
        if self.bar is None:
            self.bar = bridge.Progress(total)
        self.bar(step, total, info)


class DualAdapterPromptInfluence:
    DESCRIPTION = ("CustomTTT prompt-influence analysis: for each block (or group of blocks; a transformer block on "
                   "CogVideoX / Wan, a U-Net block where text enters on AnimateDiff, 0-based) the concept "
                   "prompt is injected there alone (that block's text input comes from the concept prompt, every "
                   "other block's from the neutral prompt; on Wan the text a block's cross-attention reads) and the score is how far this moves the prediction toward "
                   "the full-concept prediction (projection: 1 = all the way, 0 = no effect). Outputs a ranked table, "
                   "a bar chart and the recommended blocks for an appearance LoRA and a motion LoRA (feed them to a "
                   "Train LoRA node's 'blocks').")
    CATEGORY = CAT
    RETURN_TYPES = ("STRING", "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("table", "plot", "appearance_blocks", "motion_blocks")
    OUTPUT_TOOLTIPS = ("ranked table of scores per block group and concept",
                       "bar chart of the scores (recommended groups outlined)",
                       "recommended appearance blocks, e.g. '2,6' (empty without an appearance prompt)",
                       "recommended motion blocks, e.g. '2,5' (empty without a motion prompt)")
    FUNCTION = "analyse"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (CogVideoX, Wan or an AnimateDiff U-Net; LoRAs applied to it stay on during the analysis)."}),
            "appearance_prompt": ("STRING", {"multiline": True, "default": "a photo of a dog *",
                                             "tooltip": "The appearance concept (subject) prompt. Empty = skip."}),
            "motion_prompt": ("STRING", {"multiline": True, "default": "a car is turning on a road",
                                         "tooltip": "The motion concept prompt. Empty = skip."}),
            "neutral_prompt": ("STRING", {"multiline": True, "default": "",
                                          "tooltip": "What every non-injected block sees (default: the empty prompt)."}),
            "group_size": ("INT", {"default": 1, "min": 1, "max": MAX_BLOCKS, "tooltip": "Contiguous blocks per scored group "
                               "(1 = every block alone; e.g. 5 on 2B = 6 groups, fewer model calls)."}),
            "top_k": ("INT", {"default": 2, "min": 1, "max": MAX_BLOCKS, "tooltip": "Groups per recommended block set "
                          "(the authors use 2 layers)."}),
            "timesteps": ("STRING", {"default": "250,500,750", "tooltip": "Timesteps (0..999) of the noisy inputs the "
                                     "predictions are compared at."}),
            "seeds": ("STRING", {"default": "0,1", "tooltip": "Noise seeds; draws = seeds x timesteps. Same seeds give "
                                 "the same scores."}),
            "space": (list(C.SPACES), {"default": "x0", "tooltip": "Compare clean-latent predictions (x0) or the raw "
                                       "model output (v: the v-prediction on CogVideoX, the flow velocity on Wan, the "
                                       "noise prediction on AnimateDiff)."}),
        }, "optional": {
            "reference": ("LATENT", {"tooltip": "Optional clean latent (e.g. an encoded subject photo or clip, from "
                                     "Encode (VAE) with the same model) to noise instead of random latents."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES, "tooltip": "Video frames without a reference "
                               "(4k+1 on CogVideoX / Wan). 0 = the model's (CogVideoX 49, AnimateDiff 16; tiny 9, "
                               "tiny-animatediff 2). Fewer frames = faster analysis."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels, 0 = model default."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels, 0 = model default."}),
        }}

    def analyse(self, model, appearance_prompt, motion_prompt, neutral_prompt="", group_size=1, top_k=2,
                timesteps="250,500,750", seeds="0,1", space="x0", reference=None, frames=0, height=0, width=0):
        m = as_model(model, method="CustomTTT")
        concepts = {k: v for k, v in (("appearance", appearance_prompt), ("motion", motion_prompt)) if v and v.strip()}
        if not concepts:
            raise DualAdapterError("Prompt Influence: give an appearance_prompt and/or a motion_prompt")
        lat = dispatch.from_latent(m, reference, "reference").clone() if reference is not None else None
        res = C.prompt_influence(m.bundle, concepts, neutral_prompt or "", group_size=int(group_size),
                                 timesteps=_ints(timesteps, "timesteps"), seeds=_ints(seeds, "seeds"), latents=lat,
                                 space=space, top_k=int(top_k), num_frames=frames or None, height=height or None,
                                 width=width or None, patches=m.patches, callback=_ProgressOnce())
        table = res.table()
        blocks = {c: ",".join(map(str, res.recommended.get(c, []))) for c in ("appearance", "motion")}
        return {"ui": {"text": [table]}, "result": (table, res.plot(), blocks["appearance"], blocks["motion"])}


class DualAdapterTTTMerge:
    DESCRIPTION = ("CustomTTT test-time-training merge: the appearance teacher (model + appearance LoRA, appearance "
                   "prompt) and the motion teacher (model + motion LoRA, motion prompt) each denoise f steps from "
                   "noise to a reference latent; the student (model + both LoRAs, all LoRA weights trainable) learns "
                   "to denoise both references under the combined prompt (L = w_a L_appearance + w_m L_motion). "
                   "Output: one merged LoRA (rank-concatenated where both LoRAs touch a layer) for Apply LoRA / "
                   "Save LoRA. On CogVideoX / Wan and on AnimateDiff (the published recipe's settings are the defaults "
                   "there: learning_rate, teacher_cfg and optimizer left at 0 / auto). Progress per step, the loss curve and validation previews of the student on the node; each "
                   "run (steps > 0) gets a folder output/runs/customttt/<name>_NNNNN_/ (the merged LoRA, losses, loss "
                   "plot, previews); Cancel keeps the last checkpoint there and 'resume' continues it.")
    CATEGORY = CAT
    RETURN_TYPES = ("VIDEO_LORA", "IMAGE")
    RETURN_NAMES = ("lora", "loss_plot")
    OUTPUT_TOOLTIPS = ("the merged LoRA (diffusers format)", "combined TTT loss per step (and its two terms)")
    FUNCTION = "merge"
    RUN_METHOD = "customttt"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (CogVideoX, Wan or AnimateDiff), without the two "
                                    "LoRAs applied."}),
            "appearance_lora": ("VIDEO_LORA", {"tooltip": "The appearance (subject) LoRA, e.g. trained on photos on "
                                "the appearance blocks."}),
            "appearance_prompt": ("STRING", {"multiline": True, "default": "a photo of a dog *",
                                             "tooltip": "The prompt the appearance LoRA was trained with (teacher)."}),
            "motion_lora": ("VIDEO_LORA", {"tooltip": "The motion LoRA, e.g. trained on clips on the motion blocks."}),
            "motion_prompt": ("STRING", {"multiline": True, "default": "a car is turning on a road",
                                         "tooltip": "The prompt the motion LoRA was trained with (teacher)."}),
            "prompt": ("STRING", {"multiline": True, "default": "a dog * is turning on a road",
                                  "tooltip": "The combined prompt the student learns under (and that you sample with)."}),
            "steps": ("INT", {"default": 30, "min": 0, "max": MAX_TTT_STEPS, "tooltip": "TTT steps (30 in the paper). 0 = the "
                              "exact merge of the two LoRAs, no training."}),
            "teacher_steps": ("INT", {"default": 5, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "f: sampler steps each teacher "
                                      "runs from noise to its reference (5 in the paper)."}),
            "teacher_cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": MAX_CFG, "step": 0.1, "tooltip": "Teachers' "
                                      f"guidance scale (>= {MIN_CFG:g}). 0 = the backbone's: 6 on CogVideoX / Wan, 9 on "
                                      "AnimateDiff (the authors')."}),
            "learning_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                        "tooltip": "0 = the backbone's: CogVideoX / Wan 1e-5 with AdamW, 1e-6 with "
                                        "Lion; AnimateDiff 1e-6 (the authors')."}),
            "optimizer": (["auto", "adamw", "lion"], {"default": "auto", "tooltip": "auto = the backbone's: adamw on "
                          "CogVideoX / Wan; on AnimateDiff the authors' lion when lion-pytorch is installed, else "
                          "adamw (a console line says so). adamw: weight decay 1e-2 (AnimateDiff 0.1); lion: weight "
                          "decay 0.1, needs the lion-pytorch package."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds the teachers' noise and the "
                             "re-noising draws; the same seed repeats the run."}),
        }, "optional": {
            "teacher_schedule": ("INT", {"default": 25, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "The f teacher steps are the "
                                         "first f of a schedule this long (DDIM 25 in the paper)."}),
            "reference": (list(C.REFERENCES), {"default": "x0_pred", "tooltip": "Student target. x0_pred (default): "
                          "the teachers' clean-latent prediction at step f. z_f_renoised: the teacher latent after f "
                          "steps (still mostly noise, t_f ~ 799 for 5 of 25), re-noised above t_f; the student's DDIM "
                          "step back to t_f must land on it. z_f_as_x0: that latent used as if it were clean (the "
                          "literal reading; the old default 'z_f')."}),
            "renoise_min": ("INT", {"default": 0, "min": 0, "max": 999, "tooltip": "Lowest re-noising timestep."}),
            "renoise_max": ("INT", {"default": 1000, "min": 1, "max": 1000, "tooltip": "Re-noising timesteps are drawn "
                                    "from [renoise_min, renoise_max)."}),
            "w_appearance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                       "tooltip": "Weight of the appearance-preservation loss."}),
            "w_motion": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                   "tooltip": "Weight of the motion-preservation loss."}),
            "regenerate_references": ("BOOLEAN", {"default": False, "tooltip": "Re-run both teachers with new noise "
                                      "every step (slower; default: references computed once)."}),
            "shared_teacher_noise": ("BOOLEAN", {"default": True, "tooltip": "CogVideoX / Wan: both teachers start "
                                     "from the same noise. Not read on AnimateDiff (the recipe: each teacher its own "
                                     "noise, seeds seed and seed + 1)."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Teachers' negative prompt."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES, "tooltip": "Teacher video frames (4k+1 on "
                               "CogVideoX / Wan). 0 = the model's."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels, 0 = model default."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels, 0 = model default."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "CogVideoX / Wan: less VRAM, about 30% "
                                       "slower. Not read on AnimateDiff (the recipe trains without)."}),
            **run_inputs("customttt", checkpoint_every=10, method="customttt"),
            **preview_inputs(),
        }}

    def merge(self, model, appearance_lora, appearance_prompt, motion_lora, motion_prompt, prompt, steps=30,
              teacher_steps=5, teacher_cfg=0.0, learning_rate=0.0, optimizer="auto", seed=0, teacher_schedule=25,
              reference="x0_pred", renoise_min=0, renoise_max=1000, w_appearance=1.0, w_motion=1.0,
              regenerate_references=False, shared_teacher_noise=True, negative_prompt="", frames=0, height=0,
              width=0, gradient_checkpointing=True, name="customttt", resume=False, checkpoint_every=10,
              preview_every=-1, preview_prompt=""):
        settings = node_settings(locals())
        m = as_model(model, method="CustomTTT")
        a = _as_lora(appearance_lora, "appearance_lora")
        mo = _as_lora(motion_lora, "motion_lora")
        cfg = dispatch.ttt_config(m, steps=int(steps), teacher_steps=int(teacher_steps),
                                  teacher_schedule=int(teacher_schedule), teacher_cfg=float(teacher_cfg),
                                  lr=float(learning_rate), optimizer=optimizer, seed=int(seed), reference=reference,
                                  w_appearance=float(w_appearance), w_motion=float(w_motion), num_frames=frames,
                                  height=height, width=width, shared_teacher_noise=bool(shared_teacher_noise),
                                  gradient_checkpointing=bool(gradient_checkpointing),
                                  checkpoint_every=int(checkpoint_every), negative_prompt=negative_prompt or "",
                                  renoise_timesteps=(int(renoise_min), int(renoise_max)),
                                  regenerate_references=bool(regenerate_references))
        cfg.validate()
        bar = _ProgressOnce()
        run = start_run(self.RUN_METHOD, name, "customttt", resume, settings) if steps else None
        pv = preview_options(bar, preview_every, preview_prompt, m.bundle, run.previews) if steps else None
        with node_run(run, bar, "Load LoRA") if run else contextlib.nullcontext(), training_mode():
            res = C.ttt_merge(m.bundle, a, mo, appearance_prompt=appearance_prompt, motion_prompt=motion_prompt,
                              prompt=prompt, config=cfg, patches=m.patches, callback=bar,
                              checkpoint_path=run.checkpoint if run else None, resume=bool(resume) and bool(steps),
                              preview=pv)
            if run is not None:
                finish_lora_run(run, res.lora, res.train.losses, "TTT merge loss", res.train.completed)
        from dual_adapter.plots import plot_loss_curve

        recs = [dict(step=r["step"], loss=r[k], term=k.replace("loss_", "") if k != "loss" else "combined")
                for r in res.train.losses for k in ("loss", "loss_appearance", "loss_motion") if k in r]
        if recs:
            plot = plot_loss_curve(recs, title="TTT merge loss", group_by="term")
        else:
            plot = plot_loss_curve([{"step": 0, "loss": 0.0}], title="TTT merge: 0 steps (exact merge)")
        return (res.lora, plot)


class DualAdapterTrainSelectiveLoRA:
    DESCRIPTION = ("Train a CustomTTT layer-selective LoRA on the chosen blocks only: an appearance LoRA on subject "
                   "photos (each a 1-frame video) or a motion LoRA on a clip. Pick the blocks with Prompt Influence "
                   "(its appearance_blocks / motion_blocks outputs connect to 'blocks'). On CogVideoX / Wan a block "
                   "is a transformer block; on AnimateDiff a U-Net text layer, trained as published (appearance: the "
                   "spatial attention with the motion modules bypassed; motion: the motion modules' attention; the "
                   "authors' layers, learning rates and optimiser are the defaults there). Progress per step, the "
                   "loss curve and validation previews on the node; each run gets a folder "
                   "output/runs/lora/<name>_NNNNN_/ (the final LoRA, losses, loss plot, previews); Cancel keeps the last "
                   "checkpoint there and 'resume' continues it.")
    CATEGORY = "DualAdapter/CustomTTT"
    RETURN_TYPES = (VIDEO_LORA, "IMAGE")
    RETURN_NAMES = ("lora", "loss_plot")
    FUNCTION = "train"
    RUN_METHOD = "lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model (CogVideoX, Wan or AnimateDiff)."}),
            "kind": (["appearance", "motion"], {"default": "appearance", "tooltip": "appearance: trains on 'photos' "
                     "(1-frame videos); motion: trains on 'clip'."}),
            "prompt": ("STRING", {"multiline": True, "default": "a photo of a dog *",
                                  "tooltip": "Training prompt (the concept: subject or motion)."}),
            "blocks": ("STRING", {"default": "", "tooltip": "Blocks that get the LoRA, e.g. '0,2' or '0-5,12' (from "
                       "Prompt Influence; on AnimateDiff U-Net text layers, e.g. '2,6'). Empty = the backbone's: "
                       "every block on CogVideoX / Wan; on AnimateDiff the authors' layers (appearance 2,6, "
                       "motion 2,5)."}),
            "preset": (["full", "tap", "k_out"], {"default": "full", "tooltip": "Attention projections that get the "
                       "LoRA: full = q, k, v, out (CustomTTT); tap = q, k only (TAP, for motion). On AnimateDiff an "
                       "appearance LoRA is full only."}),
            "rank": ("INT", {"default": 32, "min": 1, "max": MAX_RANK, "tooltip": "LoRA rank (32 in the paper)."}),
            "learning_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                        "tooltip": "0 = the default for the kind and backbone: CogVideoX / Wan "
                                        "(AdamW) 1e-4 appearance, 5e-4 motion; AnimateDiff 1e-5 appearance, 5e-5 "
                                        "motion (the authors', Lion when lion-pytorch is installed, else AdamW)."}),
            "steps": ("INT", {"default": 500, "min": 1, "max": MAX_TRAIN_STEPS, "tooltip": "Optimiser steps (500 in the paper)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seeds the LoRA start and every "
                             "step's noise and timestep."}),
        }, "optional": {
            "photos": ("IMAGE", {"tooltip": "Subject photos [N, H, W, 3] for kind=appearance."}),
            "clip": ("IMAGE", {"tooltip": "Motion clip frames [F, H, W, 3] for kind=motion (4k+1 on CogVideoX / "
                     "Wan); a still (identical frames) is refused."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "Pixels the photos / "
                       "clip are resized to. 0 = CogVideoX / Wan: the model's (480; tiny 64); AnimateDiff: their own "
                       "size (one the model takes)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16, "tooltip": "As height (720; tiny "
                      "96)."}),
            **run_inputs("selective_lora"),
            **preview_inputs(),
        }}

    def train(self, model, kind, prompt, blocks="", preset="full", rank=32, learning_rate=0.0, steps=500, seed=0,
              photos=None, clip=None, height=0, width=0, name="selective_lora", resume=False, checkpoint_every=100,
              preview_every=-1, preview_prompt="", optimizer="auto"):
        """``optimizer`` (not an input: ``auto`` = the backbone's, :func:`dual_adapter.dispatch.train_selective_lora`)
        carries the older AnimateDiff nodes' setting."""
        settings = node_settings(locals())
        from dual_adapter.plots import plot_loss_curve

        m = as_model(model, method="CustomTTT")
        if kind == "appearance":
            if photos is None:
                raise DualAdapterError("Train LoRA (blocks): kind=appearance needs 'photos' (subject photos)")
            x = image_batch(photos, "photos")
            data = dict(photos=[x[i] for i in range(x.shape[0])])
        else:
            if clip is None:
                raise DualAdapterError("Train LoRA (blocks): kind=motion needs 'clip' (motion frames)")
            data = dict(clips=[check_motion_frames(image_batch(clip, "clip"), "clip")])
        run = start_run(self.RUN_METHOD, name, "selective_lora", resume, dict(settings, trainer="selective LoRA"))
        bar = bridge.Progress(int(steps))
        pv = preview_options(bar, preview_every, preview_prompt, m.bundle, run.previews)
        title = f"{kind} LoRA (blocks {blocks or 'default'}) loss"
        with node_run(run, bar, "Load LoRA"), training_mode():
            lf, losses, done = dispatch.train_selective_lora(
                m, kind, prompt, blocks=blocks, preset=preset, rank=int(rank), lr=float(learning_rate),
                steps=int(steps), seed=int(seed), optimizer=optimizer, height=height or None, width=width or None,
                checkpoint_every=int(checkpoint_every), run=run, resume=bool(resume), callback=bar, preview=pv,
                patches=m.patches, **data)
            finish_lora_run(run, lf, losses, title, done)
        return (lf, plot_loss_curve(losses, title=title, smooth=20))


NODE_CLASS_MAPPINGS = {
    "DualAdapterTrainSelectiveLoRA": DualAdapterTrainSelectiveLoRA,
    "DualAdapterPromptInfluence": DualAdapterPromptInfluence,
    "DualAdapterTTTMerge": DualAdapterTTTMerge,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterTrainSelectiveLoRA": "Train LoRA with Block Selection (CustomTTT)",
    "DualAdapterPromptInfluence": "Prompt Influence (CustomTTT)",
    "DualAdapterTTTMerge": "TTT Merge (CustomTTT)",
}
