"""CustomTTT as its authors describe it, on AnimateDiff (docs/customttt.md).

CustomTTT (Bi et al., 2025; no code released) on an AnimateDiff U-Net:

1. **Prompt influence** (:func:`prompt_influence`): inject the concept prompt ``p*`` at one U-Net
   layer only (every other layer gets the neutral prompt ``p``) and measure how far that alone moves
   the noise prediction from the all-``p`` one toward the all-``p*`` one. The project page
   (customttt.github.io) states the finding this way: "text embedding injection solely at layers 2
   and 6 achieves comparable results to full-layer injection" (appearance).
2. **Layer-selective LoRAs**: an appearance LoRA on layers {2, 6} trained on the subject photos as
   1-frame videos *without the motion modules*; a motion LoRA on layers {2, 5} trained on clips, on
   the motion modules of those layers. Rank 32, dropout 0.1; Lion, betas (0.9, 0.99), wd 0.1;
   appearance lr 1e-5 x 500 steps, motion lr 5e-5 x 500 steps (supplementary material).
3. **TTT merge** (:func:`ttt_merge`): appearance teacher = base + appearance LoRA with the
   appearance prompt, motion teacher = base + motion LoRA with the motion prompt; each denoises
   f = 5 of 25 DDIM steps (CFG 9) from Gaussian noise; the student = base + both LoRAs (all LoRA
   weights trainable, lr 1e-6 x 30 steps) is trained under the combined prompt on the denoising loss
   toward each teacher's reference, ``L = L_appearance + L_motion``. Output: one merged LoRA.

This project's readings where the paper leaves a choice open (each a named option with a default):

* **"layer"** = a U-Net block where text enters (``backbone.text_layers()``), 0-based in forward
  order; on SD1.5 these are 7: ``down_blocks.0, .1, .2, mid_block, up_blocks.1, .2, .3``. So
  appearance {2, 6} = ``down_blocks.2`` + ``up_blocks.3``, motion {2, 5} = ``down_blocks.2`` +
  ``up_blocks.2``. The appearance LoRA sits on the spatial transformers' attention projections
  (``attn1``/``attn2`` q, k, v, out) of those blocks; the motion LoRA on the motion modules' attention
  of those blocks (preset ``full``; ``tap`` allowed).
* **reference** = the teacher's x0 prediction at step f (``"x0_pred"``, default): one extra guided teacher
  call at ``(z_f, t_f)``, where ``t_f`` is the timestep ``z_f`` sits at (761 after 5 of 25 DDIM steps); or
  ``z_f`` itself, re-noised forward from ``t_f`` (``"z_f_renoised"``) or taken as clean (``"z_f_as_x0"``,
  old name ``"z_f"``). The definitions are the ones every backbone shares
  (:func:`dual_adapter.customttt.teacher_reference`, docs/customttt.md).
* **prompt influence** = the one :func:`dual_adapter.customttt.prompt_influence`, one group per text layer.

* **re-noising** = t ~ U[0, 1000) (``t > t_f`` for ``z_f_renoised``); references are computed once; loss
  weights 1 and 1; the student in eval mode with LoRA dropout ``ttt_dropout`` (0), as on CogVideoX.

This module keeps the published recipe's own LoRA stages (the appearance LoRA trained without the motion modules)
and its settings (:class:`CustomTTTUNetConfig`); the merge is the one :func:`dual_adapter.customttt.ttt_merge`
(:meth:`CustomTTTUNetConfig.ttt_config` carries the recipe's settings into it).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .config import REFERENCE_ALIASES, REFERENCES, TTTConfig  # one set of definitions for every backbone
from ..errors import DualAdapterError
from ..lora import LORA_FORMAT, LoraFile, LoraPatch
from ..seeds import derived_seed, seed_generator
from ..unet_motion import UNET_LORA_FORMAT, adapter_state, motion_lora_targets, spatial_lora_targets

log = logging.getLogger(__name__)

__all__ = ["CustomTTTUNetConfig", "CustomTTTUNetResult", "parse_layers", "layer_names", "prompt_influence",
           "without_motion_modules", "train_appearance_lora", "train_motion_lora", "ttt_merge", "run_customttt",
           "APPEARANCE_TARGETS", "pick_optimizer"]

#: appearance LoRA targets inside each spatial transformer block of the chosen layers
APPEARANCE_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                      "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
_WARNED_NO_LION = False


def parse_layers(text: str | Sequence[int]) -> list[int]:
    """``"2,6"`` or ``[2, 6]`` -> ``[2, 6]``.

    Raises:
        DualAdapterError: not a comma-separated list of integers.
    """
    if isinstance(text, str):
        try:
            vals = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise DualAdapterError(f"layers {text!r}: expected comma-separated layer numbers, e.g. '2,6'") from None
    else:
        vals = [int(v) for v in text]
    if not vals:
        raise DualAdapterError(f"layers {text!r}: give at least one layer")
    return vals


def layer_names(backbone, layers: Sequence[int]) -> list[str]:
    """Module names of CustomTTT layers ``layers`` (indices into ``backbone.text_layers()``).

    Raises:
        DualAdapterError: an index out of range (the message lists the model's layers).
    """
    tl = backbone.text_layers()
    bad = [i for i in layers if not 0 <= int(i) < len(tl)]
    if bad:
        raise DualAdapterError(f"layers {bad} out of range: this model has {len(tl)} text layers "
                               f"({', '.join(f'{i}={b.name}' for i, b in enumerate(tl))})")
    return [tl[int(i)].name for i in layers]


def pick_optimizer(name: str) -> str:
    """``auto`` -> ``lion`` when ``lion-pytorch`` is installed (the authors' optimiser), else ``adamw`` with a
    logged message; ``lion`` without the package raises :class:`DualAdapterError`."""
    global _WARNED_NO_LION
    have = importlib.util.find_spec("lion_pytorch") is not None
    if name == "auto":
        if have:
            return "lion"
        if not _WARNED_NO_LION:
            _WARNED_NO_LION = True
            log.warning("CustomTTT: lion-pytorch is not installed, so AdamW is used instead of the authors' Lion "
                        "(pip install lion-pytorch to match the paper)")
        return "adamw"
    if name == "lion" and not have:
        raise DualAdapterError("optimizer 'lion' needs the lion-pytorch package (pip install lion-pytorch); "
                               "or use 'auto' / 'adamw'")
    if name not in ("lion", "adamw"):
        raise DualAdapterError(f"optimizer {name!r}: expected auto, lion or adamw")
    return name


@dataclass
class CustomTTTUNetConfig:
    """CustomTTT settings; defaults are the authors' (supplementary material) unless noted in the module doc."""

    appearance_layers: list[int] = field(default_factory=lambda: [2, 6])
    motion_layers: list[int] = field(default_factory=lambda: [2, 5])
    motion_preset: str = "full"
    rank: int = 32
    dropout: float = 0.1
    optimizer: str = "auto"
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    appearance_lr: float = 1e-5
    appearance_steps: int = 500
    motion_lr: float = 5e-5
    motion_steps: int = 500
    ttt_lr: float = 1e-6
    ttt_steps: int = 30
    sampler_steps: int = 25
    cfg: float = 9.0
    teacher_steps: int = 5
    reference: str = "x0_pred"
    ttt_dropout: float = 0.0
    weight_appearance: float = 1.0
    weight_motion: float = 1.0
    seed: int = 0
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None

    def validate(self):
        self.reference = REFERENCE_ALIASES.get(self.reference, self.reference)
        if not 0 <= float(self.ttt_dropout) < 1:
            raise DualAdapterError(f"ttt_dropout={self.ttt_dropout!r}: must be in [0, 1)")
        if self.reference not in REFERENCES:
            raise DualAdapterError(f"reference={self.reference!r}: expected one of {REFERENCES}")
        if not 1 <= int(self.teacher_steps) <= int(self.sampler_steps):
            raise DualAdapterError(f"teacher_steps={self.teacher_steps}: must be in 1..sampler_steps "
                                   f"({self.sampler_steps})")
        for k in ("appearance_steps", "motion_steps", "ttt_steps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DualAdapterError(f"{k}={v!r}: must be an integer >= 0")

    def ttt_config(self) -> TTTConfig:
        """The settings of the one TTT merge (:class:`~dual_adapter.customttt.config.TTTConfig`) for this recipe:
        ``ttt_steps`` steps of ``optimizer`` (:func:`pick_optimizer`) at ``ttt_lr`` with ``betas`` / ``weight_decay``
        and no gradient clipping; teachers: ``teacher_steps`` of ``sampler_steps`` DDIM steps at CFG ``cfg``, each
        from its own noise (seeds ``seed`` and ``seed + 1``); ``reference``, loss weights and ``ttt_dropout`` as
        given; the re-noising draws seeded by ``seed + 2``; the video size ``num_frames`` x ``height`` x ``width``.

        Raises:
            DualAdapterError: ``optimizer="lion"`` without ``lion-pytorch`` (:func:`pick_optimizer`).
        """
        return TTTConfig(steps=int(self.ttt_steps), teacher_steps=int(self.teacher_steps),
                         teacher_schedule=int(self.sampler_steps), teacher_scheduler="ddim", teacher_cfg=float(self.cfg),
                         teacher_seed=int(self.seed), shared_teacher_noise=False, reference=self.reference,
                         w_appearance=float(self.weight_appearance), w_motion=float(self.weight_motion),
                         dropout=float(self.ttt_dropout), optimizer=pick_optimizer(self.optimizer),
                         lr=float(self.ttt_lr), betas=tuple(self.betas), weight_decay=float(self.weight_decay),
                         grad_clip=0.0, gradient_checkpointing=False, seed=derived_seed(self.seed, 2),
                         num_frames=self.num_frames, height=self.height, width=self.width)


@dataclass
class CustomTTTUNetResult:
    appearance: LoraFile
    motion: LoraFile
    merged: LoraFile
    optimizer: str
    losses: dict = field(default_factory=dict)


def _check_animatediff(backbone):
    from ..backbones import as_backbone

    bb = as_backbone(backbone)
    if bb.kind != "animatediff":
        raise DualAdapterError(f"CustomTTT as published runs on AnimateDiff; {bb.name!r} is {bb.family} "
                               f"(CogVideoX and Wan: dual_adapter.customttt.ttt_merge)")
    return bb


@contextlib.contextmanager
def without_motion_modules(backbone, denoiser: nn.Module):
    """Run ``denoiser`` as the image U-Net: every motion module passes its input through unchanged
    (:meth:`~dual_adapter.backbones._unet.UNetVideoBackbone.without_temporal_modules`)."""
    with backbone.without_temporal_modules(denoiser) as d:
        yield d


@torch.no_grad()
def prompt_influence(backbone, concept_prompt: str, neutral_prompt: str, *, timesteps: Sequence[int] = (800, 500, 200),
                     seeds: Sequence[int] = (0,), num_frames: int | None = None, height: int | None = None,
                     width: int | None = None) -> list[dict]:
    """How much each U-Net text layer alone moves the prediction toward the concept prompt: the one
    :func:`dual_adapter.customttt.prompt_influence` with one group per text layer, in the U-Net's own output space
    (the noise prediction, ``space="v"``), read as one row per layer.

    For layer i: ``e_i`` = eps with ``p*`` at layer i and ``p`` elsewhere; ``e_p`` / ``e_*`` = all ``p`` / all
    ``p*``. Influence ``= 1 - |e_i - e_*| / |e_p - e_*|`` (1: layer i alone gives the full concept; 0: no effect),
    the norms taken over all ``timesteps`` x ``seeds`` draws (``x_t`` noised from Gaussian latents).

    Returns:
        One dict per layer ``{"layer", "name", "influence"}``, in layer order.

    Raises:
        DualAdapterError: as :func:`dual_adapter.customttt.prompt_influence` (e.g. identical prompts).
    """
    from ..backbones import as_backbone
    from .influence import prompt_influence as influence
    from .influence import text_blocks

    bb = as_backbone(backbone)
    res = influence(bb, {"concept": concept_prompt}, neutral_prompt, timesteps=timesteps, seeds=seeds, space="v",
                    top_k=1, num_frames=num_frames, height=height, width=width)
    names = [b.name for b in text_blocks(bb)]
    return [{"layer": i, "name": n, "influence": res.closeness["concept"][i]} for i, n in enumerate(names)]


def _train(bb, model, params, step_fn, *, lr, steps, cfg: CustomTTTUNetConfig, optimizer: str, callback, label,
           seed_offset=0, run=None, preview_prompt=None, preview_size=None, around=None):
    """One CustomTTT training stage through the shared loop. ``run``: :class:`StageRun` (state file, resume,
    previews) or None."""
    from ..training import TrainConfig, save_train_state, train_loop

    run = run or StageRun()
    tc = TrainConfig(steps=int(steps), lr=float(lr), betas=tuple(cfg.betas), weight_decay=float(cfg.weight_decay),
                     optimizer=optimizer, lr_schedule="constant", warmup_steps=0, grad_clip=0.0,
                     mixed_precision="fp32" if bb.device == "cpu" else "auto", gradient_checkpointing=False,
                     seed=int(cfg.seed) + seed_offset, checkpoint_every=int(run.checkpoint_every))

    def cb(k, n, info):
        if callback is not None:
            callback(k, n, dict(info, stage=label))

    state = Path(run.state_path) if run.state_path is not None else None

    def on_checkpoint(step, optimizer_, sched, losses):
        save_train_state(state, optimizer_, sched, step, extra={"losses": list(losses), "stage": label})

    start_losses: list = []
    if run.resume:
        if state is None or not state.is_file():
            raise DualAdapterError(f"nothing to resume: no state file {str(state)!r} for the {label} stage")
        from ..io import read_safetensors_metadata

        start_losses = list((read_safetensors_metadata(state).get("extra") or {}).get("losses") or [])
    previewer = None
    if run.preview is not None and run.preview.enabled:
        from ..previews import Previewer, backbone_renderer

        p = run.preview
        text = bb.encode_prompt(p.prompt or preview_prompt)
        h, w = preview_size or bb.default_size[1:]
        previewer = Previewer(p, backbone_renderer(bb, text, p, height=int(h), width=int(w))).bind(model, around)
    return train_loop([{"params": params}], step_fn, tc, device_type=str(bb.device).split(":")[0], callback=cb,
                      on_checkpoint=on_checkpoint if state is not None else None,
                      resume_state=state if run.resume else None, start_losses=start_losses, preview=previewer)


@dataclass
class StageRun:
    """Run files of one CustomTTT stage on a U-Net (appearance LoRA, motion LoRA or TTT merge).

    Attributes:
        state_path: the stage's state file (:func:`dual_adapter.training.save_train_state`: the LoRA weights,
            optimiser, schedule, step and losses), rewritten every ``checkpoint_every`` steps and when the stage
            stops; None = none.
        resume: continue the stage from ``state_path`` (bit-identical to an uninterrupted stage).
        checkpoint_every: steps between state files (0 = only at the end and when the stage stops).
        preview: :class:`~dual_adapter.previews.PreviewOptions` (validation videos of the stage; default prompt:
            the stage's prompt), or None.
    """

    state_path: str | Path | None = None
    resume: bool = False
    checkpoint_every: int = 100
    preview: Any = None


def _lora_meta(bb, role, layers, cfg, **extra):
    return {"format": UNET_LORA_FORMAT, "backbone": bb.kind, "base_model": bb.name, "role": role,
            "method": "CustomTTT", "layers": list(layers), "rank": cfg.rank, **extra}


def _train_role_lora(bb, latents: list, prompt: str, targets, role: str, *, lr, steps, cfg: CustomTTTUNetConfig,
                     callback, seed_offset: int, bypass_motion: bool, run=None, size=None,
                     **meta) -> tuple[LoraFile, list[dict]]:
    """Train one CustomTTT LoRA (``role`` "appearance" / "motion") on ``latents`` (each ``[1, C, F, h, w]``): each
    step one random item at one ``t``, the backbone's own objective (:meth:`VideoBackbone.training_loss`), on a
    weight-sharing copy of the denoiser whose ``targets(copy)`` modules get the LoRA; ``bypass_motion`` runs the
    forward without the motion modules (the appearance LoRA)."""
    from ..lora import LoraSpec, inject_lora
    from ..patches import shallow_copy_module
    opt = pick_optimizer(cfg.optimizer)
    text = bb.encode_prompt(prompt)
    model = shallow_copy_module(bb.denoiser).train()
    params = inject_lora(model, LoraSpec(rank=cfg.rank, alpha=float(cfg.rank), dropout=cfg.dropout, targets=["to_k"]),
                         role, target_names=targets(model), generator=seed_generator(cfg.seed))  # a run repeats
    sched = bb.noise_scheduler()

    def step_fn(k, g):
        x0 = latents[int(torch.randint(len(latents), (1,), generator=g))]
        with without_motion_modules(bb, model) if bypass_motion else contextlib.nullcontext():
            return bb.training_loss(model, sched, x0, text, generator=g), {}

    res = _train(bb, model, params, step_fn, lr=lr, steps=steps, cfg=cfg, optimizer=opt, callback=callback,
                 label=role, seed_offset=seed_offset, run=run, preview_prompt=prompt, preview_size=size)
    layers = cfg.appearance_layers if role == "appearance" else cfg.motion_layers
    meta = _lora_meta(bb, role, layers, cfg, prompt=prompt, **meta, optimizer=res.optimizer_name)
    return LoraFile(adapter_state(model, role), meta, name=f"{role}_lora"), res.losses


def train_appearance_lora(backbone, photos: Sequence[torch.Tensor], prompt: str, config: CustomTTTUNetConfig | None = None,
                          *, callback=None, run: StageRun | None = None) -> tuple[LoraFile, list[dict]]:
    """Appearance LoRA on the appearance layers, trained on photos ``[H, W, 3]`` (0..1) as 1-frame videos with
    the motion modules bypassed (previews sample with them, as the LoRA is used). ``run``: state file, resume and
    previews (:class:`StageRun`). Returns ``(lora, losses)``."""
    bb = _check_animatediff(backbone)
    cfg = config or CustomTTTUNetConfig()
    cfg.validate()
    if not photos:
        raise DualAdapterError("photos: at least one subject photo is needed")
    lat = []
    for i, p in enumerate(photos):
        if not torch.is_tensor(p) or p.ndim != 3 or p.shape[-1] != 3:
            raise DualAdapterError(f"photo {i}: expected [H, W, 3] in 0..1")
        bb.check_video_size(1, int(p.shape[0]), int(p.shape[1]))
        lat.append(bb.encode_frames(p.unsqueeze(0).float()).float())
    layers = layer_names(bb, cfg.appearance_layers)
    return _train_role_lora(bb, lat, prompt, lambda m: spatial_lora_targets(bb, layers, APPEARANCE_TARGETS, denoiser=m),
                            "appearance", lr=cfg.appearance_lr, steps=cfg.appearance_steps, cfg=cfg, callback=callback,
                            seed_offset=0, bypass_motion=True, run=run, size=tuple(photos[0].shape[:2]))


def train_motion_lora(backbone, clips: Sequence[torch.Tensor], prompt: str, config: CustomTTTUNetConfig | None = None,
                      *, callback=None, run: StageRun | None = None) -> tuple[LoraFile, list[dict]]:
    """Motion LoRA on the motion modules of the motion layers, trained on clips ``[F, H, W, 3]`` (0..1).
    ``run``: state file, resume and previews (:class:`StageRun`)."""
    bb = _check_animatediff(backbone)
    cfg = config or CustomTTTUNetConfig()
    cfg.validate()
    if not clips:
        raise DualAdapterError("clips: at least one motion clip is needed")
    lat = []
    for i, c in enumerate(clips):
        if not torch.is_tensor(c) or c.ndim != 4 or c.shape[-1] != 3:
            raise DualAdapterError(f"clip {i}: expected [F, H, W, 3] in 0..1")
        bb.check_video_size(int(c.shape[0]), int(c.shape[1]), int(c.shape[2]))
        lat.append(bb.encode_frames(c.float()).float())
    layers = layer_names(bb, cfg.motion_layers)
    return _train_role_lora(bb, lat, prompt, lambda m: motion_lora_targets(bb, cfg.motion_preset, layers, denoiser=m),
                            "motion", lr=cfg.motion_lr, steps=cfg.motion_steps, cfg=cfg, callback=callback,
                            seed_offset=1, bypass_motion=False, preset=cfg.motion_preset, run=run,
                            size=tuple(clips[0].shape[1:3]))


def teacher_reference(bb, lora: LoraFile, prompt: str, cfg: CustomTTTUNetConfig, seed: int) -> tuple[torch.Tensor, int]:
    """Denoise ``teacher_steps`` of ``sampler_steps`` DDIM steps (CFG ``cfg.cfg``) with base + ``lora`` from noise
    ``seed``: :func:`dual_adapter.customttt.teacher_reference`, the definition every backbone shares.

    Returns ``(reference [1, C, F, h, w], t_f)``: for ``x0_pred`` the teacher's x0 prediction at ``z_f`` (one
    extra guided call at ``(z_f, t_f)``) and 0; for the ``z_f`` references ``z_f`` and the timestep it sits at
    (``f = 5`` of DDIM 25: 761).
    """
    from .merge import teacher_reference as shared

    f0, h0, w0 = bb.default_size
    return shared(bb, None, bb.encode_prompt(prompt), None, teacher_steps=cfg.teacher_steps,
                  teacher_schedule=cfg.sampler_steps, scheduler="ddim", cfg=cfg.cfg, seed=seed,
                  num_frames=cfg.num_frames or f0, height=cfg.height or h0, width=cfg.width or w0,
                  reference=cfg.reference, patches=[LoraPatch(lora)])


def _checkpoint_of(state_path) -> Path | None:
    """The merged-LoRA checkpoint whose state file (:func:`dual_adapter.lora.train_state_path`) is ``state_path``."""
    if state_path is None:
        return None
    p = Path(state_path)
    if p.name == "state.safetensors":  # a run folder's
        return p.with_name("checkpoint.safetensors")
    if p.name.endswith(".state.safetensors"):
        return p.with_name(p.name[: -len(".state.safetensors")] + ".safetensors")
    raise DualAdapterError(f"state_path {str(p)!r}: expected state.safetensors or <name>.state.safetensors")


def ttt_merge(backbone, appearance: LoraFile, motion: LoraFile, *, appearance_prompt: str, motion_prompt: str,
              prompt: str, config: CustomTTTUNetConfig | None = None, callback=None,
              run: StageRun | None = None) -> tuple[LoraFile, list[dict], str]:
    """The test-time-training merge as published on AnimateDiff: the one
    :func:`dual_adapter.customttt.ttt_merge` with the recipe's settings (:meth:`CustomTTTUNetConfig.ttt_config`).
    Returns ``(merged_lora, losses, optimizer_name)``; the merged LoRA's metadata also records the recipe's
    ``role``, ``layers``, ``reference`` and prompts. ``run``: state file, resume and previews (:class:`StageRun`;
    the merged checkpoint is written beside the state file, and the teachers run again on resume, same seeds).

    Raises:
        DualAdapterError: a model that is not AnimateDiff; as :func:`dual_adapter.customttt.ttt_merge`.
    """
    from .merge import ttt_merge as one_merge

    bb = _check_animatediff(backbone)
    cfg = config or CustomTTTUNetConfig()
    cfg.validate()
    run = run or StageRun()
    tc = cfg.ttt_config()
    tc.checkpoint_every = int(run.checkpoint_every)
    res = one_merge(bb, appearance, motion, appearance_prompt=appearance_prompt, motion_prompt=motion_prompt,
                    prompt=prompt, config=tc, callback=callback, checkpoint_path=_checkpoint_of(run.state_path),
                    resume=bool(run.resume), preview=run.preview)
    merged = res.lora
    merged.name = "customttt_merged"
    merged.metadata.update(_lora_meta(bb, "merged", list(cfg.appearance_layers) + list(cfg.motion_layers), cfg,
                                      prompt=prompt, appearance_prompt=appearance_prompt, motion_prompt=motion_prompt,
                                      ttt_steps=cfg.ttt_steps, reference=cfg.reference,
                                      teacher_steps=cfg.teacher_steps, optimizer=res.train.optimizer_name))
    merged.metadata["format"] = LORA_FORMAT
    return merged, res.train.losses, res.train.optimizer_name


def run_customttt(backbone, photos, clips, *, appearance_prompt: str, motion_prompt: str, prompt: str,
                  config: CustomTTTUNetConfig | None = None,
                  callback: Callable[[int, int, dict], None] | None = None) -> CustomTTTUNetResult:
    """The whole method: appearance LoRA, motion LoRA, TTT merge (see module docstring)."""
    cfg = config or CustomTTTUNetConfig()
    app, la = train_appearance_lora(backbone, photos, appearance_prompt, cfg, callback=callback)
    mot, lm = train_motion_lora(backbone, clips, motion_prompt, cfg, callback=callback)
    merged, lt, opt = ttt_merge(backbone, app, mot, appearance_prompt=appearance_prompt, motion_prompt=motion_prompt,
                                prompt=prompt, config=cfg, callback=callback)
    return CustomTTTUNetResult(app, mot, merged, opt, {"appearance": la, "motion": lm, "ttt": lt})
