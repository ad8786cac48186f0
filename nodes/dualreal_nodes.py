"""ComfyUI nodes for DualReal: Train, Save, Load, Apply, StageBlender Plot.

Thin: validate and convert ComfyUI types, call :mod:`dual_adapter.dualreal`, report progress.
"""
from __future__ import annotations

import contextlib
import json
import logging

import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.io import reservation
from dual_adapter.media import check_motion_frames
from dual_adapter.seeds import SEED_MAX
from dual_adapter.limits import (MAX_ADAPTER_HIDDEN, MAX_CFG, MAX_FRAMES, MAX_GROUPS, MAX_SAMPLING_STEPS,
                                 MAX_TRAIN_STEPS, MIN_CFG)

from . import bridge
from dual_adapter.experts import PerExpert, pair_files, per_expert_patch, reserve_pair

from .common import (NAME_TOOLTIP, RESUME_TOOLTIP, VIDEO_MODEL, as_model, expert_result, expert_runs, image_batch,
                     node_run, node_settings, preview_inputs, preview_options, start_run, training_mode)

log = logging.getLogger(__name__)

CATEGORY = "DualAdapter/DualReal"


def _bundle(model):
    return as_model(model, method="dualreal").bundle


def _split_clips(frames: torch.Tensor, frames_per_clip: int) -> list[torch.Tensor]:
    if frames_per_clip <= 0 or frames_per_clip >= frames.shape[0]:
        return [frames]
    n = frames.shape[0] // frames_per_clip
    if n * frames_per_clip != frames.shape[0]:
        raise DualAdapterError(f"motion has {frames.shape[0]} frames, not a multiple of frames_per_clip="
                               f"{frames_per_clip}")
    return [frames[i * frames_per_clip: (i + 1) * frames_per_clip] for i in range(n)]


class _ComfyClipVisionEncoder:
    """Adapter from ComfyUI's CLIP_VISION (``encode_image(image) -> CLIP_VISION_OUTPUT``) to a callable."""

    def __init__(self, clip_vision):
        self.cv = clip_vision
        self.name = "comfy:clip_vision"

    def __call__(self, images: torch.Tensor):
        return self.cv.encode_image(images)


def _builtin_encoder(choice: str, model_name: str):
    """Train DualReal's reference encoder without a CLIP_VISION: ``choice`` "auto" (the model's built-in one,
    :func:`dual_adapter.reference.builtin_encoder_name`), "mini", "tiny" or "none" -> an encoder or None."""
    from dual_adapter.reference import builtin_encoder_name, load_reference_encoder

    choice = str(choice or "auto")
    if choice not in ("auto", "mini", "tiny", "none"):
        raise DualAdapterError(f"reference_encoder must be auto, mini, tiny or none, got {choice!r}")
    spec = builtin_encoder_name(model_name) if choice == "auto" else None if choice == "none" else choice
    if spec is None:
        return None
    log.info("Train DualReal: reference encoder %r (built in; connect clip_vision for CLIP ViT-H/14)", spec)
    return load_reference_encoder(spec)


