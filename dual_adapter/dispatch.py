"""One entry per method for every loaded video model: where the library still has one implementation for the
transformer (DiT) backbones (CogVideoX, Wan) and another for the U-Nets (ZeroScope / ModelScope, AnimateDiff), the
choice is made here, from the model, and nowhere else (the nodes and commands call these functions).

A model is what :func:`dual_adapter.models.load_video_model` returns (a CogVideoX bundle or a backbone), or a
:class:`~dual_adapter.patches.PatchedModel` of one. A LoRA is a :class:`dual_adapter.lora.LoraFile` (one type for every
backbone; a U-Net's keys start ``unet.``). A method a backbone does not have (DualReal on a U-Net, the
appearance highway on anything but a UNet3D) raises :class:`~dual_adapter.errors.DualAdapterError` naming the
input (:func:`check_method`). docs/backbones.md lists which method runs on which backbone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import lora as L
from . import unet_motion as UM
from .lora import with_alpha
from .patches import PerDenoiser
from .backbones import as_backbone
from .errors import DualAdapterError
from .experts import PerExpert, pair_files, per_expert_patch

log = logging.getLogger(__name__)

__all__ = ["METHOD_KINDS", "check_method", "has_method", "is_unet", "is_unet_name", "is_unet_lora", "check_lora", "load_lora",
           "save_lora", "lora_patch", "save_lora_pair", "to_latent", "from_latent", "decode", "encode", "default_scheduler",
           "motion_preset",
           "train_motion_lora", "train_selective_lora", "ttt_config"]

#: method -> the built-in backbone kinds it runs on (None = every backbone). A backbone added later has a method where
#: it answers for it (:func:`has_method`): DualReal on every backbone with block adapters, CustomTTT on every DiT.
METHOD_KINDS: dict[str, tuple[str, ...] | None] = {
    "dualreal": ("cogvideox", "wan"),
    "appearance highway": ("unet3d",),
    "CustomTTT": ("cogvideox", "wan", "animatediff"),
    "motion LoRA": None,
}
#: the U-Nets CustomTTT runs on: the published recipe's (:mod:`dual_adapter.customttt.unet`)
CUSTOMTTT_UNETS = ("animatediff",)


def _bb(model):
    return as_backbone(getattr(model, "bundle", model))


def _temporal(model) -> int:
    """Frames per latent frame of ``model``'s VAE (4 on CogVideoX and Wan, 1 on the U-Nets)."""
    bundle = getattr(model, "bundle", model)
    return int(getattr(bundle, "vae_scale_temporal", None) or getattr(_bb(model), "vae_scale_temporal", None) or 1)


def is_unet(model) -> bool:
    """Whether ``model`` is a U-Net video backbone (latents ``[B, C, F, h, w]``) rather than a DiT."""
    return _bb(model).latent_layout == "BCFHW"


def is_unet_name(name_or_path) -> bool:
    """Whether a ``--model`` value (a built-in tiny name or a folder) names a U-Net video backbone (``tiny-unet3d``,
    ``tiny-animatediff``, a ZeroScope / ModelScope or AnimateDiff folder): its registered backbone module defines a
    :class:`~dual_adapter.backbones._unet.UNetVideoBackbone`. Reads no weights."""
    from .backbones import backbone_modules, kind_of
    from .backbones._unet import UNetVideoBackbone

    mod = backbone_modules().get(kind_of(str(name_or_path)))
    return mod is not None and any(isinstance(v, type) and issubclass(v, UNetVideoBackbone)
                                   and v.__module__ == mod.__name__ for v in vars(mod).values())


def check_method(model, method: str, name: str = "model") -> None:
    """Refuse ``model`` for ``method`` (a key of :data:`METHOD_KINDS`) when its backbone does not have it.

    Raises:
        DualAdapterError: naming the input ``name``, the method and the backbones that have it.
    """
    kinds = METHOD_KINDS[method]
    bb = _bb(model)
    if not has_method(bb, method):
        from .backbones import backbone_modules

        fams = "; ".join(backbone_modules()[k].FAMILY for k in kinds if k in backbone_modules())
        raise DualAdapterError(f"{name}: {method} is defined on {fams}; {bb.name!r} is {bb.family}")


