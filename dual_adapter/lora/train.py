"""The LoRA trainer (TAP motion LoRAs and appearance LoRAs) on the shared loop, for any backbone.

docs/tap.md. :func:`train_lora` encodes clips / photos once and trains on a weight-sharing copy of the denoiser with
the shared loop of :mod:`dual_adapter.training` and the backbone's objective, with MotionDirector's optional spatial
path and appearance-debiased loss; :func:`train_lora_on_latents` is its core on precomputed latents.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from ..seeds import seed_generator
from .file import LoraFile, _folded, _module_of, load_lora, lora_metadata, save_lora
from .inject import _adapter_names, _set_active, inject_lora, lora_modules, lora_state_dict
from .spec import PRESETS, LoraSpec

if TYPE_CHECKING:
    from ..training import TrainResult

log = logging.getLogger(__name__)


def lora_train_config(**overrides):
    """The shared loop's :class:`~dual_adapter.training.TrainConfig` with the motion-LoRA defaults.

    Authors' setting (docs/tap.md): AdamW, lr 5e-4, weight decay 1e-2, 1000 steps. This
    project's choices on top: betas (0.9, 0.999) and eps 1e-8 (AdamW's defaults), constant learning
    rate with no warm-up, grad-norm clip 1.0, plain AdamW (not 8-bit: a LoRA's optimiser state is
    small), gradient checkpointing on, bf16 autocast on GPU, checkpoint every 100 steps.
    """
    from ..training import TrainConfig

    kw = dict(steps=1000, lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, optimizer="adamw",
              lr_schedule="constant", warmup_steps=0, grad_clip=1.0)
    kw.update(overrides)
    return TrainConfig(**kw)


def _phi(y: torch.Tensor, anchor: int) -> torch.Tensor:
    """MotionDirector's appearance-debiasing map (beta = 1): ``sqrt(2) * y - y[:, anchor]`` over frames."""
    return math.sqrt(2.0) * y - y[:, anchor: anchor + 1]


def debiased_error(anchor: int):
    """``error_fn`` for :func:`training.diffusion_loss` giving MotionDirector's loss plus its
    appearance-debiased term: ``d^2 + phi(d)^2`` with ``d = x0_pred - x_0``.

    ``phi`` is linear, so ``phi(x0_pred) - phi(x_0) = phi(d)``, and noising ``phi(x_0)`` with the
    debiased noise ``phi(eps) = sqrt(2) eps - eps_anchor`` gives ``phi(x_t)``: the debiased term needs no
    second forward pass. The mean of this error is ``L + L_debiased``.
    """
    return lambda d: d ** 2 + _phi(d, anchor) ** 2