class DualRealTrain:
    DESCRIPTION = ("Train DualReal (joint identity + motion adapters with the StageBlender controller) on "
                   "subject photos and motion clip frames. Each step trains either the identity adapters (on a "
                   "photo, identity prompt) or the motion adapters (on a clip, motion prompt); the controller "
                   "trains in both. Each run gets a folder output/runs/dualreal/<name>_NNNNN_/ (config.json, "
                   "checkpoint.safetensors and state.safetensors while it trains, kept if you cancel the queue, "
                   "losses.jsonl, loss.png, previews/); a finished run saves <name>.safetensors there and removes its "
                   "checkpoint and state. Load DualReal lists both. Returns the adapters and a loss curve. On Wan 2.2 "
                   "A14B one adapter set per expert is trained, each on the timesteps its expert serves, in runs "
                   "<name>_high_noise and <name>_low_noise (steps each); the output carries both.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = ("DUALREAL_ADAPTERS", "IMAGE")
    RETURN_NAMES = ("adapters", "loss_curve")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (VIDEO_MODEL, {"tooltip": "CogVideoX or Wan from Load Video Model (its base weights are trained "
                                                         "against; they are never changed)."}),
                "subject": ("IMAGE", {"tooltip": "Subject photos (one or more; any size, resized and centre-cropped). "
                                                 "Each photo is a 1-frame video."}),
                "identity_prompt": ("STRING", {"default": "dog *", "multiline": False,
                                               "tooltip": "Prompt of the identity phase, with a rare token for the "
                                                          "subject (e.g. 'dog *')."}),
                "motion": ("IMAGE", {"tooltip": "Frames of one or more motion clips (e.g. from a Load Video node; a still is refused). "
                                                "Several clips: concatenate them and set frames_per_clip."}),
                "motion_prompt": ("STRING", {"default": "a person is playing guitar", "multiline": False,
                                             "tooltip": "Prompt of the motion phase (describes the motion)."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": MAX_TRAIN_STEPS,
                                  "tooltip": "Optimiser steps (the authors use 1000)."}),
                "lr": ("FLOAT", {"default": 1e-3, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                 "tooltip": "Peak learning rate (AdamW, cosine with restarts after warm-up)."}),
                "motion_ratio": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                           "tooltip": "Probability that a step trains motion (else identity)."}),
                "hidden_width": ("INT", {"default": 64, "min": 1, "max": MAX_ADAPTER_HIDDEN,
                                         "tooltip": "Adapter bottleneck width (64 in the paper)."}),
                "groups": ("INT", {"default": 0, "min": 0, "max": MAX_GROUPS,
                                   "tooltip": "StageBlender weight groups: blocks are split into this many "
                                              "contiguous groups. 0 = the paper's 7, or one per block on a model "
                                              "with fewer blocks (the built-in mini has 4); 1 = no grouping."}),
                "form": (["official", "zero_init"], {"default": "official",
                                                      "tooltip": "official: adapters add their input back, as the "
                                                                 "authors' code (needed for their checkpoints). "
                                                                 "zero_init: an untrained adapter changes nothing."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                                 "tooltip": "Seeds every step's batch, noise and timestep."}),
                "name": ("STRING", {"default": "dualreal",
                                    "tooltip": NAME_TOOLTIP.format(method="dualreal", load="Load DualReal")}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "Reference encoder (clip_vision_h, ViT-H/14, 1024-d), as "
                                                           "the authors train. When connected it is used; else "
                                                           "reference_encoder decides."}),
                "reference_encoder": (["auto", "mini", "tiny", "none"],
                                      {"default": "auto",
                                       "tooltip": "Reference encoder when clip_vision is not connected. auto: the one "
                                                  "built in for the model (mini: 'mini', a pixel-statistics stand-in "
                                                  "for the sprite world; the tiny models: the random tiny CLIP; a real "
                                                  "CogVideoX: none). none: the motion adapters' W_cond term stays "
                                                  "untrained (warned). The adapters record the choice, and Apply "
                                                  "DualReal uses it for reference_image."}),
                "frames_per_clip": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES,
                                            "tooltip": "Split 'motion' into clips of this many frames (0 = one clip)."}),
                "use_controller": ("BOOLEAN", {"default": True,
                                               "tooltip": "Off = ablation with fixed weights w_id = w_mo = 0.1."}),
                "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": MAX_TRAIN_STEPS,
                                             "tooltip": "Write a checkpoint every N steps (0 = only at the end/stop)."}),
                "resume": ("BOOLEAN", {"default": False, "tooltip": RESUME_TOOLTIP.format(method="dualreal")}),
                "warmup_steps": ("INT", {"default": 200, "min": 0, "max": MAX_TRAIN_STEPS,
                                         "tooltip": "Linear warm-up steps of the learning rate (200)."}),
                **preview_inputs(),
                "fp8_base": ("BOOLEAN", {"default": False, "tooltip": "Store the frozen base Linear weights in fp8 (e4m3, a scale per row) for training, upcast per layer: they take half their bf16 memory; the forward differs from bf16 by fp8 rounding of the base weights. The loaded model is not changed."}),
                "block_swap": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "Keep the frozen weights of the first N transformer blocks on the CPU during training and copy each to the GPU just before it runs, the next one ahead (0 = off). Bit-identical results; saves N - 2 blocks of weights with gradient checkpointing; costs two host-to-device copies of those blocks per step (docs/performance.md)."}),
            },
        }

    def train(self, model, subject, identity_prompt, motion, motion_prompt, steps, lr, motion_ratio, hidden_width,
              groups, form, seed, name, clip_vision=None, frames_per_clip=0, use_controller=True,
              checkpoint_every=100, resume=False, warmup_steps=200, reference_encoder="auto", preview_every=-1,
              preview_prompt="", fp8_base=False, block_swap=0):
        settings = node_settings(locals())
        from dual_adapter.dualreal import DualRealOptions, train_dualreal
        from dual_adapter.plots import plot_loss_curve
        from dual_adapter.training import TrainConfig

        bundle = _bundle(model)
        if getattr(model, "patches", ()):
            log.warning("Train DualReal trains against the base model; the %d patch(es) on the input model are "
                        "not used during training", len(model.patches))
        name = (name or "dualreal").strip().replace("\\", "/").split("/")[-1] or "dualreal"
        from dual_adapter.dualreal import finalize_run, load_any

        photos = list(image_batch(subject, "subject"))
        clips = _split_clips(image_batch(motion, "motion"), int(frames_per_clip))
        for k, c in enumerate(clips):
            check_motion_frames(c, "motion" if len(clips) == 1 else f"motion clip {k + 1}")
        options = DualRealOptions(hidden=int(hidden_width), groups=int(groups), form=form,
                                  controller=bool(use_controller), motion_ratio=float(motion_ratio))
        halves, losses = {}, []
        # Wan 2.2 A14B: one adapter set per expert, each in its own run (<name>_high_noise, <name>_low_noise)
        for expert, sub, run_name, resume_e, done in expert_runs(bundle, "dualreal", name, resume):
            if done is not None:  # resumed: this expert's run finished before
                halves[expert] = load_any(done)
                continue
            # the name is checked and a new run's folder reserved before any work (a concurrent run takes the next
            # counter); a run that never trained leaves no folder
            run = start_run("dualreal", run_name, "dualreal", resume_e, dict(settings, expert=expert))
            bar = bridge.Progress(int(steps))
            with node_run(run, bar, "Load DualReal"), training_mode():
                encoder = (_ComfyClipVisionEncoder(clip_vision) if clip_vision is not None
                           else _builtin_encoder(reference_encoder, bundle.name))
                train = TrainConfig(steps=int(steps), lr=float(lr), seed=int(seed),
                                    checkpoint_every=int(checkpoint_every), warmup_steps=int(warmup_steps),
                                    fp8_base=bool(fp8_base), block_swap=int(block_swap))
                log.info("Train DualReal: run folder %s", run.path)
                res = train_dualreal(sub, photos, identity_prompt, clips, motion_prompt, reference_encoder=encoder,
                                     options=options, train=train, callback=_log_progress(bar, run_name),
                                     out=run.final, resume=resume_e,
                                     preview=preview_options(bar, preview_every, preview_prompt, sub, run.previews),
                                     run=run)
                path = finalize_run(res, run.final, run)  # the final file replaces the checkpoint and state, as the CLI
                log.info("Train DualReal: wrote %s", path)
            halves[expert] = res.adapters
            losses += [dict(r, phase=f"{expert} {r.get('phase', '')}".strip()) if expert else r for r in res.losses]
        curve = plot_loss_curve(losses, title=f"DualReal {name}", group_by="phase",
                                smooth=max(1, min(25, len(losses) // 10)))
        return (expert_result(halves, name), curve)


def _log_progress(bar, name: str):
    """Train DualReal's step callback: a log line every 1/50 of the run, the node's bar."""
    def cb(step, total, info):
        if "loss" in info:
            if step % max(1, total // 50) == 0 or step == total:
                log.info("DualReal %s step %d/%d loss %.4f (%s)", name, step, total, info["loss"],
                         info.get("phase", ""))
            bar(step, total, info)  # the bar, and the shared progress line under the node
        else:
            bridge.throw_if_interrupted()
    return cb


def _check_adapters(adapters):
    """A DUALREAL_ADAPTERS input: one adapter set, or a Wan 2.2 A14B pair (one per expert)."""
    from dual_adapter.dualreal import DualRealAdapterSet

    items = adapters.by_name.values() if isinstance(adapters, PerExpert) else [adapters]
    if not all(isinstance(a, DualRealAdapterSet) for a in items):
        raise DualAdapterError(f"adapters must be DUALREAL_ADAPTERS, got {type(adapters).__name__}")
    return adapters


class DualRealSave:
    DESCRIPTION = ("Save DualReal adapters + controller as a .safetensors file (with metadata: form, widths, groups, "
                   "base-model fingerprint, steps, prompts) in output/dualreal/, never overwriting; Load DualReal "
                   "lists it in the next queue. A Wan 2.2 A14B pair writes two files with one counter, "
                   "<prefix>_high_noise_NNNNN_ and <prefix>_low_noise_NNNNN_.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapters": ("DUALREAL_ADAPTERS", {"tooltip": "Adapters from Train DualReal or Load DualReal."}),
            "filename_prefix": ("STRING", {"default": "dualreal",
                                           "tooltip": "File name in output/dualreal/ (sub-folders allowed); a counter "
                                                      "is appended. Load DualReal lists the file at once, as "
                                                      "output/dualreal/<name>_NNNNN_.safetensors."}),
        }}

    def save(self, adapters, filename_prefix):
        from dual_adapter.dualreal import save_adapters

        _check_adapters(adapters)
        if isinstance(adapters, PerExpert):  # Wan 2.2 A14B: one file per expert, one counter
            paths = reserve_pair(lambda p: bridge.saved_output_path("dualreal", p), filename_prefix or "dualreal")
            with contextlib.ExitStack() as held:  # a failed save leaves no empty file behind
                for p in paths.values():
                    held.enter_context(reservation(p))
                written = [save_adapters(a, paths[n]) for n, a in adapters.items()]
            return {"ui": {"text": [str(p) for p in written]}}
        out = bridge.saved_output_path("dualreal", filename_prefix or "dualreal")
        with reservation(out):  # a failed save leaves no empty file behind
            path = save_adapters(adapters, out)
        return {"ui": {"text": [str(path)]}}


class DualRealLoad:
    DESCRIPTION = ("Load DualReal adapters: files in models/dualreal, what Save DualReal wrote in output/dualreal/, "
                   "and the runs of Train DualReal in output/runs/dualreal/<name>_NNNNN_/ (<name>.safetensors: a "
                   "finished run; checkpoint.safetensors: a stopped run's last checkpoint; older runs' "
                   "output/dualreal/*.partial.safetensors too). "
                   "Our .safetensors files, or the authors' adapter.pth (imported into the 'official' form). A file "
                   "named for a Wan 2.2 A14B expert (X_high_noise / X_low_noise) loads with its twin when it is "
                   "there (one set per expert).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("DUALREAL_ADAPTERS",)
    RETURN_NAMES = ("adapters",)

    @classmethod
    def INPUT_TYPES(cls):
        shipped = sorted(f"examples/{p.name}" for p in (bridge.PACK_ROOT / "examples").glob("dualreal_*.safetensors"))
        files = bridge.list_files("dualreal")  # optimiser state files are left out
        return {"required": {
            "adapters_name": (files + shipped,
                              {"tooltip": "File in models/dualreal (.safetensors or the authors' .pth), one Save "
                               "DualReal wrote (output/dualreal/...), or a Train DualReal run's final file or last "
                               "checkpoint (output/runs/dualreal/<name>_NNNNN_/...). "
                               "examples/dualreal_tiny_* / dualreal_mini_* are small adapters for the built-in tiny / "
                               "mini model, shipped with the pack so the example workflow runs."}),
        }}

    def load(self, adapters_name):
        from dual_adapter.dualreal import load_any

        shipped = None
        if isinstance(adapters_name, str) and adapters_name.startswith("examples/"):
            try:  # the shipped examples, under the read rule
                shipped = bridge.allowed_read_path(adapters_name[len("examples/"):], [bridge.EXAMPLES_DIR])
            except DualAdapterError:
                pass  # not there: the models folder's one message below
        if shipped is not None and shipped.is_file():
            return (load_any(shipped),)
        path = bridge.resolve("dualreal", adapters_name)
        pair = pair_files(path)  # X_high_noise / X_low_noise: both halves of a Wan 2.2 A14B pair
        if pair:
            return (PerExpert({n: load_any(p) for n, p in pair.items()}, name=path.stem),)
        return (load_any(path),)


class DualRealApply:
    DESCRIPTION = ("Apply DualReal adapters to a CogVideoX model for sampling: DA-blocks in every transformer block "
                   "and the StageBlender controller. The reference photo (encoded with CLIP vision ViT-H) or a "
                   "CLIP_VISION_OUTPUT conditions the motion adapters; without one their W_cond term is skipped. "
                   "Returns a patched copy; the input model is unchanged. Wan 2.2 A14B: a pair applies each set to "
                   "its expert, one set applies to both experts; a pair on a one-transformer model is refused.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (VIDEO_MODEL, {"tooltip": "CogVideoX to patch (not modified)."}),
                "adapters": ("DUALREAL_ADAPTERS", {"tooltip": "Adapters from Train DualReal or Load DualReal."}),
            },
            "optional": {
                "reference_image": ("IMAGE", {"tooltip": "Subject photo for the reference embedding. The first "
                                                         "image is used. Encoded with clip_vision, or, without it, "
                                                         "with the built-in encoder the adapters were trained with "
                                                         "('mini' or 'tiny'; other adapters need clip_vision)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP vision ViT-H/14 (clip_vision_h) to encode "
                                                           "reference_image."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "A precomputed reference embedding "
                                                                         "(CLIP Vision Encode); used instead of "
                                                                         "reference_image."}),
                "identity_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                             "tooltip": "Multiplies the identity branch weight (1 = as trained)."}),
                "motion_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                           "tooltip": "Multiplies the motion branch weight (1 = as trained)."}),
                "use_controller": ("BOOLEAN", {"default": True,
                                               "tooltip": "Off = fixed weights w_id = w_mo = 0.1 (ablation)."}),
            },
        }

    def apply(self, model, adapters, reference_image=None, clip_vision=None, clip_vision_output=None,
              identity_scale=1.0, motion_scale=1.0, use_controller=True):
        from dual_adapter.dualreal import DualRealPatch, check_compatible, reference_for_adapters
        from dual_adapter.reference import as_reference_embedding

        _bundle(model)
        _check_adapters(adapters)

        def one(a, denoiser):  # one adapter set on one transformer (each expert's on its own, on A14B)
            check_compatible(a.config, denoiser, a.meta.get("base_fingerprint"))
            ref = None
            if clip_vision_output is not None:
                ref = as_reference_embedding(clip_vision_output, "clip_vision_output")[:1]
            elif reference_image is not None:  # clip_vision, else the built-in encoder the adapters were trained with
                ref = reference_for_adapters(a, image_batch(reference_image, "reference_image"),
                                             _ComfyClipVisionEncoder(clip_vision) if clip_vision is not None else None)
            return DualRealPatch(a, ref, fixed_weights=None if use_controller else (0.1, 0.1),
                                 identity_scale=float(identity_scale), motion_scale=float(motion_scale))

        return (model.with_patch(per_expert_patch(adapters, model, one, "adapters")),)


class DualRealStageBlenderPlot:
    DESCRIPTION = ("Read out the StageBlender: each weight group's identity weight at each denoising step for a "
                   "prompt and seed (runs the sampler once), plotted like the paper's Fig. 7. Also returns the "
                   "numbers as JSON.")
    CATEGORY = CATEGORY
    FUNCTION = "plot"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("plot", "weights_json")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (VIDEO_MODEL, {"tooltip": "CogVideoX (the adapters are applied for this readout)."}),
                "adapters": ("DUALREAL_ADAPTERS", {"tooltip": "Trained adapters with a StageBlender controller."}),
                "prompt": ("STRING", {"default": "dog * is playing guitar", "multiline": True,
                                      "tooltip": "Prompt to sample with."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Noise seed."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": MAX_SAMPLING_STEPS, "tooltip": "Denoising steps."}),
                "cfg": ("FLOAT", {"default": 6.0, "min": MIN_CFG, "max": MAX_CFG, "step": 0.1,
                                  "tooltip": "Guidance scale; with CFG the prompted branch is reported."}),
            },
            "optional": {
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "Reference embedding for the motion "
                                                                         "adapters (optional)."}),
            },
        }

    def plot(self, model, adapters, prompt, seed, steps, cfg, clip_vision_output=None):
        from dual_adapter.dualreal import plot_stageblender, stageblender_readout
        from dual_adapter.reference import as_reference_embedding

        bundle = _bundle(model)
        if isinstance(adapters, PerExpert):
            raise DualAdapterError("adapters: a Wan 2.2 A14B pair (one set per expert) has two StageBlenders; plot "
                                   "one expert's file with a one-transformer model, or use the sampler")
        ref = as_reference_embedding(clip_vision_output)[:1] if clip_vision_output is not None else None
        bar = bridge.Progress(int(steps))
        with torch.inference_mode(False), torch.no_grad():
            r = stageblender_readout(bundle, adapters, prompt, reference=ref, seed=int(seed), steps=int(steps),
                                     cfg=float(cfg), callback=bar)
            img = plot_stageblender(r, title=f"StageBlender identity weights (seed {int(seed)})")
        return (img, json.dumps(r))


NODE_CLASS_MAPPINGS = {
    "DualRealTrain": DualRealTrain,
    "DualRealSave": DualRealSave,
    "DualRealLoad": DualRealLoad,
    "DualRealApply": DualRealApply,
    "DualRealStageBlenderPlot": DualRealStageBlenderPlot,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DualRealTrain": "Train DualReal",
    "DualRealSave": "Save DualReal",
    "DualRealLoad": "Load DualReal",
    "DualRealApply": "Apply DualReal",
    "DualRealStageBlenderPlot": "StageBlender Plot",
}
