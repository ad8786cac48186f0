"""TAP motion LoRA, MotionDirector training and AH on the U-Net video backbones, as the SMA authors built them.

docs/unet.md ("Separate Motion from Appearance", Liu et al., ACM MM 2025). The authors'
code is ``LiuHuijie6410/SeperateMotionFromAppearance``; the facts below were read in it (paths and
line numbers of its newest commit, 3ddac5f) and this module re-implements them on diffusers 0.42:

**TAP** (temporal attention purification). Training LoRA targets, ``utils/lora.py`` l.359: inside
every ``TransformerTemporalModel`` (``transformer_in`` included: the exclusion at l.345 is commented
out) the Linear layers whose name contains ``attn1.to_k``, ``attn2.to_k``, ``attn1.to_out`` or
``attn2.to_out`` (both attentions of a temporal block are self-attentions over frames). So the
code's TAP is :data:`PRESETS` ``k_out``; the paper's wording ("reshape the attention only, never the
Value") is ``tap`` (``to_q`` + ``to_k``); ``full`` (q, k, v, out) is the plain LoRA baseline. On
AnimateDiff the temporal modules are the motion modules (``AnimateDiffTransformer3D``).

**MotionDirector training** (``train.py`` l.757-869): a spatial LoRA path on ``Transformer2DModel``
Linear layers under ``attn1`` or ``ff`` (``utils/lora.py`` l.357), trained on one random frame
(l.827-850) with the temporal LoRAs at scale 0, skipped with probability 0.2 (l.905); the temporal
path runs with the spatial LoRAs active (scale 1) and the loss ``mse(eps_pred, eps)`` plus the
appearance-debiased term with beta 1, alpha sqrt(2) and a random anchor frame (l.862-867). Each
LoRA is stepped only by its own loss (two optimisers, l.919-929). Rank 32, dropout 0.1, AdamW lr 5e-4
wd 1e-2, 1000 steps, 16 frames at 384x384 (``configs/*.yaml``). At inference the spatial LoRAs are
dropped (``validation_data.spatial_scale: 0``).

**AH** (appearance highway), inference only: ``infer/models/unet_3d_condition.py`` and
``infer/models/unet_3d_blocks.py`` (the training copies under ``models/`` have no AH):

* every ``CrossAttnDownBlock3D`` also returns the output of each *spatial* attention (before the
  temporal attention) and the downsampler output (blocks l.556, l.569); ``DownBlock3D`` returns
  its layer outputs (l.650-656);
* the U-Net keeps, of these, only down block 1's last entry (its downsampler output, the same tensor
  as the plain skip) and down block 2's spatial-attention outputs without its downsampler output
  (condition l.460-464);
* only **up block 1** takes its skips from that list (l.500-504); every other up block keeps the
  plain skips (the temporal-attention outputs). On ZeroScope (2 layers per block) up block 1's
  three skips become: down block 1's downsampler output (unchanged) and down block 2's two
  spatial-attention outputs (moved);
* the inference pipeline always passes ``infer=True`` and ``freeu={s1, s2, b1, b2}``
  (``infer/infer.py`` l.243-245, default ``--freeu '[1.1,1.,1,1]'`` l.295), and every
  ``CrossAttnUpBlock3D`` then applies a FreeU-style scaling before concatenating each skip
  (blocks l.773-803): when the incoming hidden state has 1280 channels its first 640 channels are
  multiplied by ``(b1 - 1) * m + 1`` (``m`` = channel mean, min-max normalised per sample) and the
  skip by ``s1`` (plain multiplication: the Fourier filter is commented out); when it has 640
  channels, the same with ``b2`` / ``s2`` on the first 320 channels. With the defaults that is: the
  skips of up block 1 and the first skip of up block 2 are multiplied by 1.1.
  1280 and 640 are ZeroScope's widths ``block_out_channels[2]`` and ``[1]``; this module compares with
  those entries of the loaded model's config, so the tiny model follows the same rule.

:class:`AppearanceHighway` is that inference change as a model patch (on/off = present or not;
``freeu=None`` gives the skip relocation alone). AH needs a U-Net's skips: on CogVideoX it raises.

LoRA files, injection and the patch are :mod:`dual_adapter.lora`'s, as on every backbone (``UNetLora``,
``UNetLoraPatch``, ``load_unet_lora``, ``check_unet_lora``, ``save_unet_lora`` remain as deprecated names of it).
"""
from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import DualAdapterError
from .seeds import seed_generator
from .lora import LoraFile, LoraPatch, LoraSpec, check_compatible, inject_lora, load_lora, lora_state_dict, \
    set_lora_strength