def has_method(backbone, method: str) -> bool:
    """Whether ``backbone`` (a :class:`~dual_adapter.backbones.base.VideoBackbone`) has ``method`` (a key of
    :data:`METHOD_KINDS`), asked of the backbone: DualReal where it has block adapters
    (:meth:`~dual_adapter.backbones.base.VideoBackbone.has_block_adapters`), CustomTTT on every DiT and on the U-Nets
    of the published recipe (:data:`CUSTOMTTT_UNETS`), the appearance highway on its U-Net (UNet3D), a motion LoRA
    everywhere."""
    if method == "dualreal":
        return backbone.has_block_adapters()
    if method == "CustomTTT":
        return not is_unet(backbone) or backbone.kind in CUSTOMTTT_UNETS
    kinds = METHOD_KINDS[method]
    return kinds is None or backbone.kind in kinds


def is_unet_lora(lora) -> bool:
    """Whether ``lora`` is a U-Net LoRA (a :class:`~dual_adapter.lora.LoraFile` whose keys start ``unet.``)."""
    return isinstance(lora, L.LoraFile) and lora.prefix == "unet"


def check_lora(lora, name: str = "lora"):
    """``lora`` if it is a LoRA of this library (DiT or U-Net, or a Wan 2.2 A14B pair: a
    :class:`~dual_adapter.experts.PerExpert` of DiT LoRAs).

    Raises:
        DualAdapterError: anything else, naming the input.
    """
    if isinstance(lora, PerExpert) and all(isinstance(x, L.LoraFile) for _, x in lora.items()):
        return lora
    if not isinstance(lora, L.LoraFile):
        raise DualAdapterError(f"{name}: expected a VIDEO_LORA (from Train Motion LoRA or Load LoRA), got "
                               f"{type(lora).__name__}")
    return lora


def load_lora(path: str | Path, pairs: bool = True):
    """Read a LoRA file of any backbone: a U-Net LoRA (keys naming ``down_blocks.`` / ``up_blocks.``,
    :func:`~dual_adapter.unet_motion.load_unet_lora`) or a DiT LoRA in any layout :func:`dual_adapter.lora.load_lora`
    reads. With ``pairs``, a file named for a Wan 2.2 A14B expert (``X_high_noise`` / ``X_low_noise``,
    :func:`~dual_adapter.experts.pair_files`) comes back as a :class:`~dual_adapter.experts.PerExpert` holding it and
    its twin when the twin is there (else it alone, for its own expert).

    Raises:
        DualAdapterError: the file does not read or holds no LoRA (the loaders' messages).
    """
    if UM.is_unet_lora_file(path):
        return UM.load_unet_lora(path)
    pair = pair_files(path) if pairs else {}
    if not pair:
        return L.load_lora(path)
    return PerExpert({n: L.load_lora(p) for n, p in pair.items()}, name=Path(path).stem)


def save_lora(lora, path: str | Path, dtype: torch.dtype | None = None, key_format: str = "diffusers") -> Path:
    """Write ``lora`` to ``path`` (safetensors, atomic): a DiT LoRA in the diffusers layout or, with ``key_format``
    ``comfyui_native``, core ComfyUI's (docs/file_formats.md); a U-Net LoRA as ``unet.<module>.lora_A/B.weight``.
    ``dtype``: None = fp32, else torch.bfloat16 / torch.float16.

    Raises:
        DualAdapterError: ``key_format`` ``comfyui_native`` for a U-Net LoRA; the writers' errors.
    """
    check_lora(lora)
    if isinstance(lora, PerExpert):
        raise DualAdapterError("save_lora writes one file; a pair of Wan 2.2 A14B expert LoRAs is written with "
                               "save_lora_pair (one file per expert)")
    if is_unet_lora(lora):
        if key_format != "diffusers":
            raise DualAdapterError(f"key_format: {key_format!r} is a CogVideoX layout; a U-Net LoRA is saved in the "
                                   f"diffusers layout only (set key_format to diffusers)")
        names = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return UM.save_unet_lora(lora, path, dtype=names[dtype])
    if key_format == "comfyui_native":
        from .lora import save_lora_native

        return save_lora_native(path, lora, dtype=dtype)
    return lora.save(path, dtype=dtype)


