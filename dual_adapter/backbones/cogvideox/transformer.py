"""The CogVideoX transformer: frame-count and size rules, the architecture fingerprint and width, the transformer call
with its 3D rotary embeddings (:func:`transformer_forward`), and image-to-video conditioning.
"""
from __future__ import annotations

import hashlib
import json

import torch

from ...errors import DualAdapterError
from ...limits import check_video_size as check_size_bounds
from .bundle import CogVideoXBundle
from .vae import encode_frames


# --------------------------------------------------------------------------------------------
# shapes


def latent_frames_for(bundle_or_cfg, num_frames: int) -> int:
    """Latent frames of a ``num_frames`` video: ``(num_frames - 1) // 4 + 1`` (13 for 49)."""
    t = getattr(bundle_or_cfg, "vae_scale_temporal", 4)
    return (int(num_frames) - 1) // t + 1


def check_video_size(bundle: CogVideoXBundle, num_frames: int, height: int, width: int) -> None:
    """Check that a ``num_frames x height x width`` video fits the model.

    CogVideoX takes ``4k+1`` frames (the VAE compresses time by 4 after the first frame; 1.5 models,
    which also patch time by 2, take ``8k+1``) and sizes
    that are multiples of ``8 * patch_size`` (16 on all released models).

    Raises:
        DualAdapterError: naming the input and the nearest valid values; a size above
            :data:`~dual_adapter.limits.MAX_FRAMES` / ``MAX_SIDE``.
    """
    check_size_bounds(num_frames, height, width)  # the upper bounds shared with the nodes and the CLI
    t = bundle.vae_scale_temporal
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % t:
        lo = max(1, (int(num_frames) - 1) // t * t + 1) if isinstance(num_frames, int) else 1
        raise DualAdapterError(f"frames={num_frames}: CogVideoX takes {t}k+1 frames (e.g. {lo} or {lo + t}; "
                               f"49 on the released models)")
    if bundle.config.patch_size_t and latent_frames_for(bundle, num_frames) % 2 == 0:
        # 1.5 models patch time by 2 and the VAE decodes an odd number of latent frames: 8k+1 frames
        raise DualAdapterError(f"frames={num_frames}: CogVideoX 1.5 models take 8k+1 frames "
                               f"(e.g. {num_frames - t} or {num_frames + t}; 81 on the released 1.5 model)")
    m = bundle.vae_scale_spatial * int(bundle.config.patch_size)
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < m or v % m:
            near = max(m, int(v) // m * m) if isinstance(v, (int, float)) else m
            raise DualAdapterError(f"{name}={v}: must be a positive multiple of {m} for this model "
                                   f"(e.g. {near}); the released models use 480x720")


#: The transformer-config fields a trained adapter depends on (stored in LoRA metadata as ``base_config``).
ARCHITECTURE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "time_embed_dim", "text_embed_dim",
                     "in_channels", "out_channels", "patch_size", "patch_size_t", "use_rotary_positional_embeddings",
                     "sample_frames", "sample_height", "sample_width", "max_text_seq_length")


def config_fingerprint(transformer) -> str:
    """Short hash of the transformer's architecture config (block count, width, positions...).

    Stored in saved adapters so that loading them on another architecture fails clearly.
    """
    c = dict(transformer.config)
    keys = ["num_layers", "num_attention_heads", "attention_head_dim", "time_embed_dim", "text_embed_dim",
            "in_channels", "patch_size", "patch_size_t", "use_rotary_positional_embeddings"]
    blob = json.dumps({k: c.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def transformer_width(transformer) -> int:
    c = transformer.config
    return int(c.num_attention_heads) * int(c.attention_head_dim)


# --------------------------------------------------------------------------------------------
# forward


_ROPE_CACHE: dict = {}


def rotary_embeddings(transformer, latent_frames: int, latent_h: int, latent_w: int, device) -> tuple | None:
    """RoPE (cos, sin) for a latent video, as the diffusers pipeline builds them; None for sincos models.

    Follows ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` (grid crops for 1.0,
    ``grid_type="slice"`` for 1.5).
    """
    c = transformer.config
    if not c.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    key = (id(transformer.config), latent_frames, latent_h, latent_w, str(device))
    if key in _ROPE_CACHE:
        return _ROPE_CACHE[key]
    p, p_t = c.patch_size, c.patch_size_t
    gh, gw = latent_h // p, latent_w // p
    bw, bh = c.sample_width // p, c.sample_height // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid((gh, gw), bw, bh)
        cos, sin = get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                                           temporal_size=latent_frames, device=device)
    else:
        cos, sin = get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                           temporal_size=(latent_frames + p_t - 1) // p_t, grid_type="slice",
                                           max_size=(bh, bw), device=device)
    if len(_ROPE_CACHE) > 32:
        _ROPE_CACHE.clear()
    _ROPE_CACHE[key] = (cos, sin)
    return cos, sin


def transformer_forward(transformer, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                        timestep: torch.Tensor, image_latents: torch.Tensor | None = None) -> torch.Tensor:
    """One transformer call: ``latents [B, F, C, h, w]``, ``prompt_embeds [B, L, D]``, ``timestep [B]``
    -> model output (v-prediction) ``[B, F, C, h, w]``. Builds RoPE when the model uses it.

    Image-to-video models: ``image_latents [B, F, C, h, w]`` (:func:`image_conditioning`) are joined to the latents
    on the channels, and the ofs embedding of CogVideoX1.5-5B-I2V gets 2.0, as ``CogVideoXImageToVideoPipeline``
    calls it.

    Raises:
        DualAdapterError: an image-to-video model without ``image_latents``, or the reverse.
    """
    B, F, C, h, w = latents.shape
    c = transformer.config
    i2v = int(c.in_channels) != int(c.out_channels or c.in_channels)
    if i2v != (image_latents is not None):
        raise DualAdapterError("this CogVideoX model is image-to-video: give it a conditioning image" if i2v else
                               "a conditioning image was given to a text-to-video CogVideoX model")
    if image_latents is not None:
        latents = torch.cat([latents, image_latents.to(latents.device, latents.dtype)], 2)
    rope = rotary_embeddings(transformer, F, h, w, latents.device)
    kw = {}
    if getattr(c, "ofs_embed_dim", None):
        kw["ofs"] = latents.new_full((1,), 2.0)
    return transformer(hidden_states=latents, encoder_hidden_states=prompt_embeds, timestep=timestep,
                       image_rotary_emb=rope, return_dict=False, **kw)[0]


def image_latent_frames(first: torch.Tensor, latent_frames: int, p_t: int | None) -> torch.Tensor:
    """CogVideoX I2V's channel-joined latents: the image's latent frame ``first [B, 1, C, h, w]`` followed by zeros
    up to ``latent_frames`` rounded up to a 1.5 model's time patch ``p_t``, as ``CogVideoXImageToVideoPipeline``
    builds them (on a 1.5 model the image thus sits beside the padding frame in front, which the sampler drops)."""
    total = latent_frames + (-latent_frames) % int(p_t or 1)
    z = torch.zeros((first.shape[0], total - 1, *first.shape[2:]), dtype=first.dtype, device=first.device)
    return torch.cat([first, z], 1)


@torch.no_grad()
def image_conditioning(bundle: CogVideoXBundle, image: torch.Tensor, num_frames: int, height: int, width: int):
    """The conditioning of an image-to-video CogVideoX for a ``num_frames x height x width`` video from ``image``
    (``[H, W, 3]`` / ``[1, H, W, 3]`` 0..1, fitted by :func:`~dual_adapter.backbones.base.prepare_image`): the
    image encoded alone (the posterior mode), scaled as ``CogVideoXImageToVideoPipeline`` scales it (times the VAE's
    scaling factor, or divided by it where the VAE config says ``invert_scale_latents``, CogVideoX 1.5), then zero
    latent frames (:func:`image_latent_frames`).

    Raises:
        DualAdapterError: a text-to-video model; a bad image or video size.
    """
    from ..base import ImageConditioning, prepare_image

    c = bundle.transformer.config
    if int(c.in_channels) == int(c.out_channels or c.in_channels):
        raise DualAdapterError(f"model {bundle.name!r} is a text-to-video CogVideoX; a conditioning image needs "
                               f"CogVideoX-5B-I2V or CogVideoX1.5-5B-I2V")
    check_video_size(bundle, num_frames, height, width)
    img = prepare_image(image, height, width)
    z = encode_frames(bundle, img)  # [1, 1, C, h, w], times the scaling factor
    sf = float(bundle.vae.config.scaling_factor)
    if getattr(bundle.vae.config, "invert_scale_latents", False):
        z = z / (sf * sf)
    lat = image_latent_frames(z, latent_frames_for(bundle, num_frames), c.patch_size_t)
    return ImageConditioning(concat=lat.to(bundle.device, bundle.dtype))
