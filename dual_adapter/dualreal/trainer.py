"""DualReal's dual-aware joint training (docs/dualreal.md; paper Sec. 3.2, eqs. 4-6).

Each step picks a phase: *motion* with probability ``motion_ratio``, else *identity*.

* identity phase: a batch of subject photos, each a 1-frame video (1 latent frame), with the
  identity prompt (e.g. ``"dog *"``) and no reference embedding;
* motion phase: a batch of motion clips with the motion prompt; ``c`` = the reference-image
  embedding of one frame of that clip (one random frame per clip, fixed for the run), replaced by
  zeros with probability ``p_image_zero``.

Both adapter sets run in every forward pass (the frozen one is the "prior" of the other
dimension). The gradient mask (eqs. 4-6) sets the inactive phase's adapter gradients to ``None``
after backward, so the optimiser leaves them bit-identical (AdamW skips parameters without a
gradient: no weight decay, no momentum update). The StageBlender trains in both phases.

Everything costly is done once up front: VAE latents of every photo and clip, the two T5 prompt
embeddings and the reference embeddings; then the VAE and T5 are moved off the accelerator
(``bundle.release``) for the run and moved back afterwards. Training runs on a weight-sharing copy
of the transformer (the loaded model is never changed) through the shared
:func:`dual_adapter.training.train_loop` (AdamW / 8-bit AdamW, cosine-with-restarts after warm-up,
grad clipping, bf16 autocast on GPU, per-step seeding, checkpoints, resume, callback).

Run files, written next to ``out`` (``X.safetensors``) when given:
``X.partial.safetensors`` (adapters so far, loadable with :func:`load_adapters`),
``X.state.safetensors`` (weights + optimiser + schedule + step, for ``resume=True``; a complete
resume point on its own), ``X.losses.jsonl`` (one JSON record per step) and, while the run is
going, ``X.safetensors.lock``. A run never replaces another run's files: without ``resume`` it is
refused when any of them exists, with ``resume`` when there is no state file
(:func:`dual_adapter.training.training_run`).

Size: just over the limit: the paper's data preparation and its two-stage training loop share private
helpers; it splits when either grows.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..backbones import VideoBackbone, as_backbone, backbone_for
from ..errors import DualAdapterError
from ..experts import require_one_denoiser
from ..patches import patched_copy
from ..seeds import derived_seed, seed_generator
from ..training import (TrainConfig, batch_diffusion_loss, check_micro_batches, dist_rank_world,
                        save_train_state, shard_frozen_weights, train_loop, training_run, write_loss_log)
from .adapters import FORMS, DualRealAdapters, DualRealConfig
from .checkpoint import DualRealAdapterSet, load_adapters, save_adapters
from .patch import DualRealPatch

log = logging.getLogger(__name__)

__all__ = ["CLIP_SAMPLINGS", "LATENT_SAMPLINGS", "load_motion_clips", "DualRealOptions", "DualRealData", "DualRealResult", "run_paths", "finalize_run", "prepare_dualreal_data",
           "train_dualreal_on_data", "train_dualreal"]


#: How motion clips are decoded (see :class:`DualRealOptions`); the first is the authors' and the default.
CLIP_SAMPLINGS = ("native", "fps")
#: How training latents come from the VAE posterior (see :class:`DualRealOptions`); the first is the default.
LATENT_SAMPLINGS = ("sample", "mode")


#: StageBlender weight groups of the paper (Table 3): what ``groups=0`` means on a model with at least 7 blocks.
DEFAULT_GROUPS = 7


@dataclass
class DualRealOptions:
    """DualReal-specific training options (the loop's own settings are in :class:`TrainConfig`).

    Attributes:
        hidden: adapter bottleneck width (64). groups: StageBlender weight groups; 0 (the default) = the
            paper's 7, or one per block on a model with fewer blocks (e.g. 4 on the built-in mini). An explicit
            count above the model's blocks is capped with a warning.
        form: ``"official"`` or ``"zero_init"`` (see :mod:`~dual_adapter.dualreal.adapters`).
        controller: train the StageBlender (False = fixed w_id = w_mo = 0.1, the ablation).
        motion_ratio: probability that a step is a motion step (0.5), in [0, 1].
        p_image_zero: probability of replacing a clip's reference embedding by zeros (0).
        motion_batch: clips per motion step (3, the authors'). identity_batch: photos per identity step (1).
            Drawn with replacement from the given clips / photos.
        num_frames, height, width: training size; default the model's (49 x 480 x 720; tiny: 9 x 64 x 96).
        lam: weight of ``W_cond(c)`` in the motion adapters' input (1).
        clip_sampling: how motion clips given as files are decoded (:func:`load_motion_clips`; recorded in
            the metadata): ``"native"`` (default, the authors': ``num_frames`` consecutive source frames, e.g.
            49 frames = about 2 s of a 25 fps clip) or ``"fps"`` (resampled to ``clip_fps``, 8 = CogVideoX's
            rate: 49 frames = 6 s). Native keeps the clip's frame-to-frame motion but covers less of the action
            and, played at CogVideoX's 8 fps, runs about 3x slower than the source; ``fps`` covers more of the
            action at the speed CogVideoX generates, with larger steps between frames.
        clip_fps: frame rate for ``clip_sampling="fps"`` (8).
        latent_sampling: ``"sample"`` (default, the authors': a fresh VAE posterior sample
            ``mean + std * eps`` per step, from the mean / std computed once) or ``"mode"`` (the posterior
            mode, encoded once: the same latent every step). Wan 2.1 I2V's conditioning on a clip's first frame
            is computed once, before training, from the posterior mean in both.
        grad_accum: run each step's batch as this many micro-batches, accumulating gradients (1 = one
            pass). The authors' motion batch 3 with ``grad_accum=3`` runs as 3 x 1 within the memory of
            batch 1, and gives the batch-3 gradient (up to float rounding). Capped at the batch size.
    """

    hidden: int = 64
    groups: int = 0
    form: str = "official"
    controller: bool = True
    motion_ratio: float = 0.5
    p_image_zero: float = 0.0
    motion_batch: int = 3
    identity_batch: int = 1
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    lam: float = 1.0
    clip_sampling: str = "native"
    clip_fps: float = 8.0
    latent_sampling: str = "sample"
    grad_accum: int = 1

    def validate(self) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid option."""
        if self.clip_sampling not in CLIP_SAMPLINGS:
            raise DualAdapterError(f"clip_sampling={self.clip_sampling!r}: expected one of {CLIP_SAMPLINGS}")
        if self.latent_sampling not in LATENT_SAMPLINGS:
            raise DualAdapterError(f"latent_sampling={self.latent_sampling!r}: expected one of {LATENT_SAMPLINGS}")
        if isinstance(self.clip_fps, bool) or not isinstance(self.clip_fps, (int, float)) or not self.clip_fps > 0 \
                or self.clip_fps == float("inf"):
            raise DualAdapterError(f"clip_fps={self.clip_fps!r}: must be a finite number > 0")
        if self.form not in FORMS:
            raise DualAdapterError(f"form={self.form!r}: expected one of {FORMS}")
        for k in ("motion_ratio", "p_image_zero"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise DualAdapterError(f"{k}={v!r}: must be a number in [0, 1]")
        for k in ("hidden", "groups", "motion_batch", "identity_batch", "grad_accum"):
            v = getattr(self, k)
            low = 0 if k == "groups" else 1  # groups 0: the default count (see the class docstring)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise DualAdapterError(f"{k}={v!r}: must be an integer >= {low}" +
                                       (" (0 = the paper's 7, or one per block on smaller models)" if low == 0 else ""))


@dataclass
class DualRealData:
    """Precomputed training inputs (see :func:`prepare_dualreal_data`).

    Attributes:
        photo_latents: ``[P, 1, C, h, w]`` (one latent frame per subject photo).
        clip_latents: ``[M, T, C, h, w]`` (T = 13 for 49 frames).
        identity_embeds, motion_embeds: ``[1, L, D_text]`` prompt embeddings.
        clip_references: ``[M, 1024]`` reference embeddings (one frame per clip) or ``None``.
        identity_prompt, motion_prompt, reference_encoder: recorded in the adapters' metadata.
        photo_latent_std, clip_latent_std: the VAE posterior's std, shaped like the latents (which are
            then the posterior mean = mode), for ``latent_sampling="sample"``; ``None``: not computed.
        photo_conditioning, clip_conditioning: the image conditioning of each photo / clip (batch P / M,
            :meth:`~dual_adapter.backbones.base.VideoBackbone.item_conditioning` of the latents: Wan 2.1 I2V's
            first frame, computed once), or ``None``: the objective builds it from each step's latents.
    """

    photo_latents: torch.Tensor
    clip_latents: torch.Tensor
    identity_embeds: torch.Tensor
    motion_embeds: torch.Tensor
    clip_references: torch.Tensor | None = None
    identity_prompt: str = ""
    motion_prompt: str = ""
    reference_encoder: str | None = None
    photo_latent_std: torch.Tensor | None = None
    clip_latent_std: torch.Tensor | None = None
    photo_conditioning: Any = None
    clip_conditioning: Any = None


@dataclass
class DualRealResult:
    """What the trainers return.

    Attributes:
        adapters: the trained :class:`DualRealAdapterSet` (CPU tensors + metadata).
        losses: per-step records ``{"step", "loss", "lr", "phase", "w_id"}`` (w_id: mean identity weight).
        completed, steps_done, seconds, optimizer_name: as :class:`dual_adapter.training.TrainResult`.
        files: run files written (``partial``, ``state``, ``losses``) when ``out`` was given.
    """

    adapters: DualRealAdapterSet
    losses: list = field(default_factory=list)
    completed: bool = True
    steps_done: int = 0
    seconds: float = 0.0
    optimizer_name: str = ""
    files: dict = field(default_factory=dict)
    preview_seconds: float = 0.0


def run_paths(out: str | Path, run=None) -> dict[str, Path]:
    """Run files for final output ``X.safetensors``: ``partial`` (X.partial.safetensors), ``state``
    (X.state.safetensors), ``losses`` (X.losses.jsonl); with ``run`` (a :class:`dual_adapter.runs.RunFolder`) the
    run folder's ``checkpoint.safetensors``, ``state.safetensors`` and ``losses.jsonl``."""
    if run is not None:
        return {"partial": run.checkpoint, "state": run.state, "losses": run.losses}
    out = Path(out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return {"partial": out.with_name(stem + ".partial.safetensors"),
            "state": out.with_name(stem + ".state.safetensors"),
            "losses": out.with_name(stem + ".losses.jsonl")}


def finalize_run(result: "DualRealResult", out: str | Path, run=None) -> Path:
    """Save the finished adapters to ``out`` (never overwriting), then remove the run's ``partial`` and
    ``state`` files, which the final file supersedes (in that order, so a failure keeps the checkpoint).
    The ``losses`` file stays. With ``run`` (a :class:`dual_adapter.runs.RunFolder`) its files are the run
    folder's (:meth:`~dual_adapter.runs.RunFolder.finish`, which also draws ``loss.png``). Returns the path written."""
    from .checkpoint import save_adapters

    path = save_adapters(result.adapters, out)
    if run is not None:
        run.finish(result.losses, title="DualReal loss")
        return path
    files = run_paths(out)
    for k in ("partial", "state"):
        if files[k].exists():
            files[k].unlink()
    return path


# --------------------------------------------------------------------------------------------
# data


def load_motion_clips(paths: Sequence, num_frames: int, clip_sampling: str = "native", fps: float = 8.0,
                      short_policy: str = "loop") -> list[torch.Tensor]:
    """Decode motion clip files for DualReal: ``[num_frames, H, W, 3]`` float 0..1 each.

    ``paths``: clip files and/or folders; a folder contributes its clip files (extensions in
    :data:`dual_adapter.media.CLIP_EXTENSIONS`) in natural name order, as a folder of photos does
    (:func:`dual_adapter.media.expand_folders`).

    ``clip_sampling="native"`` (the authors'): ``num_frames`` consecutive source frames from the start;
    ``"fps"``: frames resampled to ``fps`` (see :class:`DualRealOptions` for the trade-off). A clip shorter
    than ``num_frames`` is handled by ``short_policy`` (see :func:`dual_adapter.media.load_clip`); a still
    (an image, a 1-frame video, identical frames) is refused: DualReal's motion phase would learn no motion.

    Raises:
        DualAdapterError: unknown ``clip_sampling``; a missing path or a folder without clips; unreadable clips
            (names the file).
    """
    from ..media import CLIP_EXTENSIONS, expand_folders, load_clip

    if clip_sampling not in CLIP_SAMPLINGS:
        raise DualAdapterError(f"clip_sampling={clip_sampling!r}: expected one of {CLIP_SAMPLINGS}")
    rate = None if clip_sampling == "native" else float(fps)
    return [load_clip(p, num_frames=int(num_frames), fps=rate, short_policy=short_policy, require_motion=True)[0]
            for p in expand_folders(paths, CLIP_EXTENSIONS, "clip")]


def _as_photo(x, i: int) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise DualAdapterError(f"subject photo {i} must be a tensor [H, W, 3], got {type(x).__name__}")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise DualAdapterError(f"subject photo {i} must be [H, W, 3] (0..1), got {list(x.shape)}")
    return x.detach().float()


def _as_clip(x, i: int) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise DualAdapterError(f"motion clip {i} must be a tensor [F, H, W, 3], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[:3]) < 1:
        raise DualAdapterError(f"motion clip {i} must be [F, H, W, 3] (0..1), got {list(x.shape)}")
    return x.detach().float()


def _check_inputs(subject_images, motion_clips, identity_prompt, motion_prompt) -> None:
    if subject_images is None or len(subject_images) == 0:
        raise DualAdapterError("DualReal needs both subject photos and motion clips: no subject photo was given")
    if motion_clips is None or len(motion_clips) == 0:
        raise DualAdapterError("DualReal needs both subject photos and motion clips: no motion clip was given")
    for name, v in (("identity prompt", identity_prompt), ("motion prompt", motion_prompt)):
        if not isinstance(v, str) or not v.strip():
            raise DualAdapterError(f"{name} must be a non-empty string (e.g. 'dog *' / 'a person is playing guitar')")


@torch.no_grad()
def prepare_dualreal_data(
    bundle: VideoBackbone,
    subject_images: Sequence[torch.Tensor],
    identity_prompt: str,
    motion_clips: Sequence[torch.Tensor],
    motion_prompt: str,
    *,
    reference_encoder: Any = None,
    clip_references: torch.Tensor | Sequence | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    callback: Callable[[int, int, dict], None] | None = None,
    latent_std: bool = True,
) -> DualRealData:
    """Encode everything training needs, once.

    Args:
        subject_images: photos ``[H, W, 3]`` 0..1 (any sizes: resized to cover and centre-cropped).
        motion_clips: clips ``[F, H, W, 3]`` 0..1 (any sizes and lengths: resized, then trimmed or
            looped to ``num_frames``).
        reference_encoder: anything :func:`dual_adapter.reference.encode_reference` takes; encodes one
            random frame (seeded) of each clip. ``None`` and no ``clip_references``: no W_cond term.
        clip_references: precomputed ``[M, 1024]`` (one per clip), instead of an encoder.
        num_frames, height, width: default the model's training size.
        callback: ``callback(i, total, {"stage": "encode"})`` after each item (may raise to stop).
        latent_std: also keep the VAE posterior's std (for a fresh posterior sample per step; default True).

    Returns:
        :class:`DualRealData` on the model's device.

    Raises:
        DualAdapterError: no photo / no clip, empty prompts, bad tensors, invalid size, or
            reference embeddings that are not 1024-d / not one per clip.
    """
    from ..media import fit_frames, pad_or_trim_frames
    from ..reference import as_reference_embedding, encode_reference

    bundle = as_backbone(bundle)
    _check_inputs(subject_images, motion_clips, identity_prompt, motion_prompt)
    f0, h0, w0 = bundle.default_size
    F, H, W = int(num_frames or f0), int(height or h0), int(width or w0)
    bundle.check_video_size(F, H, W)
    photos = [_as_photo(x, i) for i, x in enumerate(subject_images)]
    clips = [_as_clip(x, i) for i, x in enumerate(motion_clips)]
    total = len(photos) + len(clips)
    done = 0
    pl, pstd, cstd = [], [], []

    def enc(frames, std_list):
        if not latent_std:
            return bundle.encode_frames(frames)
        mean, std = bundle.encode_frames(frames, return_std=True)
        std_list.append(std)
        return mean

    for p in photos:
        pl.append(enc(fit_frames(p[None], H, W), pstd))  # [1, 1, C, h, w]: the posterior mean (= mode)
        done += 1
        if callback:
            callback(done, total, {"stage": "encode"})
    cl, fitted = [], []
    for i, c in enumerate(clips):
        c = pad_or_trim_frames(c, F, "loop", name=f"motion clip {i}")
        c = fit_frames(c, H, W)
        fitted.append(c)
        cl.append(enc(c, cstd))  # [1, T, C, h, w]
        done += 1
        if callback:
            callback(done, total, {"stage": "encode"})
    refs = None
    enc_name = None
    if clip_references is not None:
        refs = as_reference_embedding(clip_references if torch.is_tensor(clip_references)
                                      else torch.stack([as_reference_embedding(r)[0, 0] for r in clip_references]),
                                      "clip reference embeddings")[:, 0]
        if refs.shape[0] != len(clips):
            raise DualAdapterError(f"clip reference embeddings: got {refs.shape[0]}, expected one per motion clip "
                                   f"({len(clips)})")
        enc_name = "precomputed"
    elif reference_encoder is not None:
        g = seed_generator(seed, 12345)
        picks = [int(torch.randint(0, c.shape[0], (1,), generator=g)) for c in fitted]
        refs = torch.cat([encode_reference(reference_encoder, c[k: k + 1]) for c, k in zip(fitted, picks)], 0)
        enc_name = str(getattr(reference_encoder, "name", type(reference_encoder).__name__))
    id_e = bundle.encode_prompt(identity_prompt)
    mo_e = bundle.encode_prompt(motion_prompt)
    photo_latents, clip_latents = torch.cat(pl, 0), torch.cat(cl, 0)
    # once, from the posterior mean (Wan 2.1 I2V: the decoded first frame), while the VAE is on the accelerator
    return DualRealData(photo_latents, clip_latents, id_e, mo_e,
                        refs.to(bundle.device) if refs is not None else None, identity_prompt, motion_prompt,
                        enc_name, torch.cat(pstd, 0) if pstd else None, torch.cat(cstd, 0) if cstd else None,
                        bundle.item_conditioning(photo_latents), bundle.item_conditioning(clip_latents))


# --------------------------------------------------------------------------------------------
# training


NO_REFERENCE_WARNING = (
    "DualReal is training WITHOUT reference-image embeddings: the motion adapters' W_cond stays untrained "
    "(random) and the adapters will ignore any reference image at inference. The authors always train with "
    "one. Give a CLIP ViT-H/14 image encoder: CLI --reference-encoder FOLDER (a transformers "
    "CLIPVisionModelWithProjection folder, e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K); node: connect a "
    "CLIP_VISION (clip_vision_h); library: reference_encoder= or clip_references=.")


def _groups_for(options: DualRealOptions, transformer) -> int:
    """``options.groups``, capped at the model's block count (7 groups need >= 7 blocks); 0 = :data:`DEFAULT_GROUPS`,
    or one group per block when the model has fewer (no warning: the default fits every model)."""
    L = len(backbone_for(transformer).blocks(transformer))
    if options.groups == 0:
        return min(DEFAULT_GROUPS, L)
    if options.groups > L:
        log.warning("DualReal: %d weight groups asked for a model with %d blocks; using %d", options.groups, L, L)
        return L
    return options.groups


def set_phase_trainable(module: DualRealAdapters, motion: bool) -> None:
    """Make the active phase's adapters and the controller trainable and the other set frozen, so that
    backward computes no gradient for the inactive set (the gradient mask still drops any)."""
    for p in module.identity_parameters():
        p.requires_grad_(not motion)
    for p in module.motion_parameters():
        p.requires_grad_(motion)
    for p in module.controller_parameters():
        p.requires_grad_(True)


def _snapshot(module: DualRealAdapters, meta: dict, steps: int, completed: bool) -> DualRealAdapterSet:
    m = dict(meta)
    m["steps"] = int(steps)
    m["completed"] = bool(completed)
    return DualRealAdapterSet.from_module(module, **m)


def train_dualreal_on_data(
    transformer: torch.nn.Module,
    scheduler_config: dict,
    data: DualRealData,
    options: DualRealOptions | None = None,
    train: TrainConfig | None = None,
    *,
    adapters: DualRealAdapterSet | None = None,
    callback: Callable[[int, int, dict], None] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    base_model: str = "",
    preview=None,
    run=None,
) -> DualRealResult:
    """Joint training on precomputed :class:`DualRealData` (what :func:`train_dualreal` calls; also
    used by the benchmarks with random latents).

    Args:
        transformer: the loaded CogVideoX transformer (never modified; a weight-sharing copy trains).
        scheduler_config: the model's noise-scheduler config.
        adapters: start from these (else a fresh set from ``options``).
        callback: ``callback(step, total, {"loss", "lr", "phase", "w_id"})`` after each step; may raise
            :class:`~dual_adapter.errors.InterruptedByUser` (the checkpoint is written first).
        out: final output path ``X.safetensors``; run files go next to it (see module docstring).
            ``None``: no files.
        resume: continue from ``X.state.safetensors`` (weights, optimiser, schedule, step; the adapters'
            settings come from ``X.partial.safetensors``). Without ``resume``, existing run files are
            never replaced: the run is refused (see :func:`dual_adapter.training.check_run_files`).
        preview: a :class:`~dual_adapter.previews.Previewer` (validation videos while training; bound here to the
            model being trained, with the first clip's reference embedding), or None.
        run: the run's folder (:class:`dual_adapter.runs.RunFolder`): its checkpoint, state and losses files
            replace the ones beside ``out`` (which stays the final file and the lock's name).

    Raises:
        DualAdapterError: invalid options (``steps`` < 1 included), adapters for another model, run files
            of another run with this ``out`` (without ``resume``), nothing to resume (with ``resume``),
            another process training with the same ``out`` (``X.safetensors.lock``).
        TrainingDiverged: non-finite loss or weights; nothing is written, the last checkpoint stays.
    """
    options = options or DualRealOptions()
    options.validate()
    train = train or TrainConfig()
    train.validate(min_steps=1)
    if resume and out is None:
        raise DualAdapterError("resume needs out (the interrupted run's output path; its run files are beside it)")
    files = run_paths(out, run) if out is not None else {}
    with training_run(out, files, resume=resume):
        return _train_on_data(transformer, scheduler_config, data, options, train, adapters=adapters,
                              callback=callback, files=files, resume=resume, base_model=base_model, preview=preview)


def _train_on_data(transformer, scheduler_config, data, options, train, *, adapters, callback, files, resume,
                   base_model, preview=None) -> DualRealResult:
    dev = next(transformer.parameters()).device
    start_losses: list = []
    resume_state = None
    weights_step = None
    if resume:
        if not files["partial"].exists():
            raise DualAdapterError(f"resume: {str(files['partial'])!r} is missing (it holds the adapters' settings); "
                                   f"start a new run")
        adapters = load_adapters(files["partial"])
        weights_step = int(adapters.meta.get("steps", -1))
        resume_state = files["state"]
        if files["losses"].exists():
            import json

            start_losses = [json.loads(l) for l in files["losses"].read_text().splitlines() if l.strip()]
        log.info("resuming DualReal training from %s", files["state"])
    if adapters is not None:
        from .patch import check_compatible

        check_compatible(adapters.config, transformer)
        module = adapters.to_module(device=dev, dtype=torch.float32, trainable=True)
        cfg = adapters.config
    else:
        cfg = DualRealConfig.for_transformer(transformer, hidden=options.hidden,
                                             groups=_groups_for(options, transformer), form=options.form,
                                             controller=options.controller, lam=options.lam)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation
            torch.manual_seed(derived_seed(train.seed))
            module = DualRealAdapters(cfg)
        module = module.to(device=dev, dtype=torch.float32)
        module.requires_grad_(True)
    id_params, mo_params, ctrl_params = module.identity_parameters(), module.motion_parameters(), \
        module.controller_parameters()

    patch = DualRealPatch(module)
    model = patched_copy(transformer, [patch])
    from .patch import find_context

    ctx = find_context(model)
    if train.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    if train.fsdp:
        for what, used in (("motion_batch", options.motion_ratio > 0), ("identity_batch", options.motion_ratio < 1)):
            if used:
                check_micro_batches(getattr(options, what), options.grad_accum, what)
        shard_frozen_weights(model, id_params + mo_params + ctrl_params, device=dev,
                             release_loaded=train.fsdp_release_loaded)
    noise_sched = backbone_for(transformer, scheduler_config).noise_scheduler()

    def loss_of(x0, emb, c, g, cond=None):
        """The batch's loss (:func:`~dual_adapter.training.batch_diffusion_loss`: micro-batches with
        ``grad_accum`` > 1 or several processes, each with its clips' reference embeddings) and the
        StageBlender's identity weights of the micro-batches run here."""
        alphas = []

        def before(part):
            ctx.reference = c[part.to(c.device)] if c is not None else None

        def after():
            if ctx.alpha is not None:
                alphas.append(ctx.alpha)

        loss = batch_diffusion_loss(model, noise_sched, x0, emb, g, grad_accum=options.grad_accum,
                                    before=before, after=after, cond=cond)
        if not loss.requires_grad:  # already backpropagated in micro-batches
            alphas = [a.detach() for a in alphas]
        return loss, (torch.cat(alphas) if len(alphas) > 1 else alphas[0] if alphas else None)

    P = data.photo_latents.shape[0]
    M = data.clip_latents.shape[0]
    refs = data.clip_references
    if refs is None:
        log.warning(NO_REFERENCE_WARNING)
    sample_latents = options.latent_sampling == "sample"
    if sample_latents and (data.photo_latent_std is None or data.clip_latent_std is None):
        log.info("DualReal: no VAE posterior std in the data; training on the given latents (posterior mode)")
        sample_latents = False

    def draw(mean: torch.Tensor, std: torch.Tensor | None, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The batch's latents: a fresh posterior sample ``mean + std * eps`` (authors) or the mode."""
        x0 = mean[idx.to(mean.device)]
        if not sample_latents:
            return x0
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float32).to(x0.device)
        return (x0.float() + std[idx.to(std.device)].float() * eps).to(x0.dtype)

    def step_fn(step: int, g: torch.Generator):
        motion = bool(torch.rand((), generator=g) < options.motion_ratio)
        if motion:
            idx = torch.randint(0, M, (options.motion_batch,), generator=g)
            x0 = draw(data.clip_latents, data.clip_latent_std, idx, g)
            emb = data.motion_embeds
            cond = data.clip_conditioning
            c = None
            if refs is not None:
                c = refs[idx.to(refs.device)].float().unsqueeze(1)  # [b, 1, 1024]
                if options.p_image_zero > 0:
                    keep = (torch.rand(len(idx), generator=g) >= options.p_image_zero).to(c.device, c.dtype)
                    c = c * keep.view(-1, 1, 1)
        else:
            idx = torch.randint(0, P, (options.identity_batch,), generator=g)
            x0 = draw(data.photo_latents, data.photo_latent_std, idx, g)
            emb = data.identity_embeds
            cond = data.photo_conditioning
            c = None
        set_phase_trainable(module, motion)
        loss, alpha = loss_of(x0, emb, c, g, None if cond is None else cond.select(idx))
        info = {"phase": "motion" if motion else "identity"}
        if alpha is not None:
            info["w_id"] = alpha.detach().mean()  # read back with the loss (no sync per step)
        return loss, info

    def mask(step: int, info: dict) -> None:  # paper eqs. 4-6: M = Z * M_m + (1 - Z) * M_i
        for p in (id_params if info["phase"] == "motion" else mo_params):
            p.grad = None

    meta = {"base_fingerprint": backbone_for(transformer).fingerprint(transformer), "base_model": base_model,
            "identity_prompt": data.identity_prompt, "motion_prompt": data.motion_prompt,
            "reference_encoder": data.reference_encoder, "uses_reference": refs is not None,
            # W_cond learns only in motion steps with a non-zero reference embedding
            "w_cond_trained": refs is not None and options.motion_ratio > 0 and options.p_image_zero < 1,
            "latent_sampling_used": "sample" if sample_latents else "mode",
            "options": asdict(options), "train": {k: (list(v) if isinstance(v, tuple) else v)
                                                  for k, v in asdict(train).items()}}
    if files:
        meta["losses_file"] = files["losses"].name

    def on_checkpoint(step, optimizer, sched, losses):
        if not files or dist_rank_world()[0] != 0:  # one writer in a data-parallel run
            return
        save_adapters(_snapshot(module, meta, step, step >= train.steps), files["partial"], overwrite=True)
        save_train_state(files["state"], optimizer, sched, step)
        write_loss_log(losses, files["losses"])

    if preview is not None:
        import contextlib

        @contextlib.contextmanager
        def preview_context():  # the motion adapters see the first clip's reference, as W_cond at inference
            before = ctx.reference
            ctx.reference = refs[:1].float().unsqueeze(1) if refs is not None else None
            try:
                yield
            finally:
                ctx.reference = before

        preview.bind(model, preview_context)
    device_type = dev.type
    from ..memory import memory_levers

    with memory_levers(model, fp8=train.fp8_base, block_swap=train.block_swap,
                       release_loaded=train.fsdp_release_loaded, trainable=id_params + mo_params + ctrl_params):
        res = train_loop([{"params": id_params + mo_params + ctrl_params}], step_fn, train, device_type=device_type,
                         callback=callback, before_optimizer_step=mask,
                         on_checkpoint=on_checkpoint if files else None, resume_state=resume_state,
                         start_losses=start_losses, resume_weights_step=weights_step,
                         checkpoint_note=f"{files['partial']} + {files['state'].name}" if files else "",
                         distributed=dist_rank_world()[1] > 1, preview=preview)
    ctx.reference = None
    out_set = _snapshot(module, meta, res.steps_done, res.completed)
    return DualRealResult(out_set, res.losses, res.completed, res.steps_done, res.seconds, res.optimizer_name,
                          {k: str(v) for k, v in files.items()}, res.preview_seconds)


def train_dualreal(
    bundle: VideoBackbone,
    subject_images: Sequence[torch.Tensor],
    identity_prompt: str,
    motion_clips: Sequence[torch.Tensor],
    motion_prompt: str,
    *,
    reference_encoder: Any = None,
    clip_references: torch.Tensor | None = None,
    options: DualRealOptions | None = None,
    train: TrainConfig | None = None,
    adapters: DualRealAdapterSet | None = None,
    callback: Callable[[int, int, dict], None] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    release: bool = True,
    preview=None,
    run=None,
) -> DualRealResult:
    """Train DualReal adapters + StageBlender on subject photos and motion clips (docs/dualreal.md).

    Args:
        bundle: the loaded model (never modified).
        subject_images: list of photos ``[H, W, 3]`` float 0..1 (at least one; any size).
        identity_prompt: e.g. ``"dog *"``.
        motion_clips: list of clips ``[F, H, W, 3]`` float 0..1 (at least one; any size / length).
        motion_prompt: e.g. ``"a person is playing guitar"``.
        reference_encoder / clip_references: see :func:`prepare_dualreal_data`; neither = no W_cond.
        options: :class:`DualRealOptions`. train: :class:`~dual_adapter.training.TrainConfig`
            (defaults: 1000 steps, lr 1e-3, AdamW (8-bit on CUDA with bitsandbytes), cosine with restarts,
            200 warm-up steps, clip 1.0, bf16 autocast on GPU, gradient checkpointing).
        adapters: continue from a set. out / resume: run files and resume (see module docstring).
        release: move the VAE and T5 off the accelerator while training (they are moved back after).
        callback: ``callback(step, total, info)``; encoding reports ``info["stage"] == "encode"``.
        preview: :class:`~dual_adapter.previews.PreviewOptions` (validation videos every ``every`` steps; the
            default prompt is ``"<identity_prompt>, <motion_prompt>"``), or None.
        run: the run's folder (:class:`dual_adapter.runs.RunFolder`), whose checkpoint, state and losses files
            the run writes instead of the ones beside ``out``.

    Returns:
        :class:`DualRealResult` (``.adapters`` is the DUALREAL_ADAPTERS payload; ``.preview_seconds``).

    Raises:
        DualAdapterError: no photo or no clip (DualReal needs both), bad inputs or options;
        InterruptedByUser (or the callback's exception) after writing the checkpoint.
    """
    options = options or DualRealOptions()
    options.validate()
    train = train or TrainConfig()
    train.validate(min_steps=1)
    if resume and out is None:
        raise DualAdapterError("resume needs out (the interrupted run's output path; its run files are beside it)")
    with training_run(out, run_paths(out, run) if out is not None else {}, resume=resume):  # refuse before encoding
        return _train_dualreal(bundle, subject_images, identity_prompt, motion_clips, motion_prompt,
                               reference_encoder=reference_encoder, clip_references=clip_references, options=options,
                               train=train, adapters=adapters, callback=callback, out=out, resume=resume,
                               release=release, preview=preview, run=run)


def _train_dualreal(bundle, subject_images, identity_prompt, motion_clips, motion_prompt, *, reference_encoder,
                    clip_references, options, train, adapters, callback, out, resume, release,
                    preview=None, run=None) -> DualRealResult:
    bundle = as_backbone(bundle)  # the model, through the backbone interface
    require_one_denoiser(bundle, "train_dualreal")  # Wan 2.2 A14B: adapters per expert (dual_adapter.experts)
    if adapters is not None:
        from .patch import check_compatible

        check_compatible(adapters.config, bundle.denoiser, adapters.meta.get("base_fingerprint"))
    data = prepare_dualreal_data(bundle, subject_images, identity_prompt, motion_clips, motion_prompt,
                                 reference_encoder=reference_encoder, clip_references=clip_references,
                                 num_frames=options.num_frames, height=options.height, width=options.width,
                                 seed=train.seed, callback=callback,
                                 latent_std=options.latent_sampling == "sample")
    previewer = None
    if preview is not None and preview.enabled:
        from ..previews import Previewer, backbone_renderer

        f0, h0, w0 = bundle.default_size
        emb = bundle.encode_prompt(preview.prompt or f"{identity_prompt}, {motion_prompt}")
        previewer = Previewer(preview, backbone_renderer(bundle, emb, preview, height=options.height or h0,
                                                         width=options.width or w0))
    # the VAE and text encoder leave the accelerator while training and come back for sampling in the same process
    with bundle.released("vae", "text_encoder", when=release), bundle.use("denoiser") as base:
        return train_dualreal_on_data(base, bundle.scheduler_config, data, options, train, adapters=adapters,
                                      callback=callback, out=out, resume=resume, base_model=bundle.name,
                                      preview=previewer, run=run)