def lora_patch(lora, model, strength: float = 1.0, alpha_override: float = 0.0, existing: Sequence = ()):
    """The model patch that adds ``lora`` at ``strength`` to ``model`` (a :class:`~dual_adapter.lora.LoraPatch`, on
    every backbone), after checking that the LoRA fits it.
    ``alpha_override`` (> 0) replaces a DiT LoRA's alpha (scale alpha / rank). ``existing``: the patches already on
    the model (a DiT LoRA's adapter is named ``<name>_<k>``, k = the LoRA patches before it).

    Raises:
        DualAdapterError: a U-Net LoRA on a DiT or the reverse (naming ``lora`` and both backbones); a LoRA
            trained on another model (modules or shapes that do not fit); ``alpha_override`` on a U-Net LoRA.
    """
    check_lora(lora)
    bb = _bb(model)
    k = sum(isinstance(p, L.LoraPatch) or (isinstance(p, PerDenoiser) and any(
        isinstance(q, L.LoraPatch) for q in p.by_name.values())) for p in existing)
    if isinstance(lora, PerExpert):
        def one(lf, denoiser):
            lf = with_alpha(lf, float(alpha_override)) if alpha_override else lf
            L.check_compatible(lf, denoiser)
            return L.LoraPatch(lf, float(strength), name=f"{lf.name}_{k}")

        return per_expert_patch(lora, model, one, "lora")
    if is_unet_lora(lora) != is_unet(model):
        what = "a U-Net LoRA" if is_unet_lora(lora) else "a CogVideoX / Wan LoRA"
        raise DualAdapterError(f"lora: {lora.name!r} is {what}; the model {bb.name!r} is {bb.family}")
    if is_unet_lora(lora):
        if alpha_override:
            raise DualAdapterError("alpha_override: U-Net LoRA files hold their scale folded in; set it to 0")
        L.check_compatible(lora, bb)
        return L.LoraPatch(lora, float(strength), name=lora.name)
    if alpha_override:
        lora = with_alpha(lora, float(alpha_override))
    L.check_compatible(lora, bb.denoiser)
    if len(bb.denoiser_names()) > 1:
        log.info("lora: %r is one file; on %s it applies to every expert (%s)", lora.name, bb.name,
                 ", ".join(bb.denoiser_names()))
    return L.LoraPatch(lora, float(strength), name=f"{lora.name}_{k}")


def save_lora_pair(lora: PerExpert, paths: dict, dtype: torch.dtype | None = None,
                   key_format: str = "diffusers") -> dict:
    """Write each expert's LoRA of ``lora`` to ``paths[name]`` (:func:`save_lora` per file; e.g. the names
    :func:`~dual_adapter.experts.reserve_pair` reserved). Returns ``{name: path written}``.

    Raises:
        DualAdapterError: ``lora`` is not a :class:`~dual_adapter.experts.PerExpert` of DiT LoRAs; no path for one of
            its experts; the writers' errors.
    """
    if not isinstance(check_lora(lora), PerExpert):
        raise DualAdapterError("save_lora_pair: expected one LoRA per expert (PerExpert)")
    missing = [n for n in lora.by_name if n not in paths]
    if missing:
        raise DualAdapterError(f"save_lora_pair: no file name for the {', '.join(missing)} expert")
    return {n: save_lora(lf, paths[n], dtype=dtype, key_format=key_format) for n, lf in lora.items()}


def to_latent(model, latents: torch.Tensor) -> dict:
    """Sampled latents (the backbone's layout) -> a ComfyUI LATENT ``{"samples": [B, C, F, h, w]}`` on the CPU: on a
    DiT the unscaled VAE latent, as core ComfyUI holds it (docs/native_comfyui.md); on a U-Net the scaled latent, as
    the U-Net sampler returns it."""
    from .sampling import latent_scale, to_comfy_latent

    if is_unet(model):
        return {"samples": latents.float().cpu()}
    return to_comfy_latent(latents.float().cpu(), latent_scale(_bb(model).vae))


def from_latent(model, latent, name: str = "latent") -> torch.Tensor:
    """A ComfyUI LATENT -> latents in ``model``'s layout, scale, device and dtype (inverse of :func:`to_latent`).

    Raises:
        DualAdapterError: not a 5-D video latent, naming the input.
    """
    from .sampling import from_comfy_latent, latent_scale

    bb = _bb(model)
    x = latent.get("samples") if isinstance(latent, dict) else latent
    if not torch.is_tensor(x) or x.ndim != 5:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise DualAdapterError(f"{name}: expected a video LATENT {{'samples': [B, C, F, h, w]}}, got {shape}")
    if not is_unet(model):
        x = from_comfy_latent(x, latent_scale(bb.vae))
    return x.to(bb.device, bb.dtype)


