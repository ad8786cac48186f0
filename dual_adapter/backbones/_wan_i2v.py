"""Image-to-video on Wan (docs/wan.md, "Image-to-video"): the parts of :mod:`dual_adapter.backbones.wan` that only
image-to-video models use, as diffusers' ``WanImageToVideoPipeline`` runs them.

* **Wan 2.1 I2V** (14B 480p / 720p): the transformer takes ``in_channels = 2 C + 4``: the noisy latents, a 4-channel
  mask saying which frames are given (the first: ``vae_scale_temporal`` mask channels, one per frame a latent frame
  stands for) and the latents of the image followed by blank (zero, mid-grey) frames, encoded as one video; the
  image's CLIP ViT-H features (penultimate hidden states, 257 tokens) enter every cross-attention beside the text
  through the image projections ``add_k_proj`` / ``add_v_proj`` (``image_dim``).
* **Wan 2.2 TI2V-5B** (``expand_timesteps`` in the folder's ``model_index.json``): the image's latent frame replaces
  the first latent frame of the video, whose tokens get timestep 0; the model is text-to-video without an image.

Built-in ``tiny-wan-i2v`` (Wan 2.1 I2V's layout: 12 input channels = 4 + 4 mask + 4, image_dim 16 from a tiny CLIP
vision model) and ``tiny-wan-ti2v`` (``tiny-wan`` with Wan 2.2 TI2V's first-frame replacement; it keeps ``tiny-wan``'s
VAE, not TI2V-5B's 48-channel one): seeded random weights, offline, for tests and pipeline checks. Both use Wan's
512-token text length (the I2V cross-attention splits image and text tokens at 512, diffusers' ``WanAttnProcessor``).
"""
from __future__ import annotations

import weakref
from pathlib import Path

import torch

from ..errors import DualAdapterError
from .base import ImageConditioning, check_device, parse_dtype, prepare_image

TINY_I2V_NAMES = ("tiny-wan-i2v", "tiny-wan-ti2v")
#: tiny CLIP vision model of ``tiny-wan-i2v`` (17 tokens of width 16 from a 32 px image)
_TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, projection_dim=16)
#: attribute a Wan transformer carries when its model replaces the first latent frame (Wan 2.2 TI2V): a bare copy
#: of the transformer (a trainer's) keeps it, so the objective knows
EXPAND_ATTR = "_dual_adapter_expand_timesteps"
#: weak reference to the whole backbone a Wan 2.1 I2V transformer belongs to (VAE and image encoder for training)
SOURCE_ATTR = "_dual_adapter_i2v_source"


def is_i2v(denoiser) -> bool:
    """Wan 2.1 I2V: the transformer takes more channels than it outputs (mask and image latents joined)."""
    c = denoiser.config
    return int(c.in_channels) != int(c.out_channels or c.in_channels)


def is_ti2v(denoiser) -> bool:
    """Wan 2.2 TI2V: the first latent frame is replaced by the image's (see :data:`EXPAND_ATTR`)."""
    return bool(getattr(denoiser, EXPAND_ATTR, False))


def mark(bb, expand_timesteps: bool = False, image_encoder=None, image_processor=None):
    """Give a loaded :class:`~dual_adapter.backbones.wan.WanBackbone` its image-to-video parts."""
    bb.image_encoder, bb.image_processor = image_encoder, image_processor
    if expand_timesteps:
        setattr(bb.denoiser, EXPAND_ATTR, True)
    if is_i2v(bb.denoiser):
        setattr(bb.denoiser, SOURCE_ATTR, weakref.ref(bb))
    return bb


def tiny_transformer_config(base: dict, variant: str) -> dict:
    """The tiny transformer config of ``variant`` from ``tiny-wan``'s ``base``."""
    if variant == "tiny-wan-i2v":
        c = int(base["out_channels"])
        return {**base, "in_channels": 2 * c + 4, "image_dim": _TINY_CLIP["hidden_size"],
                "added_kv_proj_dim": int(base["num_attention_heads"]) * int(base["attention_head_dim"])}
    return dict(base)


