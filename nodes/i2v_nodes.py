"""Image To Video (first frame): attach a conditioning image to the prompt embeddings, as ComfyUI's own
WanImageToVideo attaches it to the conditioning; the sampler then starts the video from it (docs/backbones.md,
"Image-to-video")."""
from __future__ import annotations

from dual_adapter.backbones import as_backbone
from dual_adapter.backbones.base import prepare_image
from dual_adapter.errors import DualAdapterError

from .common import VIDEO_EMBEDS, VIDEO_MODEL, as_model

CAT = "DualAdapter"


class ImageToVideo:
    DESCRIPTION = ("Attach the image a video starts from (a subject photo or a generated keyframe) to the prompt "
                   "embeddings, for an image-to-video model: CogVideoX-5B-I2V / CogVideoX1.5-5B-I2V (the image's "
                   "latent joined on the channels), Wan 2.1 I2V (image latents, first-frame mask and CLIP image "
                   "features), Wan 2.2 TI2V-5B (the first latent frame replaced by the image's). The sampler fits the "
                   "image to the video size (cover, then centre-crop) and conditions every step on it.")
    CATEGORY = f"{CAT}/Model"
    RETURN_TYPES = (VIDEO_EMBEDS,)
    RETURN_NAMES = ("embeds",)
    FUNCTION = "attach"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (VIDEO_MODEL, {"tooltip": "From Load Video Model: an image-to-video model (a CogVideoX I2V "
                      "or Wan I2V / TI2V folder; tiny-i2v, tiny-wan-i2v, tiny-wan-ti2v to try the pipeline)."}),
            "embeds": (VIDEO_EMBEDS, {"tooltip": "From Encode Prompt with the same model."}),
            "image": ("IMAGE", {"tooltip": "The video's first frame, IMAGE [B, H, W, 3] 0..1; the first image of a "
                      "batch is used. Any size: resized to cover the video size keeping its aspect ratio, then "
                      "centre-cropped."}),
        }}

    def attach(self, model, embeds, image):
        bb = as_backbone(as_model(model).bundle)
        if not bb.image_to_video:
            raise DualAdapterError(f"model: {bb.name!r} is a text-to-video model; Image To Video needs an "
                                   f"image-to-video model (CogVideoX-5B-I2V, CogVideoX1.5-5B-I2V, Wan 2.1 I2V, "
                                   f"Wan 2.2 TI2V-5B)")
        if not isinstance(embeds, dict) or "positive" not in embeds:
            raise DualAdapterError("embeds: expected VIDEO_EMBEDS from 'Encode Prompt'")
        first = image[:1] if getattr(image, "ndim", 0) == 4 else image
        img = prepare_image(first, int(first.shape[-3]), int(first.shape[-2]), "image")  # checked here, fitted later
        return ({**embeds, "image": img},)


NODE_CLASS_MAPPINGS = {"DualAdapterImageToVideo": ImageToVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"DualAdapterImageToVideo": "Image To Video (first frame)"}