def _check_frames(x, what: str, ndim: int) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != ndim or x.shape[-1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        layout = "[F, H, W, 3]" if ndim == 4 else "[H, W, 3]"
        raise DualAdapterError(f"{what} must be a float tensor {layout} in 0..1, got {shape}")
    if x.numel() == 0:
        raise DualAdapterError(f"{what} is empty")
    x = x.detach().float()
    if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise DualAdapterError(f"{what} must hold finite values in 0..1 (got {float(x.min()):.3g}..{float(x.max()):.3g})")
    return x.clamp(0, 1)


def train_state_path(checkpoint_path: str | Path) -> Path:
    """The optimiser-state file written beside a LoRA checkpoint: ``<stem>.state.safetensors``, or
    ``state.safetensors`` in a run folder (:func:`dual_adapter.runs.side_file`)."""
    from ..runs import side_file

    return side_file(checkpoint_path, "state")


def spatial_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """The spatial-path LoRA written beside a checkpoint (``spatial_path=True``): ``<stem>.spatial.safetensors``, or
    ``spatial.safetensors`` in a run folder (:func:`dual_adapter.runs.side_file`)."""
    from ..runs import side_file

    return side_file(checkpoint_path, "spatial")


def train_lora(
    bundle,
    *,
    clips: Sequence[torch.Tensor] | None = None,
    photos: Sequence[torch.Tensor] | None = None,
    prompt: str,
    spec: LoraSpec | None = None,
    cfg=None,
    spatial_path: bool = False,
    debiased_loss: bool = False,
    callback: Callable[[int, int, dict], None] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    patches: Sequence = (),
    spatial_spec: LoraSpec | None = None,
    fixed_batch: bool = False,
    base_model: str | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    preview=None,
) -> tuple[LoraFile, "TrainResult"]:
    """Train a (motion) LoRA on clips and/or photos (docs/tap.md; TAP with the default spec).

    Latents and the prompt embedding are computed once (VAE posterior mode, T5), then the LoRA
    trains on a weight-sharing copy of ``bundle.transformer`` (never modified) with the shared loop
    (:func:`training.train_loop`) and the CogVideoX objective (:func:`training.diffusion_loss`). Each
    step takes one clip or photo at random (batch 1: clips may differ in length).

    Args:
        bundle: the loaded model (a :class:`~dual_adapter.backbones.cogvideox.CogVideoXBundle`, or any
            :class:`~dual_adapter.backbones.base.VideoBackbone` whose blocks hold ``spec``'s targets).
        clips: motion clips, each ``[F, H, W, 3]`` float 0..1 (any size: resized to cover and
            centre-cropped). Each clip is cut to ``num_frames`` (4k+1).
        photos: images ``[H, W, 3]`` 0..1, each trained as a 1-frame video (appearance LoRAs).
        prompt: the text used for every sample (e.g. ``"a person is playing guitar"``).
        spec: :class:`LoraSpec` (default: TAP, rank 32, alpha 32, dropout 0.1, all blocks).
        cfg: :class:`~dual_adapter.training.TrainConfig` (default :func:`lora_train_config`).
        spatial_path: MotionDirector's dual path: a second LoRA (``spatial_spec``, default the
            ``full`` preset at the same rank) trained on single random frames of the clips with only
            itself active; in the clip (temporal) step it is active but not updated by that step's
            loss. It is dropped afterwards: the returned LoRA is the motion LoRA only.
        debiased_loss: add MotionDirector's appearance-debiased loss on clips:
            ``L + mean(w * (phi(x0_pred) - phi(x0))^2)`` with ``phi(y) = sqrt(2) y - y_anchor`` over latent
            frames, the anchor a random latent frame (equivalent to ``eps~ = sqrt(2) eps - eps_anchor``
            on both target and prediction).
        callback: ``callback(step, total, record)`` after each step; may raise InterruptedByUser.
        checkpoint_path: ``.safetensors`` path for the LoRA checkpoint (rewritten every
            ``cfg.checkpoint_every`` steps, at the end and when the run stops); the optimiser state
            goes beside it (``<stem>.state.safetensors``, plus ``<stem>.spatial.safetensors``).
        resume: continue from ``checkpoint_path``'s state file (weights, optimiser, schedule, step; same
            settings expected). Without ``resume`` an existing checkpoint is never replaced: the run is
            refused (:func:`dual_adapter.training.check_run_files`); a lock file ``<checkpoint>.lock`` keeps
            two processes from sharing one checkpoint.
        num_frames, height, width: training video size; default the model's (49x480x720 on the
            released models). With ``num_frames=None`` a shorter clip uses its largest 4k+1 prefix.
        patches: model patches applied under the LoRA (e.g. train on top of another LoRA).
        fixed_batch: every step uses the same clip, timestep and noise (step 0's draw): a
            diagnostic that checks the LoRA can fit one target; not for real training.
        base_model: name recorded in the metadata (default ``bundle.name``).
        batch_size: samples per step (1, the authors'), drawn at random with replacement; more than 1 needs
            samples of one size and kind (clips of the same length, or photos only). In a data-parallel run
            (``accelerate launch``) it is the global batch, shared out over the processes.
        grad_accum: run each step's batch as this many micro-batches per process with accumulated gradients
            (1), so batch 3 runs within the memory of batch 1 with the batch-3 gradient (up to float rounding).
        preview: :class:`~dual_adapter.previews.PreviewOptions` (a validation video every ``every`` steps with
            the LoRA as it is then, the spatial path off; default prompt: ``prompt``), or None.

    Returns:
        ``(LoraFile, TrainResult)``: the motion LoRA (diffusers-format tensors + metadata) and the
        loop's per-step records.

    Raises:
        DualAdapterError: no clips/photos, bad tensors, sizes the model cannot take, bad spec/config,
            ``cfg.steps`` < 1, resume without a checkpoint, an existing checkpoint without resume, another
            process training with the same checkpoint, ``batch_size`` / ``grad_accum`` < 1, a batch of
            samples of different sizes, ``cfg.fsdp`` without 2+ processes or with a batch the processes
            cannot share equally.
        TrainingDiverged: non-finite loss or weights (nothing written; the last checkpoint stays).
        InterruptedByUser: from the callback (the checkpoint, if any, is written first).
    """
    from ..backbones import as_backbone
    from ..experts import require_one_denoiser

    bb = as_backbone(bundle)
    require_one_denoiser(bb, "train_lora")  # Wan 2.2 A14B: one LoRA per expert (dual_adapter.experts)
    spec = copy.deepcopy(spec) if spec is not None else LoraSpec()
    spec.validate()
    cfg = cfg if cfg is not None else lora_train_config()
    cfg.validate(min_steps=1)
    _check_batching(batch_size, grad_accum)
    clips = list(clips or [])
    photos = list(photos or [])
    if not clips and not photos:
        raise DualAdapterError("train_lora needs at least one motion clip (clips=) or photo (photos=)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DualAdapterError("prompt must be a non-empty string (e.g. 'a person is playing guitar')")
    if spatial_path and not clips:
        raise DualAdapterError("spatial_path needs motion clips (its single frames come from them)")
    f0, h0, w0 = bb.default_size
    height, width = int(height or h0), int(width or w0)
    t = bb.frame_step()
    from ..media import fit_frames

    clips = [_check_frames(c, f"clip {i}", 4) for i, c in enumerate(clips)]
    photos = [_check_frames(p, f"photo {i}", 3) for i, p in enumerate(photos)]
    prepared = []
    for i, c in enumerate(clips):
        n = num_frames
        if n is None:
            n = min(f0, (c.shape[0] - 1) // t * t + 1)
        elif c.shape[0] < n:
            raise DualAdapterError(f"clip {i} has {c.shape[0]} frames, fewer than num_frames={n}; load it with "
                                   f"media.load_clip(num_frames=...) (loops or holds short clips) or lower num_frames")
        bb.check_video_size(int(n), height, width)
        prepared.append(fit_frames(c[:n], height, width))
    if photos:
        bb.check_video_size(1, height, width)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    with _checkpoint_run(checkpoint_path, resume):  # refuse before encoding; held for the whole run
        return _train_lora(bb, prepared, photos, prompt, spec, cfg, spatial_path, debiased_loss, callback,
                           checkpoint_path, resume, height, width, patches, spatial_spec, fixed_batch, base_model,
                           batch_size, grad_accum, preview)


def _checkpoint_files(checkpoint_path: Path) -> dict[str, Path]:
    return {"checkpoint": checkpoint_path, "state": train_state_path(checkpoint_path),
            "spatial": spatial_checkpoint_path(checkpoint_path)}


def _checkpoint_run(checkpoint_path: Path | None, resume: bool):
    """The shared run rules (:func:`dual_adapter.training.training_run`) for a checkpoint file: a lock,
    no run replaced without ``resume``, nothing to resume refused."""
    from ..training import training_run

    if checkpoint_path is None:
        if resume:
            raise DualAdapterError("resume needs checkpoint_path (the interrupted run's checkpoint file)")
        return training_run(None, {}, resume=False)
    return training_run(None, _checkpoint_files(checkpoint_path), resume=resume, lock=checkpoint_path,
                        rename_hint="another checkpoint_path")


def _train_lora(bb, prepared, photos, prompt, spec, cfg, spatial_path, debiased_loss, callback, checkpoint_path,
                resume, height, width, patches, spatial_spec, fixed_batch, base_model, batch_size, grad_accum,
                preview=None):
    from ..media import fit_frames

    # ---- precompute latents and text once
    latents: list[torch.Tensor] = []
    kinds: list[str] = []
    frame_latents: list[torch.Tensor | None] = []
    for c in prepared:
        latents.append(bb.encode_frames(c))
        kinds.append("clip")
        frame_latents.append(bb.encode_frames(c[:, None]) if spatial_path else None)  # [F, 1, C, h, w]
    for p in photos:
        latents.append(bb.encode_frames(fit_frames(p[None], height, width)))
        kinds.append("photo")
        frame_latents.append(None)
    emb = bb.encode_prompt(prompt)
    # the image conditioning of each item, once, while the VAE is on the accelerator (Wan 2.1 I2V; None elsewhere)
    conds = [bb.item_conditioning(x) for x in latents]
    frame_conds = [bb.item_conditioning(f) if f is not None else None for f in frame_latents]
    previewer = None
    if preview is not None and preview.enabled:
        from ..previews import Previewer, backbone_renderer

        pemb = bb.encode_prompt(preview.prompt) if preview.prompt else emb
        previewer = Previewer(preview, backbone_renderer(bb, pemb, preview, height=height, width=width))
    meta = dict(prompt=prompt, train=dict(num_frames=[int(c.shape[0]) for c in prepared], height=height, width=width,
                                          clips=len(prepared), photos=len(photos)))

    # free accelerator memory for training (T5-XXL is ~9 GB in bf16); they are put back afterwards
    with bb.released("text_encoder", "vae"), bb.use("denoiser") as transformer:
        return train_lora_on_latents(
            transformer, bb.scheduler_config, latents=latents, prompt_embeds=emb, kinds=kinds,
            frame_latents=frame_latents, spec=spec, cfg=cfg, spatial_path=spatial_path,
            debiased_loss=debiased_loss, callback=callback, checkpoint_path=checkpoint_path, resume=resume,
            patches=patches, spatial_spec=spatial_spec, fixed_batch=fixed_batch,
            base_model=base_model or getattr(bb, "name", None), metadata=meta, batch_size=batch_size,
            grad_accum=grad_accum, preview=previewer, conditioning=conds, frame_conditioning=frame_conds)


def train_lora_on_latents(
    transformer: nn.Module,
    scheduler_config: Mapping,
    *,
    latents: Sequence[torch.Tensor],
    prompt_embeds: torch.Tensor,
    kinds: Sequence[str] | None = None,
    frame_latents: Sequence[torch.Tensor | None] | None = None,
    spec: LoraSpec | None = None,
    cfg=None,
    spatial_path: bool = False,
    debiased_loss: bool = False,
    callback: Callable[[int, int, dict], None] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    patches: Sequence = (),
    spatial_spec: LoraSpec | None = None,
    fixed_batch: bool = False,
    base_model: str | None = None,
    metadata: Mapping | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    preview=None,
    conditioning: Sequence | None = None,
    frame_conditioning: Sequence | None = None,
) -> tuple[LoraFile, "TrainResult"]:
    """The training core of :func:`train_lora`, on precomputed latents (also used by the benchmarks).

    Args:
        transformer: the CogVideoX transformer (never modified: a weight-sharing copy trains), on the
            training device.
        scheduler_config: the model's noise-scheduler config (``bundle.scheduler_config``).
        latents: training samples, each ``[1, F', C, h, w]`` scaled VAE latents (1 latent frame for photos).
        prompt_embeds: ``[1, L, D_text]`` T5 embedding of the training prompt.
        kinds: ``"clip"`` / ``"photo"`` per sample (default all clips); the spatial path and the
            debiased loss apply to clips.
        frame_latents: per sample, ``[F, 1, C, h, w]`` single-frame latents of its frames (needed for
            clips when ``spatial_path``), or None.
        metadata: extra metadata merged into the LoRA's (``train`` dicts are merged).
        preview: a :class:`~dual_adapter.previews.Previewer` (bound here to the model being trained), or None.
        conditioning: per sample, its image conditioning (an image-to-video model's
            :class:`~dual_adapter.backbones.base.ImageConditioning` of batch 1, from
            :meth:`~dual_adapter.backbones.base.VideoBackbone.item_conditioning`) or None; None (or a None entry):
            the objective builds it from the step's latents (on Wan 2.1 I2V a VAE decode and encode every step).
        frame_conditioning: per sample, the conditioning of its ``frame_latents`` (batch ``F``) or None; as
            ``conditioning``, for the spatial path.
        Others: as :func:`train_lora`.

    Returns:
        ``(LoraFile, TrainResult)``.
    """
    spec = copy.deepcopy(spec) if spec is not None else LoraSpec()
    spec.validate()
    cfg = cfg if cfg is not None else lora_train_config()
    cfg.validate(min_steps=1)
    items = list(latents)
    if not items:
        raise DualAdapterError("nothing to train on: no latents")
    for i, x in enumerate(items):
        if not torch.is_tensor(x) or x.ndim != 5 or x.shape[0] != 1:
            raise DualAdapterError(f"latents[{i}]: expected [1, F, C, h, w], got "
                                   f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    kinds = list(kinds) if kinds is not None else ["clip"] * len(items)
    frame_latents = list(frame_latents) if frame_latents is not None else [None] * len(items)
    if spatial_path and any(k == "clip" and f is None for k, f in zip(kinds, frame_latents)):
        raise DualAdapterError("spatial_path needs frame_latents for every clip")
    _check_batching(batch_size, grad_accum)
    if batch_size > 1 and len({(k, tuple(x.shape)) for k, x in zip(kinds, items)}) > 1:
        sizes = sorted({f"{k} {list(x.shape)}" for k, x in zip(kinds, items)})
        raise DualAdapterError(f"batch_size={batch_size} needs training samples of one size and kind (a batch is "
                               f"one tensor), got {', '.join(sizes)}; use batch_size=1 (grad_accum then has nothing "
                               f"to split), clips of the same length, or photos only")
    emb = prompt_embeds
    conds = _per_item(conditioning, len(items), "conditioning")
    frame_conds = _per_item(frame_conditioning, len(items), "frame_conditioning")
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    with _checkpoint_run(checkpoint_path, resume):
        return _train_on_latents(transformer, scheduler_config, items, emb, kinds, frame_latents, spec, cfg,
                                 spatial_path, debiased_loss, callback, checkpoint_path, resume, patches, spatial_spec,
                                 fixed_batch, base_model, metadata, batch_size, grad_accum, preview, conds,
                                 frame_conds)


def _per_item(values, n: int, name: str) -> list:
    """``values`` as one entry per training sample (None: ``n`` Nones)."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise DualAdapterError(f"{name}: got {len(values)} entries, expected one per training sample ({n})")
    return values


def _check_batching(batch_size, grad_accum) -> None:
    for k, v in (("batch_size", batch_size), ("grad_accum", grad_accum)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DualAdapterError(f"{k}={v!r}: must be an integer >= 1")


def _train_on_latents(transformer, scheduler_config, items, emb, kinds, frame_latents, spec, cfg, spatial_path,
                      debiased_loss, callback, checkpoint_path, resume, patches, spatial_spec, fixed_batch, base_model,
                      metadata, batch_size, grad_accum, preview, conds, frame_conds):
    from ..patches import shallow_copy_module
    from ..backbones import backbone_for
    from ..backbones.base import ImageConditioning
    from ..training import (all_reduce_grads, batch_diffusion_loss, check_micro_batches, dist_rank_world,
                           save_train_state, shard_frozen_weights, step_generator, train_loop)

    # ---- the trainable copy
    model = shallow_copy_module(transformer)
    _materialize_inference_tensors(model)
    for p in patches or ():
        p.apply(model)
    model.eval()
    sspec = None
    spatial_params: list[nn.Parameter] = []
    init = seed_generator(cfg.seed)  # lora_A's random init: the same seed repeats the run
    params = inject_lora(model, spec, "default", generator=init)
    param_groups = [{"params": params}]
    if spatial_path:
        sspec = copy.deepcopy(spatial_spec) if spatial_spec is not None else LoraSpec(
            rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout, targets=list(PRESETS["full"]),
            blocks=spec.blocks)
        spatial_params = inject_lora(model, sspec, "spatial", generator=init)
        param_groups.append({"params": spatial_params})
    for m in lora_modules(model).values():
        for d in m.lora_dropout.values():
            d.train(True)
    if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    if cfg.fsdp:
        check_micro_batches(batch_size, grad_accum, "batch_size")
        shard_frozen_weights(model, params + spatial_params, device=next(transformer.parameters()).device,
                             release_loaded=cfg.fsdp_release_loaded)
    bb = backbone_for(transformer, dict(scheduler_config))
    sched = bb.noise_scheduler()
    device_type = next(transformer.parameters()).device.type
    all_adapters = _adapter_names(model)

    resume_state = None
    start_losses: list = []
    weights_step = None
    if resume:
        if not checkpoint_path.is_file():
            raise DualAdapterError(f"resume: the checkpoint {str(checkpoint_path)!r} is missing beside its state file; "
                                   f"start a new run")
        ck = load_lora(checkpoint_path)
        weights_step = int((ck.metadata.get("train") or {}).get("steps_done", -1))
        _load_into(model, "default", ck)
        if spatial_path:
            sp = spatial_checkpoint_path(checkpoint_path)
            if not sp.is_file():
                raise DualAdapterError(f"resume with spatial_path: {str(sp)!r} is missing")
            _load_into(model, "spatial", load_lora(sp))
        resume_state = train_state_path(checkpoint_path)
        from ..io import read_safetensors_metadata

        start_losses = list((read_safetensors_metadata(resume_state).get("extra") or {}).get("losses") or [])

    stash: dict[int, torch.Tensor] = {}
    world = dist_rank_world()[1]

    def step_fn(step: int, gen: torch.Generator):
        if fixed_batch:
            gen = step_generator(cfg.seed, 0)
        idx = torch.randint(len(items), (batch_size,), generator=gen).tolist()
        kind = kinds[idx[0]]
        x0 = items[idx[0]] if batch_size == 1 else torch.cat([items[i] for i in idx])
        info: dict = {"sample": idx[0]} if batch_size == 1 else {}
        stash.clear()
        if spatial_path and kind == "clip":
            n_fl = frame_latents[idx[0]].shape[0]
            js = torch.randint(n_fl, (batch_size,), generator=gen).tolist()
            frames = torch.cat([frame_latents[i][j: j + 1] for i, j in zip(idx, js)])
            _set_active(model, ["spatial"])
            try:
                fc = ImageConditioning.cat([None if frame_conds[i] is None else frame_conds[i].select(torch.tensor([j]))
                                            for i, j in zip(idx, js)])
                ls = batch_diffusion_loss(model, sched, frames, emb, gen, grad_accum=grad_accum, cond=fc)
                if ls.requires_grad:
                    ls.backward()  # the spatial path's gradient, kept apart from the clip loss's (see below)
            finally:
                _set_active(model, all_adapters)
            for p in spatial_params:
                if p.grad is not None:
                    stash[id(p)] = p.grad.detach().clone()
                    p.grad = None
            info["loss_spatial"] = ls.detach()
        error_fn = None
        if debiased_loss and kind == "clip" and x0.shape[1] > 1:
            p_t = bb.time_patch(model)
            n_frames = -(-x0.shape[1] // p_t) * p_t  # after the 1.5 models' padding
            error_fn = debiased_error(int(torch.randint(n_frames, (1,), generator=gen)))
        loss = batch_diffusion_loss(model, sched, x0, emb, gen, grad_accum=grad_accum, error_fn=error_fn,
                                    cond=ImageConditioning.cat([conds[i] for i in idx]))
        return loss, info

    def before_optimizer_step(step: int, info: dict):
        # MotionDirector's dual path: the spatial LoRA runs in the clip step but learns from its
        # single-frame loss only, so its gradient from the clip loss is replaced by the stashed one
        # (summed over the processes in a data-parallel run, as train_loop sums the others)
        for p in spatial_params:
            p.grad = stash.get(id(p))
        if world > 1 and "loss_spatial" in info:
            import torch.distributed as dist

            all_reduce_grads(spatial_params)
            dist.all_reduce(info["loss_spatial"])

    extra = dict(metadata or {})
    train_md = dict(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, optimizer=cfg.optimizer,
                    lr_schedule=cfg.lr_schedule, spatial_path=bool(spatial_path), debiased_loss=bool(debiased_loss),
                    fixed_batch=bool(fixed_batch), batch_size=int(batch_size), grad_accum=int(grad_accum))
    train_md.update(extra.pop("train", None) or {})

    def make_file(steps_done: int, completed: bool) -> LoraFile:
        md = lora_metadata(spec, transformer, base_model=base_model, **extra)
        md["train"] = dict(train_md, steps_done=int(steps_done), completed=bool(completed))
        sd = lora_state_dict(model, "default")
        return LoraFile.from_state_dict(sd, md, alphas={_module_of(k): float(spec.alpha) for k in sd})

    def on_checkpoint(step, optimizer, lr_schedule, losses):
        if checkpoint_path is None or dist_rank_world()[0] != 0:  # one writer in a data-parallel run
            return
        make_file(step, step >= cfg.steps).save(checkpoint_path, overwrite=True)
        if spatial_path:
            smd = lora_metadata(sspec, transformer, base_model=base_model, role="spatial path (not for inference)")
            save_lora(spatial_checkpoint_path(checkpoint_path), lora_state_dict(model, "spatial"), smd, overwrite=True)
        save_train_state(train_state_path(checkpoint_path), optimizer, lr_schedule, step, extra={"losses": list(losses)})

    if preview is not None:
        import contextlib

        @contextlib.contextmanager
        def inference_lora():  # the spatial path is dropped at inference
            _set_active(model, ["default"])
            try:
                yield
            finally:
                _set_active(model, all_adapters)

        preview.bind(model, inference_lora if spatial_path else None)
    from ..memory import memory_levers

    with torch.inference_mode(False), torch.enable_grad(), \
            memory_levers(model, fp8=getattr(cfg, "fp8_base", False), block_swap=getattr(cfg, "block_swap", 0),
                          release_loaded=cfg.fsdp_release_loaded, trainable=params + spatial_params):
        result = train_loop(param_groups, step_fn, cfg, device_type=device_type, callback=callback,
                            before_optimizer_step=before_optimizer_step if spatial_path else None,
                            on_checkpoint=on_checkpoint, resume_state=resume_state, start_losses=start_losses,
                            resume_weights_step=weights_step,
                            checkpoint_note=f"{checkpoint_path} + {train_state_path(checkpoint_path).name}"
                            if checkpoint_path else "", distributed=world > 1, preview=preview)
    lf = make_file(result.steps_done, result.completed)
    # the file convention (alpha == rank): fold the scale in memory too, so that saving / applying agree
    return _folded(lf), result


def _materialize_inference_tensors(model: nn.Module) -> int:
    """Replace, in ``model`` only, parameters / buffers created under ``torch.inference_mode()`` by
    normal copies: autograd cannot save inference tensors for backward. ComfyUI loads models under
    inference mode, so this can copy the whole transformer (logged). Returns the number of bytes copied."""
    memo: dict[int, torch.Tensor] = {}
    copied = 0
    with torch.inference_mode(False), torch.no_grad():
        for mod in model.modules():
            for store in (mod._parameters, mod._buffers):
                for k, t in list(store.items()):
                    if t is None or not t.is_inference():
                        continue
                    if id(t) not in memo:
                        c = t.clone()
                        memo[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
                        copied += t.numel() * t.element_size()
                    store[k] = memo[id(t)]
    if copied:
        log.warning("the model's weights were created under torch.inference_mode(); training uses a %.2f GB copy "
                    "(load the model outside inference mode to avoid it)", copied / 1e9)
    return copied


def _load_into(model, adapter: str, lora: LoraFile) -> None:
    """Copy a LoRA file's tensors into an existing adapter (resume); folded scales are undone."""
    layers = lora_modules(model, adapter)
    mods = lora.modules
    if sorted(mods) != sorted(layers):
        raise DualAdapterError(f"resume: checkpoint {lora.path!r} targets {len(mods)} modules, this run "
                               f"{len(layers)}; resume with the same preset, targets and blocks")
    with torch.no_grad():
        for mod in mods:
            m = layers[mod]
            unfold = m.lora_alpha[adapter] / m.r[adapter] / (lora.alphas[mod] / lora.ranks[mod])
            a, b = lora.tensor(mod, "A"), lora.tensor(mod, "B")
            if tuple(a.shape) != tuple(m.lora_A[adapter].weight.shape):
                raise DualAdapterError(f"resume: checkpoint rank {a.shape[0]} != this run's rank {m.r[adapter]}")
            m.lora_A[adapter].weight.copy_(a)
            m.lora_B[adapter].weight.copy_(b / unfold)