from .lora.file import UNET_LORA_FORMAT

__all__ = [
    "PRESETS", "SPATIAL_PATH_TARGETS", "AUTHORS_FREEU", "motion_lora_targets", "spatial_lora_targets",
    "UNetLora", "UNetLoraPatch", "save_unet_lora", "load_unet_lora", "is_unet_lora_file", "AppearanceHighway",
    "UNetMotionTrainConfig", "train_unet_motion_lora", "UNET_LORA_FORMAT",
]

#: LoRA targets inside every temporal attention module (``Attention``) of a U-Net.
PRESETS: dict[str, tuple[str, ...]] = {
    "tap": ("to_q", "to_k"),
    "k_out": ("to_k", "to_out.0"),
    "full": ("to_q", "to_k", "to_v", "to_out.0"),
}
#: MotionDirector's spatial path: Linear layers of ``Transformer2DModel`` under ``attn1`` or ``ff``
SPATIAL_PATH_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
#: ``(s1, s2, b1, b2)`` the authors' inference uses by default (``infer/infer.py`` l.295)
AUTHORS_FREEU = (1.1, 1.0, 1.0, 1.0)


def _unet_backbone(backbone):
    from .backbones import as_backbone

    bb = as_backbone(backbone)
    if bb.latent_layout != "BCFHW":
        raise DualAdapterError(f"this needs a U-Net video backbone (ZeroScope/ModelScope UNet3D or AnimateDiff); "
                               f"{bb.name!r} is {bb.family}")
    return bb


def motion_lora_targets(backbone, preset: str | Sequence[str] = "k_out", layers: Sequence[str] | None = None,
                        denoiser: nn.Module | None = None) -> list[str]:
    """Full module names of the motion LoRA: ``preset`` projections of every temporal attention.

    Args:
        preset: ``k_out`` (to_k, to_out.0: the authors' code, default), ``tap`` (to_q, to_k) or ``full``; or
            an explicit list of projections (``["to_k", "to_out.0"]``).
        layers: only temporal attentions under these module-name prefixes (``["down_blocks.2",
            "up_blocks.0"]``: CustomTTT's layer-selective motion LoRA); ``None`` = all.

    Raises:
        DualAdapterError: unknown preset or projection, or no matching module.
    """
    bb = _unet_backbone(backbone)
    projs = _projs(preset)
    attn = bb.attention_modules("temporal", denoiser)
    names = []
    for a, m in attn.items():
        if layers is not None and not any(a == p or a.startswith(p + ".") for p in layers):
            continue
        for p in projs:
            sub = m.get_submodule(p)
            if not isinstance(getattr(sub, "base_layer", sub), nn.Linear):
                raise DualAdapterError(f"{a}.{p} is not a Linear layer")
            names.append(f"{a}.{p}")
    if not names:
        raise DualAdapterError(f"no temporal attention matches layers={layers!r} on {bb.name!r}")
    return names


def _projs(preset) -> tuple[str, ...]:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise DualAdapterError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
        return PRESETS[preset]
    projs = tuple(preset)
    ok = {"to_q", "to_k", "to_v", "to_out.0"}
    bad = [p for p in projs if p not in ok]
    if bad or not projs:
        raise DualAdapterError(f"LoRA projections {bad or projs!r}: expected some of {sorted(ok)}")
    return projs