def decode(model, latent, callback: Callable | None = None) -> torch.Tensor:
    """A ComfyUI LATENT -> frames ``[B * F, H, W, 3]`` (0..1) with ``model``'s VAE (a batch of B videos in order).
    ``callback(step, total, info)`` per video on a DiT."""
    from .sampling import decode_latents

    x = from_latent(model, latent)
    kw = {} if is_unet(model) or callback is None else {"callback": callback}
    frames = decode_latents(_bb(model), x, **kw)
    return frames.reshape(-1, *frames.shape[2:])


def encode(model, frames: torch.Tensor, height: int = 0, width: int = 0) -> dict:
    """Frames ``[F, H, W, 3]`` (0..1) -> a ComfyUI LATENT with ``model``'s VAE: resized and centre-cropped to
    ``height`` x ``width`` (0 = the model's), F cut to the largest count the VAE takes (4k+1 on CogVideoX)."""
    from . import media
    from .sampling import encode_frames

    bb = _bb(model)
    _, h0, w0 = bb.default_size
    n = media.nearest_valid_frames(frames.shape[0], _temporal(model), mode="down")
    x = media.fit_frames(frames[:n], height or h0, width or w0)
    return to_latent(model, encode_frames(bb, x))


def default_scheduler(model) -> str:
    """The sampler ``auto`` means on ``model``: ``dpm`` on CogVideoX, ``unipc`` on Wan, ``ddim`` on the U-Nets."""
    return {"cogvideox": "dpm", "wan": "unipc"}.get(_bb(model).kind, "ddim")


def motion_preset(model, preset: str = "auto") -> str:
    """The TAP preset ``auto`` means on ``model``: ``tap`` (to_q + to_k) on a DiT, the SMA authors' ``k_out``
    (to_k + to_out.0) on a U-Net (docs/tap.md); any other name is returned as given."""
    if preset != "auto":
        return preset
    return UM.UNetMotionTrainConfig.preset if is_unet(model) else "tap"