def build_tiny_image_encoder(seed: int, device: str, dtype):
    """The tiny CLIP vision model and its image processor (offline, seeded)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)
        enc = CLIPVisionModel(CLIPVisionConfig(**_TINY_CLIP)).eval()
    enc.requires_grad_(False)
    dt = parse_dtype(dtype)
    enc.to(device=check_device(device) or "cpu") if dt == torch.float32 else enc.to(device=device, dtype=dt)
    proc = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    return enc, proc


def load_parts(root: Path, dt, device: str, tcfg: dict, index: dict) -> dict:
    """The image-to-video parts of a Wan folder: ``image_encoder/`` and ``image_processor/`` where the transformer
    has ``image_dim`` (Wan 2.1 I2V), and the ``expand_timesteps`` flag of ``model_index.json`` (Wan 2.2 TI2V).

    Raises:
        DualAdapterError: ``image_encoder/`` or ``image_processor/`` missing or not loading.
    """
    parts = {"expand_timesteps": bool(index.get("expand_timesteps"))}
    if tcfg.get("image_dim") is None:
        return parts
    check_parts(root, tcfg)
    from transformers import CLIPImageProcessor, CLIPVisionModel

    try:
        enc = CLIPVisionModel.from_pretrained(root / "image_encoder", torch_dtype=torch.float32, use_safetensors=True)
        proc = CLIPImageProcessor.from_pretrained(root / "image_processor")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DualAdapterError(f"could not load the image encoder of {str(root)!r}: {type(e).__name__}: {e}") from None
    enc.requires_grad_(False)
    parts.update(image_encoder=enc.eval().to(device), image_processor=proc)
    return parts


def check_parts(root: Path, tcfg: dict) -> None:
    """A Wan 2.1 I2V folder (the transformer has ``image_dim``) holds ``image_encoder/`` and ``image_processor/``.

    Raises:
        DualAdapterError: naming the missing parts.
    """
    if tcfg.get("image_dim") is None:
        return
    missing = [p + "/" for p in ("image_encoder", "image_processor") if not (root / p).is_dir()]
    if missing:
        raise DualAdapterError(f"model folder {str(root)!r} is a Wan 2.1 image-to-video model but lacks "
                               f"{', '.join(missing)} (the CLIP image encoder of Wan-AI/Wan2.1-I2V-*-Diffusers)")


@torch.no_grad()
def encode_image(bb, img: torch.Tensor) -> torch.Tensor:
    """CLIP image features ``[1, N, D]`` of ``img [1, H, W, 3]`` 0..1: the penultimate hidden states, as
    ``WanImageToVideoPipeline.encode_image`` makes them from an 8-bit picture (the image processor resizes it)."""
    from PIL import Image

    if bb.image_encoder is None:
        raise DualAdapterError(f"model {bb.name!r} is a Wan 2.1 image-to-video model without its image encoder")
    enc = bb.image_encoder
    p = next(enc.parameters())
    pic = Image.fromarray((img[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    pix = bb.image_processor(images=pic, return_tensors="pt")["pixel_values"]
    out = enc(pixel_values=pix.to(p.device, p.dtype), output_hidden_states=True)
    return out.hidden_states[-2].to(bb.device, bb.dtype)


@torch.no_grad()
def image_conditioning(bb, image: torch.Tensor, num_frames: int, height: int, width: int) -> ImageConditioning:
    """What a Wan image-to-video model takes for a ``num_frames x height x width`` video from ``image`` (see the
    module docstring), batch 1.

    Raises:
        DualAdapterError: a text-to-video Wan; a bad image or video size.
    """
    d = bb.denoiser
    if not (is_i2v(d) or is_ti2v(d)):
        raise DualAdapterError(f"model {bb.name!r} is a text-to-video Wan; a conditioning image needs Wan 2.1 I2V or "
                               f"Wan 2.2 TI2V-5B (docs/wan.md)")
    bb.check_video_size(num_frames, height, width)
    img = prepare_image(image, height, width)
    if is_ti2v(d):
        return ImageConditioning(first_frame=bb.encode_frames(img))
    video = torch.cat([img, torch.full((num_frames - 1, height, width, 3), 0.5)], 0)  # blank frames: 0 in -1..1
    lat = bb.encode_frames(video)  # [1, T, C, h, w]
    return ImageConditioning(concat=torch.cat([first_frame_mask(lat, bb.frame_step()), lat], 2),
                             image_embeds=encode_image(bb, img))


def first_frame_mask(lat: torch.Tensor, temporal: int) -> torch.Tensor:
    """Wan 2.1 I2V's mask ``[B, T, temporal, h, w]`` for latents ``lat [B, T, C, h, w]``: ones on the first latent
    frame (the given image), zeros after."""
    m = torch.zeros((lat.shape[0], lat.shape[1], temporal, *lat.shape[3:]), dtype=lat.dtype, device=lat.device)
    m[:, 0] = 1
    return m


def model_inputs(net, latents: torch.Tensor, t: torch.Tensor, cond: ImageConditioning | None):
    """``(hidden_states [B, C', F, h, w], timestep, extra forward kwargs)`` of one transformer call on latents
    ``[B, F, C, h, w]`` with the image conditioning.

    Raises:
        DualAdapterError: a Wan 2.1 I2V model without conditioning, or conditioning for a text-to-video Wan.
    """
    kw = {}
    if cond is None:
        if is_i2v(net):
            raise DualAdapterError("this Wan model is image-to-video: give it a conditioning image")
        return latents.permute(0, 2, 1, 3, 4), t, kw
    if not (is_i2v(net) or is_ti2v(net)):
        raise DualAdapterError("a conditioning image was given to a text-to-video Wan model")
    x = latents
    if cond.first_frame is not None:
        x = torch.cat([cond.first_frame.to(x.dtype), x[:, 1:]], 1)
        _, p_h, p_w = net.config.patch_size
        B, F, _, h, w = x.shape
        per = torch.ones((F, h // p_h, w // p_w), device=x.device, dtype=torch.float32)
        per[0] = 0
        t = t.float().view(-1, 1).expand(B, -1) * per.flatten()[None]  # timestep 0 on the image's tokens
    if cond.concat is not None:
        x = torch.cat([x, cond.concat.to(x.dtype)], 2)
    if cond.image_embeds is not None:
        kw["encoder_hidden_states_image"] = cond.image_embeds.to(x.dtype)
    return x.permute(0, 2, 1, 3, 4), t, kw


def training_conditioning(net, latents: torch.Tensor) -> ImageConditioning | None:
    """The conditioning for a clip of clean latents ``[B, F, C, h, w]``: Wan 2.2 TI2V: the clip's first latent frame
    (the Wan VAE encodes the first frame on its own, so it is the image's latent), none for a single latent frame (a
    photo: given as the first frame it would leave no frame to learn, so it trains as text-to-video); Wan 2.1 I2V: the clip's first
    frame decoded and conditioned on as an image (the model's VAE and image encoder); None on text-to-video Wan.

    Raises:
        DualAdapterError: a Wan 2.1 I2V transformer separated from its model (no VAE / image encoder to use).
    """
    if is_ti2v(net):  # a single frame (an identity photo) would leave nothing to learn: text-to-video, as without
        return ImageConditioning(first_frame=latents[:, :1]) if latents.shape[1] > 1 else None  # an image
    if not is_i2v(net):
        return None
    ref = getattr(net, SOURCE_ATTR, None)
    bb = ref() if ref is not None else None
    if bb is None:
        raise DualAdapterError("training a Wan 2.1 image-to-video model needs its VAE and image encoder for the "
                               "clips' first frames; load it whole (load_backbone) or pass the conditioning (cond=)")
    conds = []
    step = bb.frame_step()
    for i in range(latents.shape[0]):
        first = bb.decode_latents(latents[i: i + 1, :1].detach())[0]  # [1, H, W, 3]
        n = (latents.shape[1] - 1) * step + 1
        conds.append(image_conditioning(bb, first, n, first.shape[1], first.shape[2]))
    return ImageConditioning.cat(conds)


def item_conditioning(net, latents: torch.Tensor) -> ImageConditioning | None:
    """What a trainer computes once per training item (clean latents ``[B, F, C, h, w]``): Wan 2.1 I2V's
    :func:`training_conditioning` (a VAE decode and a full-length VAE and image-encoder encode); None on Wan 2.2
    TI2V (its conditioning is a slice of each step's latents) and text-to-video Wan.

    Raises:
        DualAdapterError: as :func:`training_conditioning`.
    """
    return training_conditioning(net, latents) if is_i2v(net) else None


def finish_sample(latents: torch.Tensor, cond: ImageConditioning | None) -> torch.Tensor:
    """Wan 2.2 TI2V: the image's latent frame put back as the first (the pipeline's last step)."""
    if cond is None or cond.first_frame is None:
        return latents
    return torch.cat([cond.first_frame.to(latents.dtype).expand(latents.shape[0], -1, -1, -1, -1), latents[:, 1:]], 1)