def spatial_lora_targets(backbone, layers: Sequence[str] | None = None, targets: Sequence[str] = SPATIAL_PATH_TARGETS,
                         denoiser: nn.Module | None = None) -> list[str]:
    """Full names of the spatial LoRA targets: ``targets`` inside every spatial transformer block
    (:meth:`~dual_adapter.backbones.base.VideoBackbone.spatial_transformers`: every ``Transformer2DModel`` of a
    diffusers U-Net).

    ``layers``: only under these module-name prefixes (CustomTTT's appearance layers).

    Raises:
        DualAdapterError: a backbone without spatial transformers (naming ``spatial_path``), or none under
            ``layers``.
    """
    bb = _unet_backbone(backbone)
    d = denoiser if denoiser is not None else bb.denoiser
    if not bb.spatial_transformers(d):
        raise DualAdapterError(f"spatial_path: model {bb.name!r} ({bb.family}) has no spatial transformers for "
                               f"MotionDirector's spatial path; set spatial_path off")
    out = []
    for name in bb.spatial_transformers(d):
        if layers is not None and not any(name == p or name.startswith(p + ".") for p in layers):
            continue
        tr = d.get_submodule(name)
        for i, _ in enumerate(tr.transformer_blocks):
            for t in targets:
                full = f"{name}.transformer_blocks.{i}.{t}"
                try:
                    sub = d.get_submodule(full)
                except AttributeError:
                    continue
                if isinstance(getattr(sub, "base_layer", sub), nn.Linear):
                    out.append(full)
    if not out:
        raise DualAdapterError(f"no spatial transformer matches layers={layers!r} on {bb.name!r}")
    return out


# --------------------------------------------------------------------------------------------
# LoRA files: the one mechanism of dual_adapter.lora (U-Net keys: unet.{module}.lora_A.weight / lora_B.weight)

#: Deprecated name of :class:`dual_adapter.lora.LoraFile` (a U-Net LoRA is a ``LoraFile`` with ``unet.*`` keys).
UNetLora = LoraFile
#: Deprecated name of :class:`dual_adapter.lora.LoraPatch`.
UNetLoraPatch = LoraPatch
#: Deprecated name of :func:`dual_adapter.lora.check_compatible` (``check_unet_lora(lora, backbone, denoiser=None)``).
check_unet_lora = check_compatible


def adapter_state(model: nn.Module, adapter: str, scale: float | None = None) -> dict[str, torch.Tensor]:
    """``unet.{module}.lora_{A,B}.weight`` of peft adapter ``adapter`` with its ``alpha / r`` (or ``scale``) folded
    into B: :func:`dual_adapter.lora.lora_state_dict` with ``fold``."""
    return lora_state_dict(model, adapter, fold=True if scale is None else float(scale))


def save_unet_lora(lora: LoraFile, path: str | Path, dtype: str = "fp32", overwrite: bool = False) -> Path:
    """Deprecated: ``lora.save(path, overwrite, dtype)`` (:func:`dual_adapter.lora.save_lora`), atomic, never
    overwriting unless asked. ``dtype``: ``fp32`` (default), ``bf16`` or ``fp16``."""
    from .backbones.base import parse_dtype

    return lora.save(path, overwrite=overwrite, dtype=parse_dtype(dtype))


_UNET_MODULES = ("down_blocks.", "up_blocks.", "mid_block.")
_kind_cache: dict[tuple, bool] = {}


def _file_keys(path: str | Path) -> list[str]:
    """The tensor names of a ``.safetensors`` file ([] when it cannot be read: its loader then says why)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception:
        return []


def is_unet_lora_file(path: str | Path) -> bool:
    """Whether a ``.safetensors`` LoRA file is for a U-Net (ZeroScope / ModelScope / AnimateDiff: keys name
    ``down_blocks.`` / ``up_blocks.`` / ``mid_block.`` modules) rather than a CogVideoX transformer. Reads only
    the file's header (cached per path, size and modification time); an unreadable file counts as not a U-Net
    LoRA (its loader then says what is wrong with it)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return False
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _kind_cache:
        keys = _file_keys(p)
        _kind_cache[key] = any(m in k for k in keys for m in _UNET_MODULES) and \
            not any(k.startswith("transformer.") for k in keys)
    return _kind_cache[key]


