"""Nodes for core ComfyUI's native CogVideoX and Wan (MODEL from UNETLoader, KSampler): Apply DualReal to MODEL,
Apply LoRA to MODEL (both models), Convert to Native (CogVideoX). Thin: validate, then call the library / ``_native_bridge``
(imported when a node runs, so the pack imports without ComfyUI)."""
from __future__ import annotations

from dual_adapter.errors import DualAdapterError

from . import bridge
from .common import image_batch

CAT = "DualAdapter/Native"


def _bridge():
    if not bridge.IN_COMFY:
        raise DualAdapterError("this node works on a core ComfyUI MODEL and needs ComfyUI")
    from . import _native_bridge

    return _native_bridge


class DualRealApplyNative:
    DESCRIPTION = ("Apply DualReal adapters to a core MODEL holding a native CogVideoX or Wan 2.1 / 2.2 text-to-video "
                   "(UNETLoader) for core KSampler: DA-blocks on every block (CogVideoX: object patches chained with "
                   "existing ones; Wan: core's block replace hook, with core LoRAs and other weight patches under "
                   "them), StageBlender once per model call, the reference tiled to the CFG batch; the adapters load / "
                   "offload with the model. "
                   "Warns or refuses where core's port differs from the model the adapters were trained on. "
                   "Returns a clone; the input MODEL is unchanged.")
    CATEGORY = CAT
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A native CogVideoX or Wan text-to-video MODEL (UNETLoader with a "
                                    "native single file). Adapters must be trained on the same model (blocks, width)."}),
                "adapters": ("DUALREAL_ADAPTERS", {"tooltip": "Adapters from Train DualReal or Load DualReal."}),
            },
            "optional": {
                "reference_image": ("IMAGE", {"tooltip": "Subject photo for the reference embedding (the first image), "
                                                         "encoded with clip_vision, or without it with the built-in "
                                                         "encoder the adapters were trained with ('mini' / 'tiny')."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP vision ViT-H/14 (clip_vision_h) to encode reference_image."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "A precomputed reference embedding [1, 1024] "
                                                                         "(CLIP Vision Encode); used instead of reference_image."}),
                "identity_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                             "tooltip": "Multiplies the identity branch weight (1 = as trained)."}),
                "motion_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                           "tooltip": "Multiplies the motion branch weight (1 = as trained)."}),
                "use_controller": ("BOOLEAN", {"default": True, "tooltip": "Off = fixed weights w_id = w_mo = 0.1 (ablation)."}),
                "allow_divergent": ("BOOLEAN", {"default": False, "tooltip": "CogVideoX only. Apply even where core's CogVideoX port "
                                    "runs another model than diffusers (2B sincos detected as RoPE, 5B-I2V 1.0 without "
                                    "RoPE); off = refuse with the cause."}),
            },
        }

    def apply(self, model, adapters, reference_image=None, clip_vision=None, clip_vision_output=None,
              identity_scale=1.0, motion_scale=1.0, use_controller=True, allow_divergent=False):
        from dual_adapter.dualreal import reference_for_adapters
        from dual_adapter.reference import as_reference_embedding

        from .dualreal_nodes import _ComfyClipVisionEncoder

        ref = None
        if clip_vision_output is not None:
            ref = as_reference_embedding(clip_vision_output, "clip_vision_output")[:1]
        elif reference_image is not None:  # clip_vision, else the built-in encoder the adapters were trained with
            ref = reference_for_adapters(adapters, image_batch(reference_image, "reference_image"),
                                         _ComfyClipVisionEncoder(clip_vision) if clip_vision is not None else None)
        out = _bridge().apply_dualreal(model, adapters, ref, fixed_weights=None if use_controller else (0.1, 0.1),
                                       identity_scale=float(identity_scale), motion_scale=float(motion_scale),
                                       allow_divergent=bool(allow_divergent))
        return (out,)


class ApplyLoRANative:
    DESCRIPTION = ("Add one of the pack's LoRAs (VIDEO_LORA: trained here or loaded from any supported format) to a "
                   "core native CogVideoX or Wan MODEL as core weight patches, like LoraLoaderModelOnly; stacks with other "
                   "core LoRAs. Returns a clone.")
    CATEGORY = CAT
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A native CogVideoX or Wan MODEL (UNETLoader), possibly already patched."}),
            "lora": ("VIDEO_LORA", {"tooltip": "From Load LoRA (CogVideoX) or Train Motion LoRA."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.0001,
                                   "tooltip": "Multiplier of the LoRA update (1 = as trained, 0 = off)."}),
        }, "optional": {
            "alpha_override": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5,
                                         "tooltip": "0 = the file's alpha; e.g. 1 for LoRAs trained with alpha 1."}),
        }}

    def apply(self, model, lora, strength=1.0, alpha_override=0.0):
        from dual_adapter.lora import LoraFile

        if not isinstance(lora, LoraFile):
            raise DualAdapterError(f"lora: expected a VIDEO_LORA, got {type(lora).__name__}")
        if alpha_override:
            from dual_adapter.lora import with_alpha

            lora = with_alpha(lora, float(alpha_override))
        return (_bridge().apply_lora(model, lora, float(strength)),)


class ConvertToNative:
    DESCRIPTION = ("Convert the transformer of a diffusers CogVideoX folder (models/CogVideo/) into one native "
                   "safetensors in models/diffusion_models/ for core UNETLoader. Streamed tensor by tensor (RAM stays "
                   "near the largest tensor). Never overwrites: a counter is added.")
    CATEGORY = CAT
    FUNCTION = "convert"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (bridge.list_model_dirs("CogVideo") or [""], {"tooltip": "A diffusers folder under models/CogVideo/."}),
            "filename_prefix": ("STRING", {"default": "cogvideox_native", "tooltip": "Output name start, inside "
                                "models/diffusion_models/ (sub-folders allowed; no absolute path or '..'). A counter "
                                "_00001_ is added."}),
            "dtype": (["keep", "bf16", "fp16", "fp32"], {"default": "bf16", "tooltip": "Cast of floating tensors."}),
        }}

    def convert(self, model, filename_prefix="cogvideox_native", dtype="bf16"):
        from dual_adapter.io import reservation
        from dual_adapter.native import convert_diffusers_to_native

        if not model:
            raise DualAdapterError("model: no diffusers CogVideoX folder chosen (put one in models/CogVideo/)")
        src = bridge.resolve("CogVideo", model)  # the source first: a refused model makes nothing on disk
        out = bridge.output_path(filename_prefix, "safetensors", base=bridge.folder_dirs("diffusion_models")[0])
        prog = bridge.Progress(1)
        with reservation(out):  # a failed conversion leaves no empty file behind
            path = convert_diffusers_to_native(src, out, dtype=None if dtype == "keep" else dtype,
                                               callback=lambda d, t: prog(d, t))
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


NODE_CLASS_MAPPINGS = {
    "DualAdapterDualRealApplyNative": DualRealApplyNative,
    "DualAdapterApplyLoRANative": ApplyLoRANative,
    "DualAdapterConvertToNative": ConvertToNative,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DualAdapterDualRealApplyNative": "Apply DualReal to MODEL (native CogVideoX / Wan)",
    "DualAdapterApplyLoRANative": "Apply LoRA to MODEL (native CogVideoX / Wan)",
    "DualAdapterConvertToNative": "Convert CogVideoX to Native (single file)",
}