def train_motion_lora(model, clips: Sequence[torch.Tensor], prompt: str, *, preset: str = "auto", rank: int = 32,
                      alpha: float | None = None, dropout: float = 0.1, lr: float = 5e-4, steps: int = 1000,
                      seed: int = 0, spatial_path: bool = False, debiased_loss: bool = False,
                      gradient_checkpointing: bool = True, targets: str = "", blocks: str = "",
                      height: int | None = None, width: int | None = None, checkpoint_every: int = 100,
                      fp8_base: bool = False, block_swap: int = 0, run=None, resume: bool = False,
                      callback=None, preview=None, patches: Sequence = ()):
    """Train a TAP motion LoRA on ``model`` from motion clips (docs/tap.md): on a DiT with
    :func:`dual_adapter.lora.train_lora`, on a U-Net with :func:`dual_adapter.unet_motion.train_unet_motion_lora`.

    Args:
        clips: frames ``[F, H, W, 3]`` (0..1) each; on a DiT cut to the largest 4k+1 the shortest clip allows (at
            most the model's frame count), on a U-Net resized to ``height`` x ``width`` when both are given.
        preset: ``auto`` (:func:`motion_preset`), ``tap``, ``k_out``, ``full``; ``custom`` (DiT only) takes
            ``targets``.
        rank, alpha, dropout, lr, steps, seed: the LoRA and AdamW settings (alpha None = rank).
        spatial_path, debiased_loss: MotionDirector's spatial path and appearance-debiased loss.
        targets, blocks, fp8_base, block_swap: DiT only (ignored on a U-Net, with a log line when set).
        run: a :class:`dual_adapter.runs.RunFolder` for the checkpoint and state files (None = none).
        callback, preview, patches: progress callback, :class:`~dual_adapter.previews.PreviewOptions`, and the
            patches already applied to the model (DiT; they stay under the new LoRA).

    Returns:
        ``(lora, losses)``: the LoRA and the list of ``{"step", "loss", ...}`` records.

    Raises:
        DualAdapterError: bad settings (``custom`` without ``targets``, on a U-Net), clips the model cannot take.
    """
    from .media import fit_frames

    preset = motion_preset(model, preset)
    bb = _bb(model)
    if is_unet(model):
        if preset == "custom":
            raise DualAdapterError("preset: 'custom' targets are for CogVideoX / Wan blocks; on a U-Net choose "
                                   f"one of {', '.join(UM.PRESETS)}")
        unused = [k for k, v in (("targets", targets), ("blocks", blocks), ("fp8_base", fp8_base),
                                 ("block_swap", block_swap)) if v]
        if unused:
            log.info("%s: not used on a U-Net model", ", ".join(unused))
        if height and width:
            clips = [fit_frames(c, int(height), int(width)) for c in clips]
        cfg = UM.UNetMotionTrainConfig(preset=preset, rank=int(rank), alpha=alpha, dropout=float(dropout),
                                       lr=float(lr), steps=int(steps), seed=int(seed), spatial_path=bool(spatial_path),
                                       debiased_loss=bool(debiased_loss),
                                       gradient_checkpointing=bool(gradient_checkpointing) and bb.device != "cpu",
                                       checkpoint_every=int(checkpoint_every))

        def keep(lf, step):
            UM.save_unet_lora(lf, run.checkpoint, overwrite=True)

        lf, _, losses = UM.train_unet_motion_lora(  # its LoRAs start from the run's seed
            bb, list(clips), prompt, cfg, callback=callback, on_checkpoint=keep if run is not None else None,
            state_path=run.state if run is not None else None, resume=bool(resume), preview=preview)
        return lf, losses
    if preset == "custom" and not str(targets).strip():
        raise DualAdapterError("preset 'custom' needs a 'targets' list, e.g. attn1.to_q,attn1.to_k")
    spec = L.LoraSpec(rank=int(rank), alpha=float(rank if alpha is None else alpha), dropout=float(dropout),
                      targets=L.resolve_targets(targets if preset == "custom" else preset),
                      blocks=L.parse_blocks(blocks))
    spec.validate()
    cfg = L.lora_train_config(steps=int(steps), lr=float(lr), seed=int(seed),
                              gradient_checkpointing=bool(gradient_checkpointing),
                              checkpoint_every=int(checkpoint_every), fp8_base=bool(fp8_base), block_swap=int(block_swap))
    bundle = getattr(model, "bundle", model)
    t = _temporal(model)
    n = min(c.shape[0] for c in clips)
    n = min((n - 1) // t * t + 1, bb.default_size[0])
    lf, res = L.train_lora(bundle, clips=list(clips), prompt=prompt, spec=spec, cfg=cfg, spatial_path=spatial_path,
                           debiased_loss=debiased_loss, callback=callback,
                           checkpoint_path=run.checkpoint if run is not None else None, resume=bool(resume),
                           num_frames=n, height=height or None, width=width or None, patches=patches, preview=preview)
    return lf, res.losses


def _unet_recipe():
    """The CustomTTT recipe as published on AnimateDiff (:mod:`dual_adapter.customttt.unet`): the only U-Net
    CustomTTT runs on (:data:`METHOD_KINDS`)."""
    from .customttt import unet as recipe

    return recipe


def train_selective_lora(model, kind: str, prompt: str, *, photos: Sequence[torch.Tensor] | None = None,
                         clips: Sequence[torch.Tensor] | None = None, blocks: str = "", preset: str = "full",
                         rank: int = 32, lr: float = 0.0, steps: int = 500, seed: int = 0, optimizer: str = "auto",
                         height: int | None = None, width: int | None = None, checkpoint_every: int = 100, run=None,
                         resume: bool = False, callback=None, preview=None, patches: Sequence = ()):
    """Train a CustomTTT layer-selective LoRA on ``model`` (docs/customttt.md): an appearance LoRA on subject
    ``photos`` (each ``[H, W, 3]``, 0..1, a 1-frame video) or a motion LoRA on ``clips`` (each ``[F, H, W, 3]``).

    On CogVideoX / Wan a block is a transformer block (:func:`dual_adapter.customttt.train_selective_lora`; clips
    cut to the largest 4k+1 the shortest allows, at most the model's frame count). On AnimateDiff a block is a
    U-Net text layer and the published recipe trains (:func:`dual_adapter.customttt.unet.train_appearance_lora`:
    the spatial attention of the layers with the motion modules bypassed; ``train_motion_lora``: the motion
    modules' attention of the layers).

    Args:
        kind: ``"appearance"`` or ``"motion"``.
        blocks: ``"2,6"``; empty = the backbone's default: every block on CogVideoX / Wan, the published layers on
            AnimateDiff (appearance 2,6; motion 2,5).
        preset: attention projections (``full``, ``tap``, ``k_out``); on AnimateDiff an appearance LoRA is
            ``full`` only.
        lr: 0 = the backbone's default for ``kind``: CogVideoX / Wan AdamW 1e-4 appearance, 5e-4 motion (Lion
            1e-5 / 5e-5); AnimateDiff 1e-5 / 5e-5 (the authors').
        optimizer: ``auto`` = the backbone's: AdamW on CogVideoX / Wan; on AnimateDiff Lion when ``lion-pytorch``
            is installed, else AdamW (logged); or ``adamw`` / ``lion``.
        rank, steps, seed: LoRA rank (32), optimiser steps (500), the run's seed (LoRA start, noise, timesteps).
        height, width: pixels; None = the model's on CogVideoX / Wan, the frames' own size on AnimateDiff.
        run: a :class:`dual_adapter.runs.RunFolder` for the checkpoint / state file (None = none); ``resume``
            continues it.
        callback, preview, patches: progress callback, :class:`~dual_adapter.previews.PreviewOptions`, and the
            patches already on the model (CogVideoX / Wan: they stay under the new LoRA; AnimateDiff: not used, a
            warning says so).

    Returns:
        ``(lora, losses, completed)``: the LoRA, the ``{"step", "loss"}`` records and whether every step ran.

    Raises:
        DualAdapterError: a backbone without CustomTTT (naming ``model``), a kind without its data, bad blocks
            (naming the model's blocks / layers), preset, optimizer or settings.
    """
    from . import customttt as C
    from .media import fit_frames

    check_method(model, "CustomTTT")
    if kind not in ("appearance", "motion"):
        raise DualAdapterError(f"kind={kind!r}: expected 'appearance' or 'motion'")
    data = list(photos or []) if kind == "appearance" else list(clips or [])
    if not data:
        raise DualAdapterError("photos: an appearance LoRA needs subject photos" if kind == "appearance" else
                               "clip: a motion LoRA needs a motion clip")
    bb = _bb(model)
    if is_unet(model):
        R = _unet_recipe()
        if kind == "appearance" and preset != "full":
            raise DualAdapterError(f"preset: {preset!r} is for motion LoRAs; an appearance LoRA on AnimateDiff "
                                   "trains the spatial attention's q, k, v, out (set preset to full)")
        default = R.CustomTTTUNetConfig()
        layers = R.parse_layers(blocks) if str(blocks or "").strip() else getattr(default, f"{kind}_layers")
        cfg = R.CustomTTTUNetConfig(**{f"{kind}_layers": layers, f"{kind}_steps": int(steps),
                                       f"{kind}_lr": float(lr) or getattr(default, f"{kind}_lr")},
                                    motion_preset=preset, rank=int(rank), optimizer=optimizer, seed=int(seed))
        if height and width:
            size = (int(height), int(width))
            data = [fit_frames(x.unsqueeze(0), *size)[0] if kind == "appearance" else fit_frames(x, *size)
                    for x in data]
        if patches:
            log.warning("model: the %d patch(es) applied to it are not used by the AnimateDiff recipe's LoRA "
                        "training (it trains on the base model)", len(patches))
        stage = R.StageRun(state_path=run.state if run is not None else None, resume=bool(resume),
                           checkpoint_every=int(checkpoint_every), preview=preview)
        train = R.train_appearance_lora if kind == "appearance" else R.train_motion_lora
        lf, losses = train(bb, data, prompt, cfg, callback=callback, run=stage)
        return lf, losses, True
    if kind == "motion":
        t = _temporal(model)
        n = min((min(c.shape[0] for c in data) - 1) // t * t + 1, bb.default_size[0])
        kw = dict(clips=[c[:n] for c in data], num_frames=n)
    else:
        kw = dict(photos=data)
    spec = C.selective_spec(kind, blocks or None, rank=int(rank), targets=preset)
    over = dict(steps=int(steps), seed=int(seed), checkpoint_every=int(checkpoint_every))
    if lr:
        over["lr"] = float(lr)
    cfg = C.selective_train_config(kind, optimizer="adamw" if optimizer == "auto" else optimizer, **over)
    lf, res = C.train_selective_lora(getattr(model, "bundle", model), kind, blocks or None, prompt=prompt, spec=spec,
                                     cfg=cfg, callback=callback,
                                     checkpoint_path=run.checkpoint if run is not None else None,
                                     resume=bool(resume), preview=preview, height=height or None,
                                     width=width or None, patches=patches, **kw)
    return lf, res.losses, res.completed


def ttt_config(model, *, steps: int = 30, teacher_steps: int = 5, teacher_schedule: int = 25,
               teacher_cfg: float = 0.0, lr: float = 0.0, optimizer: str = "auto", seed: int = 0,
               reference: str = "x0_pred", w_appearance: float = 1.0, w_motion: float = 1.0,
               num_frames: int | None = None, height: int | None = None, width: int | None = None,
               shared_teacher_noise: bool = True, gradient_checkpointing: bool = True, checkpoint_every: int = 10,
               **options):
    """The settings of the TTT merge (:class:`~dual_adapter.customttt.TTTConfig`) on ``model``: the given values
    over the backbone's defaults (docs/customttt.md).

    * CogVideoX / Wan: :class:`~dual_adapter.customttt.TTTConfig`'s: AdamW lr 1e-5, weight decay 1e-2 (Lion:
      lr 1e-6, weight decay 0.1), teachers at CFG 6 from one shared noise (seed ``seed``), grad clip 1.0.
    * AnimateDiff: the published recipe's (:meth:`dual_adapter.customttt.unet.CustomTTTUNetConfig.ttt_config`):
      Lion (AdamW without ``lion-pytorch``, logged) lr 1e-6, betas (0.9, 0.99), weight decay 0.1, teachers at CFG
      9 each from its own noise (seeds ``seed``, ``seed + 1``), re-noising draws from ``seed + 2``, no clipping.

    Args:
        steps, teacher_steps, teacher_schedule: TTT steps (30), f (5), the DDIM schedule f is taken from (25).
        teacher_cfg, lr: 0 = the backbone's (above).
        optimizer: ``auto`` = the backbone's (above), ``adamw`` or ``lion``.
        reference, w_appearance, w_motion, num_frames, height, width, checkpoint_every: as
            :class:`~dual_adapter.customttt.TTTConfig` (None sizes = the model's).
        shared_teacher_noise, gradient_checkpointing: CogVideoX / Wan only (AnimateDiff: the recipe's, each teacher
            its own noise, no checkpointing).
        options: any other :class:`~dual_adapter.customttt.TTTConfig` field (``negative_prompt``,
            ``renoise_timesteps``, ``regenerate_references``, ``eval_draws`` ...), on every backbone.

    Raises:
        DualAdapterError: a backbone without CustomTTT (naming ``model``); ``lion`` without ``lion-pytorch`` on
            AnimateDiff; an unknown optimizer or setting.
    """
    import dataclasses

    from .customttt import TTTConfig

    check_method(model, "CustomTTT")
    bad = set(options) - {f.name for f in dataclasses.fields(TTTConfig)}
    if bad:
        raise DualAdapterError(f"ttt_config: unknown setting(s) {', '.join(sorted(bad))}")
    if optimizer not in ("auto", "adamw", "lion"):
        raise DualAdapterError(f"optimizer {optimizer!r}: expected auto, adamw or lion")
    if is_unet(model):
        recipe = _unet_recipe().CustomTTTUNetConfig(
            ttt_steps=int(steps), teacher_steps=int(teacher_steps), sampler_steps=int(teacher_schedule),
            optimizer=optimizer, seed=int(seed), reference=reference, weight_appearance=float(w_appearance),
            weight_motion=float(w_motion), num_frames=num_frames or None, height=height or None,
            width=width or None)
        if lr:
            recipe.ttt_lr = float(lr)
        if teacher_cfg:
            recipe.cfg = float(teacher_cfg)
        recipe.validate()
        return dataclasses.replace(recipe.ttt_config(), checkpoint_every=int(checkpoint_every), **options)
    opt = "adamw" if optimizer == "auto" else optimizer
    lion = TTTConfig.authors() if opt == "lion" else TTTConfig()
    return TTTConfig(steps=int(steps), teacher_steps=int(teacher_steps), teacher_schedule=int(teacher_schedule),
                     teacher_cfg=float(teacher_cfg or TTTConfig.teacher_cfg), teacher_seed=int(seed),
                     shared_teacher_noise=bool(shared_teacher_noise), reference=reference,
                     w_appearance=float(w_appearance), w_motion=float(w_motion), optimizer=opt,
                     lr=float(lr or lion.lr), weight_decay=lion.weight_decay, seed=int(seed),
                     gradient_checkpointing=bool(gradient_checkpointing), num_frames=num_frames or None,
                     height=height or None, width=width or None, checkpoint_every=int(checkpoint_every), **options)