def load_unet_lora(path: str | Path, backbone=None) -> LoraFile:
    """Deprecated: :func:`dual_adapter.lora.load_lora` for a U-Net LoRA (keys ``unet.*``, whatever the file's layout).

    Raises:
        DualAdapterError: unreadable file; a CogVideoX LoRA (``transformer.*`` keys); a LoRA trained
            on another U-Net backbone than ``backbone`` (the message names both).
    """
    if any(k.startswith("transformer.") for k in _file_keys(path)):
        raise DualAdapterError(f"{path}: a CogVideoX LoRA (keys 'transformer.*'); load it on a CogVideoX model, "
                               f"not on a U-Net")
    lf = load_lora(path, backbone)
    return lf if backbone is not None else lf.with_prefix("unet")


# --------------------------------------------------------------------------------------------
# AH: appearance highway (inference)


class AppearanceHighway:
    """The SMA authors' inference-time AH on a UNet3D (ZeroScope / ModelScope), as a model patch.

    ``apply(unet)`` registers hooks on the given (weight-sharing) U-Net copy:

    * forward hooks on the spatial ``Transformer2DModel`` s of down block 2 record their outputs
      (the spatial-attention outputs, before the temporal attention);
    * a forward pre-hook on up block 1 replaces its skip tuple with ``(down block 1's downsampler
      output, down block 2's spatial-attention outputs...)``, last ``len(resnets)`` entries, as the
      authors' ``my_down_block_res_samples`` (see the module docstring for file/line facts);
    * with ``freeu=(s1, s2, b1, b2)`` (default :data:`AUTHORS_FREEU`), forward pre-hooks on the resnets of
      every cross-attention up block apply the authors' FreeU-style scaling to the concatenated
      ``[h, skip]`` input (``freeu=None``: skip relocation only).

    A model without the patch is the plain model (bit for bit); the patch changes nothing but the skips
    it moves (and, with ``freeu``, the scaling of the concatenated inputs it names).

    Raises:
        DualAdapterError: at ``apply``, when the model has no UNet3D-style down block 2 / up block 1
            with spatial transformers (e.g. CogVideoX, which has no skip connections).
    """

    def __init__(self, freeu: Sequence[float] | None = AUTHORS_FREEU, enabled: bool = True):
        if freeu is not None:
            freeu = tuple(float(v) for v in freeu)
            if len(freeu) != 4 or not all(math.isfinite(v) for v in freeu):
                raise DualAdapterError(f"AH freeu={freeu!r}: expected four finite numbers (s1, s2, b1, b2)")
        self.freeu, self.enabled = freeu, bool(enabled)

    def apply(self, unet: nn.Module) -> None:
        if not self.enabled:
            return
        down, up = getattr(unet, "down_blocks", None), getattr(unet, "up_blocks", None)
        if down is None or up is None or len(down) < 3 or len(up) < 2 or not hasattr(down[2], "attentions") \
                or getattr(down[1], "downsamplers", None) is None:
            raise DualAdapterError("AH (appearance highway) needs a U-Net with skip connections and spatial attention "
                                   "in down block 2 (ZeroScope / ModelScope UNet3D); this model has none. On "
                                   "CogVideoX there is no AH (docs/unet.md)")
        store: dict[str, Any] = {}

        def rec_spatial(j):
            def hook(mod, args, out):
                store.setdefault("spatial", {})[j] = out[0] if isinstance(out, tuple) else out.sample
            return hook

        def rec_down1(mod, args, out):
            store["down1"] = out[1][-1]  # the downsampler output of down block 1 (its last skip)

        handles = [down[1].register_forward_hook(rec_down1)]
        for j, attn in enumerate(down[2].attentions):
            handles.append(attn.register_forward_hook(rec_spatial(j)))

        def up1_pre(mod, args, kwargs):
            sp = store.pop("spatial", {})
            d1 = store.pop("down1", None)
            if d1 is None or len(sp) != len(down[2].attentions):
                raise DualAdapterError("AH: the down-block outputs were not recorded (was the U-Net called in the "
                                       "usual order?)")
            mine = (d1,) + tuple(sp[j] for j in range(len(sp)))
            n = len(mod.resnets)
            kwargs = dict(kwargs)
            kwargs["res_hidden_states_tuple"] = mine[-n:]
            return args, kwargs

        handles.append(up[1].register_forward_pre_hook(up1_pre, with_kwargs=True))
        if self.freeu is not None:
            handles += _freeu_hooks(unet, self.freeu)
        unet._dual_adapter_ah_handles = handles  # kept for remove()

    @staticmethod
    def remove(unet: nn.Module) -> None:
        """Remove the hooks ``apply`` put on ``unet`` (a copy normally just goes out of scope)."""
        for h in getattr(unet, "_dual_adapter_ah_handles", []):
            h.remove()
        unet._dual_adapter_ah_handles = []

    def __repr__(self) -> str:
        return f"AppearanceHighway(freeu={self.freeu})"


def _freeu_hooks(unet, freeu) -> list:
    """The authors' FreeU-style scaling in every cross-attention up block (``infer/models/unet_3d_blocks.py``
    l.773-803): before each resnet, ``[h, skip]`` -> ``[h * ((b - 1) * m + 1) on h's first half, skip * s]``
    when ``h`` has ``block_out_channels[2]`` (``b1``, ``s1``) or ``block_out_channels[1]`` (``b2``, ``s2``)
    channels. The two conditions are checked one after the other, as in the authors' code."""
    s1, s2, b1, b2 = freeu
    boc = list(unet.config.block_out_channels)
    c_hi, c_mid = int(boc[2]), int(boc[1])
    handles = []
    for blk in unet.up_blocks:
        if not getattr(blk, "has_cross_attention", False):
            continue  # UpBlock3D ignores the scaling in the authors' code
        state = {}

        def blk_pre(mod, args, kwargs, state=state):
            state["skips"] = [t.shape[1] for t in kwargs["res_hidden_states_tuple"]][::-1]  # popped from the end
            state["i"] = 0
            return None

        handles.append(blk.register_forward_pre_hook(blk_pre, with_kwargs=True))

        def res_pre(mod, args, kwargs, state=state):
            x = args[0] if args else kwargs["input_tensor"]
            i = state["i"]
            state["i"] = i + 1
            c_skip = state["skips"][i]
            h, hs = x[:, :-c_skip], x[:, -c_skip:]
            changed = False
            for c, b, s in ((c_hi, b1, s1), (c_mid, b2, s2)):
                if h.shape[1] != c:
                    continue
                if b != 1.0:
                    m = h.mean(1, keepdim=True)
                    B = m.shape[0]
                    mx = m.view(B, -1).max(-1).values.view(B, 1, 1, 1)
                    mn = m.view(B, -1).min(-1).values.view(B, 1, 1, 1)
                    m = (m - mn) / (mx - mn)
                    half = c // 2
                    h = torch.cat([h[:, :half] * ((b - 1) * m + 1), h[:, half:]], 1)
                    changed = True
                if s != 1.0:
                    hs = hs * s
                    changed = True
            if not changed:
                return None
            x = torch.cat([h, hs], 1)
            if args:
                return (x,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["input_tensor"] = x
            return args, kwargs

        for r in blk.resnets:
            handles.append(r.register_forward_pre_hook(res_pre, with_kwargs=True))
    return handles


# --------------------------------------------------------------------------------------------
# MotionDirector-style training of the TAP motion LoRA


@dataclass
class UNetMotionTrainConfig:
    """Settings of :func:`train_unet_motion_lora`. Defaults: the SMA authors' released code (docs/tap.md).

    The library, the ``train-lora`` command and the *Train Motion LoRA (TAP, U-Net)* node all take their
    defaults from here: TAP as published is ``k_out`` with the spatial path and the debiased loss on.

    Attributes:
        preset: temporal LoRA targets (:data:`PRESETS`): ``k_out`` (default: ``to_k`` + ``to_out.0`` of every
            temporal attention, the authors' code), ``tap`` (``to_q`` + ``to_k``, the paper's wording), ``full``.
        rank, alpha, dropout: LoRA size (32, 32, 0.1). lr, weight_decay: AdamW (5e-4, 1e-2).
        steps: optimiser steps (1000). seed: every step's randomness and the LoRAs' random start (``lora_A``).
        spatial_path: MotionDirector's spatial LoRA path (trained on single frames through the U-Net without
            its temporal modules, dropped at inference; on, as in the authors' code).
        spatial_skip_prob: probability of skipping the spatial path in a step (0.2, ``train.py`` l.905).
        debiased_loss: add the appearance-debiased term (beta 1; on, as always in the authors' code).
        optimizer: ``adamw`` (the authors') / ``lion`` / ``auto``.
        gradient_checkpointing: recompute activations (real models; off for tiny ones on CPU).
        layers: temporal attentions under these module prefixes only (None = all).
    """

    preset: str = "k_out"
    rank: int = 32
    alpha: float | None = None
    dropout: float = 0.1
    lr: float = 5e-4
    weight_decay: float = 1e-2
    steps: int = 1000
    seed: int = 0
    spatial_path: bool = True
    spatial_skip_prob: float = 0.2
    debiased_loss: bool = True
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    layers: list[str] | None = None

    def validate(self):
        _projs(self.preset)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise DualAdapterError(f"rank={self.rank!r}: must be an integer >= 1")
        if not 0 <= float(self.dropout) < 1:
            raise DualAdapterError(f"dropout={self.dropout!r}: must be in [0, 1)")
        if not 0 <= float(self.spatial_skip_prob) <= 1:
            raise DualAdapterError(f"spatial_skip_prob={self.spatial_skip_prob!r}: must be in [0, 1]")


def train_unet_motion_lora(
    backbone,
    clips: Sequence[torch.Tensor],
    prompt: str | Sequence[str],
    config: UNetMotionTrainConfig | None = None,
    *,
    callback: Callable[[int, int, dict], None] | None = None,
    on_checkpoint: Callable[[UNetLora, int], None] | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    preview=None,
) -> tuple[UNetLora, UNetLora | None, list[dict]]:
    """Train a motion LoRA (TAP preset) on clips, MotionDirector-style, on a U-Net backbone.

    Args:
        backbone: ``unet3d`` or ``animatediff`` :class:`~dual_adapter.backbones.base.VideoBackbone`.
        clips: frames ``[F, H, W, 3]`` float 0..1 each, at a size the model takes
            (``backbone.check_video_size``); the authors use 16 frames at 384x384.
        prompt: one prompt, or one per clip.
        config: see :class:`UNetMotionTrainConfig`.
        callback: ``callback(step, total, {"loss", ...})`` after each step; may raise to stop.
        on_checkpoint: ``on_checkpoint(motion_lora_so_far, step)`` every ``checkpoint_every`` steps and
            when the run stops early (interrupt / error), so that what was learned is kept.
        state_path: the run's state file (:func:`dual_adapter.training.save_train_state`: both LoRAs'
            weights, optimiser, schedule, step), rewritten at every checkpoint; None = none.
        resume: continue from ``state_path`` (same settings expected). The run-file rules (lock, refusing
            to replace a run, nothing to resume) are the caller's, through
            :func:`dual_adapter.training.training_run` (the ``train-lora`` command does this).
        preview: :class:`~dual_adapter.previews.PreviewOptions` (a validation video every ``every`` steps with the
            motion LoRA as it is then, the spatial LoRA off; default prompt: the first clip's), or None.

    Returns:
        ``(motion_lora, spatial_lora or None, losses)``; LoRA metadata names the backbone, preset and setting.

    Raises:
        DualAdapterError: bad clips / prompts / config, or a non-U-Net backbone.
    """
    from .patches import shallow_copy_module
    from .io import read_safetensors_metadata
    from .training import TrainConfig, save_train_state, train_loop

    bb = _unet_backbone(backbone)
    cfg = config or UNetMotionTrainConfig()
    cfg.validate()
    clips = list(clips)
    if not clips:
        raise DualAdapterError("clips: at least one motion clip is needed")
    prompts = [prompt] * len(clips) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(clips):
        raise DualAdapterError(f"{len(prompts)} prompts for {len(clips)} clips: give one prompt or one per clip")
    lat, texts = [], []
    for i, c in enumerate(clips):
        if not torch.is_tensor(c) or c.ndim != 4 or c.shape[-1] != 3:
            raise DualAdapterError(f"clip {i}: expected frames [F, H, W, 3] in 0..1, got "
                                   f"{tuple(c.shape) if torch.is_tensor(c) else type(c).__name__}")
        bb.check_video_size(int(c.shape[0]), int(c.shape[1]), int(c.shape[2]))
        lat.append(bb.encode_frames(c.float()).float())  # cached latents, as cache_latents: True
        texts.append(bb.encode_prompt(prompts[i]).float())
    model = shallow_copy_module(bb.denoiser)
    model.train()
    if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    alpha = float(cfg.alpha if cfg.alpha is not None else cfg.rank)
    t_names = motion_lora_targets(bb, cfg.preset, cfg.layers, denoiser=model)
    spec = LoraSpec(rank=cfg.rank, alpha=alpha, dropout=float(cfg.dropout), targets=["to_k"])
    init = seed_generator(cfg.seed)  # the LoRAs' random start: the run's seed, so a run repeats
    t_params = inject_lora(model, spec, "motion", target_names=t_names, generator=init)
    s_params: list = []
    if cfg.spatial_path:
        s_names = spatial_lora_targets(bb, denoiser=model)
        s_params = inject_lora(model, spec, "spatial", target_names=s_names, generator=init)
    groups = [{"params": t_params}] + ([{"params": s_params}] if s_params else [])
    sched = bb.noise_scheduler()
    T = int(sched.config.num_train_timesteps)
    saved: dict[str, Any] = {}

    def step_fn(k, g):
        i = int(torch.randint(len(lat), (1,), generator=g))
        x0, text = lat[i], texts[i]
        F = x0.shape[2]
        t = torch.randint(0, T, (1,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = sched.add_noise(x0, noise, t)
        target = bb.training_target(x0, noise, t)
        dev = bb.device
        info: dict = {}
        skip_spatial = bool(s_params) and float(torch.rand((), generator=g)) < cfg.spatial_skip_prob
        saved.clear()
        if s_params and not skip_spatial:
            # spatial path: one random frame, temporal LoRA off (train.py l.827-850)
            set_lora_strength(model, "motion", 0.0)
            set_lora_strength(model, "spatial", 1.0)
            j = int(torch.randint(F, (1,), generator=g))
            # one frame through the image U-Net: the authors' U-Net skips transformer_in, the temporal
            # convolutions and attentions when num_frames == 1 (diffusers would run them)
            with bb.without_temporal_modules(model):
                pred_s = bb.predict(xt[:, :, j:j + 1].to(dev), t.to(dev), text, denoiser=model).float()
            loss_s = torch.nn.functional.mse_loss(pred_s, target[:, :, j:j + 1].to(dev))
            loss_s.backward()
            saved["spatial"] = [p.grad.clone() if p.grad is not None else None for p in s_params]
            info["loss_spatial"] = float(loss_s.detach())
        if s_params:
            set_lora_strength(model, "spatial", 0.0 if skip_spatial else 1.0)
        set_lora_strength(model, "motion", 1.0)
        pred = bb.predict(xt.to(dev), t.to(dev), text, denoiser=model).float()
        tgt = target.to(dev)
        loss = torch.nn.functional.mse_loss(pred, tgt)
        info["loss_temporal_mse"] = float(loss.detach())
        if cfg.debiased_loss:
            a = int(torch.randint(F, (1,), generator=g))
            alpha_ = math.sqrt(2.0)  # (beta^2 + 1)^0.5 with beta = 1 (train.py l.862-863)
            pd = alpha_ * pred - pred[:, :, a:a + 1]
            td = alpha_ * tgt - tgt[:, :, a:a + 1]
            loss = loss + torch.nn.functional.mse_loss(pd, td)
        return loss, info

    def before_opt(k, info):
        # each LoRA learns only from its own loss (two optimisers in train.py l.919-929)
        if s_params:
            grads = saved.get("spatial")
            for j, p in enumerate(s_params):
                p.grad = grads[j] if grads is not None else None

    def current() -> UNetLora:
        return _finish(bb, model, "motion", cfg, t_names, role="motion")

    def on_ckpt(step, opt, sch, losses):
        if on_checkpoint is not None:
            on_checkpoint(current(), step)
        if state_path is not None:
            save_train_state(state_path, opt, sch, step, extra={"losses": list(losses)})

    start_losses: list = []
    if resume:
        if state_path is None or not Path(state_path).is_file():
            raise DualAdapterError(f"nothing to resume: no state file {str(state_path)!r}")
        start_losses = list((read_safetensors_metadata(state_path).get("extra") or {}).get("losses") or [])

    tc = TrainConfig(steps=int(cfg.steps), lr=float(cfg.lr), betas=(0.9, 0.999), weight_decay=float(cfg.weight_decay),
                     optimizer=cfg.optimizer, lr_schedule="constant", warmup_steps=0, grad_clip=0.0,
                     mixed_precision="fp32" if bb.device == "cpu" else "auto", gradient_checkpointing=False,
                     seed=int(cfg.seed), checkpoint_every=int(cfg.checkpoint_every))
    previewer = None
    if preview is not None and preview.enabled:
        from .previews import Previewer, backbone_renderer

        def inference_lora():  # the spatial LoRA is dropped at inference; each step sets both strengths again
            set_lora_strength(model, "motion", 1.0)
            if s_params:
                set_lora_strength(model, "spatial", 0.0)
            return contextlib.nullcontext()

        pemb = bb.encode_prompt(preview.prompt).float() if preview.prompt else texts[0]
        h, w = (int(x) for x in clips[0].shape[1:3])
        previewer = Previewer(preview, backbone_renderer(bb, pemb, preview, height=h, width=w)).bind(model, inference_lora)
    res = train_loop(groups, step_fn, tc, device_type=str(bb.device).split(":")[0], callback=callback,
                     before_optimizer_step=before_opt,
                     on_checkpoint=on_ckpt if (on_checkpoint or state_path is not None) else None,
                     resume_state=state_path if resume else None, start_losses=start_losses, preview=previewer)
    motion = current()
    motion.metadata["optimizer"] = res.optimizer_name
    spatial = _finish(bb, model, "spatial", cfg, None, role="spatial") if s_params else None
    return motion, spatial, res.losses


def _finish(bb, model, adapter, cfg, names, role) -> LoraFile:
    sd = adapter_state(model, adapter)
    meta = {"format": UNET_LORA_FORMAT, "backbone": bb.kind, "base_model": bb.name, "role": role,
            "method": "SMA motion LoRA (MotionDirector training)", "preset": cfg.preset if role == "motion" else
            "motiondirector_spatial", "rank": cfg.rank, "trained_alpha": float(cfg.alpha or cfg.rank),
            "steps": cfg.steps, "lr": cfg.lr, "spatial_path": cfg.spatial_path, "debiased_loss": cfg.debiased_loss}
    return LoraFile(sd, meta, name=f"{role}_lora")
