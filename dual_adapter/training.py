"""The one training loop every trainer shares (DualReal, TAP / motion LoRA, CustomTTT).

It owns: the backbone's objective, the optimiser (AdamW, 8-bit when bitsandbytes works on the
device, or Lion for CustomTTT), the learning-rate schedule (cosine with restarts after a warm-up),
gradient clipping, bf16 autocast on GPU, per-step seeding (so a resumed run replays the same
batches), periodic checkpoints through a caller-supplied function, resume, and one callback for
progress, loss and interrupt. Trainers supply only ``step_fn`` (make a batch, return the loss)
and, where a method needs it, ``before_optimizer_step`` (DualReal's gradient mask).

Run lifecycle (the same for every trainer and front end):

* :func:`training_run` holds a lock on the run's output (``<out>.lock``, :func:`dual_adapter.io.run_lock`)
  and applies the resume / refuse rules (:func:`check_run_files`): a run's files are never replaced
  by a new run; ``resume`` needs a state file.
* The state file (:func:`save_train_state`) holds the trainable weights as well as the optimiser
  and schedule, so it alone is a consistent resume point: a kill between writing a trainer's
  weights checkpoint and its state file cannot give a mismatched pair.
* Divergence: every step checks the loss and, after the update, the weights; on a non-finite value
  the run stops with :class:`~dual_adapter.errors.TrainingDiverged` and writes nothing, so the last
  checkpoint on disk (finite weights) is kept. A checkpoint is also written only when it is *sane*
  (:class:`SanityCheck`: loss and weight norm within bounds of the run so far); an insane one stops the
  run the same way, so that the kept checkpoint is one a resume with a lower learning rate recovers from.
* A full disk (:class:`~dual_adapter.errors.DiskFull`) during a periodic checkpoint is reported and the
  run goes on (the previous checkpoint stays whole); at the end of the run it is reported and the
  trained weights are still returned, so the caller can write (smaller) output or keep them in memory.
* SIGTERM is handled like Ctrl-C (SIGINT): the checkpoint is written, then the run stops with
  :class:`~dual_adapter.errors.InterruptedByUser` (main thread only; see :func:`sigterm_as_interrupt`).

Size: config, objective, optimiser, schedule, state files, run rules, signals, distributed set-up and the
loop, shared by every trainer, are still one module; it becomes a ``training/`` package keeping these
names importable from ``dual_adapter.training``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .errors import DiskFull, DualAdapterError, InterruptedByUser, TrainingDiverged
from .io import is_own_reservation, load_safetensors, read_safetensors_metadata, run_lock, save_safetensors
from .limits import MAX_TRAIN_STEPS

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "diffusion_loss", "make_noise_scheduler", "make_optimizer",
           "make_lr_schedule", "train_loop", "save_train_state", "load_train_state", "step_generator",
           "write_loss_log", "loss_summary", "check_run_files", "training_run", "sigterm_as_interrupt",
           "init_distributed", "dist_rank_world", "micro_batches", "check_micro_batches", "batch_diffusion_loss",
           "shard_frozen_weights", "all_reduce_grads", "SanityCheck"]


@dataclass
class TrainConfig:
    """Hyper-parameters of the shared loop. Defaults are DualReal's (docs/dualreal.md).

    Attributes:
        steps: optimiser steps. lr: peak learning rate.
        betas, weight_decay, eps: optimiser settings (AdamW; Lion uses betas and weight_decay).
        optimizer: ``"auto"`` (8-bit AdamW when bitsandbytes runs on the device, else AdamW),
            ``"adamw"``, ``"adamw8bit"``, ``"lion"`` (needs the ``lion-pytorch`` package).
        lr_schedule: ``"cosine_with_restarts"``, ``"cosine"`` or ``"constant"`` (all after
            ``warmup_steps`` of linear warm-up). num_cycles: restarts of the cosine schedule.
        grad_clip: max global grad norm (0 = off).
        mixed_precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"bf16"``, ``"fp32"``.
        gradient_checkpointing: recompute block activations in backward (less memory).
        seed: seeds every step's randomness (step ``k`` uses ``seed`` and ``k``).
        checkpoint_every: call the checkpoint function every N steps (0 = only at the end / on stop).
        sync_every: read the loss back from the accelerator every N steps (0 = auto: 10 on CUDA, 1
            elsewhere), so that steps do not wait for the GPU; the callback then receives the records
            of those steps together, and a non-finite loss is detected at the read-back (the run stops
            without writing a checkpoint of the diverged weights; the last periodic one is kept).
        fsdp: in a multi-process run (``accelerate launch`` / ``torchrun``), shard the frozen transformer's
            weights over the processes with FSDP (:func:`shard_frozen_weights`) instead of keeping a whole
            copy in each; the trainable weights stay replicated (plain data parallel). Needs 2+ processes
            and a batch every process gets an equal share of (:func:`check_micro_batches`).
        fsdp_release_loaded: with ``fsdp``, free the loaded transformer's own full weights once the trainer's
            copy is sharded, so that the per-process training peak holds only the shards (the command-line
            trainers set it: their process ends after training). The loaded model is unusable afterwards;
            library callers that keep the model (ComfyUI) leave it False. It also frees the loaded weights that
            ``fp8_base`` replaced.
        fp8_base: store the frozen base Linear weights in fp8 (e4m3, a scale per row) in the trainer's copy,
            upcast per layer in the forward (:func:`dual_adapter.memory.store_fp8`): the frozen Linears take half
            their bf16 memory; the forward differs from bf16 by fp8 rounding of the weights (docs/performance.md).
        block_swap: keep the frozen weights of the first N transformer blocks on the CPU and copy each in just
            before it runs, the next one ahead on a side stream (:class:`dual_adapter.memory.BlockSwap`; 0 = off):
            bit-identical results; saves memory with ``gradient_checkpointing`` on; costs host-to-device copies
            of those blocks twice per step (forward and recompute).
    """

    steps: int = 1000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    optimizer: str = "auto"
    lr_schedule: str = "cosine_with_restarts"
    warmup_steps: int = 200
    num_cycles: int = 1
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    sync_every: int = 0
    fsdp: bool = False
    fsdp_release_loaded: bool = False
    fp8_base: bool = False
    block_swap: int = 0

    def validate(self, min_steps: int = 0) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field.

        ``min_steps``: trainers whose result would be untrained with 0 steps (DualReal, LoRA) pass 1.
        """
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < min_steps:
            what = "nothing would be trained" if min_steps >= 1 and isinstance(self.steps, int) and \
                not isinstance(self.steps, bool) and self.steps >= 0 else "not a step count"
            raise DualAdapterError(f"steps={self.steps!r}: must be an integer >= {min_steps} ({what})")
        for k in ("steps", "warmup_steps"):  # the bound shared with the nodes' widgets (docs/limits.md)
            if isinstance(getattr(self, k), int) and getattr(self, k) > MAX_TRAIN_STEPS:
                raise DualAdapterError(f"{k}={getattr(self, k)}: at most {MAX_TRAIN_STEPS} (see docs/limits.md)")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not math.isfinite(self.lr) \
                or not self.lr > 0:
            raise DualAdapterError(f"lr={self.lr!r}: the learning rate must be a finite number > 0 (e.g. 1e-3)")
        for k in ("checkpoint_every", "warmup_steps", "num_cycles"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "num_cycles" else 0):
                raise DualAdapterError(f"{k}={v!r}: must be an integer >= {1 if k == 'num_cycles' else 0}"
                                       + (" (0 = only at the end and when the run stops)"
                                          if k == "checkpoint_every" else ""))
        for k in ("grad_clip", "weight_decay", "eps"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise DualAdapterError(f"{k}={v!r}: must be a finite number >= 0")
        if self.optimizer not in ("auto", "adamw", "adamw8bit", "lion"):
            raise DualAdapterError(f"optimizer={self.optimizer!r}: expected auto, adamw, adamw8bit or lion")
        if self.lr_schedule not in ("cosine_with_restarts", "cosine", "constant"):
            raise DualAdapterError(f"lr_schedule={self.lr_schedule!r}: expected cosine_with_restarts, cosine or constant")
        if isinstance(self.sync_every, bool) or not isinstance(self.sync_every, int) or self.sync_every < 0:
            raise DualAdapterError(f"sync_every={self.sync_every!r}: must be an integer >= 0")
        if isinstance(self.block_swap, bool) or not isinstance(self.block_swap, int) or self.block_swap < 0:
            raise DualAdapterError(f"block_swap={self.block_swap!r}: must be an integer >= 0 (transformer blocks "
                                   f"kept on the CPU; 0 = off)")
        if self.block_swap and self.fsdp:
            raise DualAdapterError("block_swap with fsdp: FSDP already keeps only a share of each block per "
                                   "process; use one of them")
        for k in ("fsdp", "fsdp_release_loaded", "fp8_base"):
            if not isinstance(getattr(self, k), bool):
                raise DualAdapterError(f"{k}={getattr(self, k)!r}: must be True or False")
        if self.mixed_precision not in ("auto", "bf16", "fp32"):
            raise DualAdapterError(f"mixed_precision={self.mixed_precision!r}: expected auto, bf16 or fp32")


@dataclass
class TrainResult:
    """What :func:`train_loop` returns: per-step records and whether it ran to the end."""

    losses: list[dict] = field(default_factory=list)
    completed: bool = True
    steps_done: int = 0
    seconds: float = 0.0
    optimizer_name: str = ""
    checkpoint_error: str = ""  # set when the last checkpoint could not be written (a full disk)
    preview_seconds: float = 0.0  # time spent on validation previews (not in ``seconds``)


# --------------------------------------------------------------------------------------------
# objective


def make_noise_scheduler(bundle_or_config):
    """The training noise scheduler of a loaded model (its backbone's ``noise_scheduler()``); a bare
    scheduler config (a mapping) is taken as CogVideoX's, the pack's default backbone."""
    from .backbones import as_backbone, backbone_modules

    if not isinstance(bundle_or_config, Mapping):
        try:
            return as_backbone(bundle_or_config).noise_scheduler()
        except DualAdapterError:  # something else that carries a config (e.g. a ModelInfo)
            bundle_or_config = bundle_or_config.scheduler_config
    return backbone_modules()["cogvideox"].for_denoiser(None, bundle_or_config).noise_scheduler()


def step_generator(seed: int, step: int, device: str = "cpu") -> torch.Generator:
    """The random generator of training step ``step`` (deterministic in ``seed`` and ``step``)."""
    return torch.Generator(device).manual_seed((int(seed) * 1_000_003 + int(step) * 7919) % (2 ** 63 - 1))


def diffusion_loss(
    model: torch.nn.Module,
    noise_scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    reduce: bool = True,
    error_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond=None,
) -> torch.Tensor:
    """The training objective of ``model``'s backbone (:meth:`VideoBackbone.training_loss
    <dual_adapter.backbones.base.VideoBackbone.training_loss>`, found by :func:`dual_adapter.backbones.backbone_for`).

    On CogVideoX (docs/training.md, "The training objective"): ``t ~ U[0, 1000)``, ``x_t = add_noise(x_0, eps, t)``,
    ``v = model(x_t, t)``, ``x0_pred = scheduler.get_velocity(v, x_t, t)``,
    ``loss = mean(1 / (1 - alphas_cumprod[t]) * (x0_pred - x_0)^2)``.

    Args:
        latents: clean scaled latents ``x_0`` in the backbone's layout (``[B, F, C, h, w]`` on CogVideoX).
        prompt_embeds: ``[B or 1, L, D_text]``.
        generator: CPU generator for ``t`` and ``eps`` (ignored for what is given explicitly).
        timesteps: optional ``[B]`` integer timesteps. noise: optional ``eps`` like ``latents``.
        reduce: return the scalar mean (default) or the per-sample loss ``[B]``.
        error_fn: maps the prediction error ``d = x0_pred - x_0`` (after 1.5-model padding) to the
            per-element error; default ``d ** 2``. MotionDirector's appearance-debiased loss uses it
            (see :mod:`dual_adapter.lora`).
        cond: the image conditioning of an image-to-video model (:class:`~dual_adapter.backbones.base.ImageConditioning`,
            batch 1 or B); None: the backbone's own (:meth:`~dual_adapter.backbones.base.VideoBackbone.training_conditioning`,
            the clip's first frame on image-to-video models, nothing on text-to-video ones).
    """
    from .backbones import backbone_for

    extra = {} if cond is None else {"cond": cond}
    return backbone_for(model).training_loss(model, noise_scheduler, latents, prompt_embeds, generator=generator,
                                             timesteps=timesteps, noise=noise, reduce=reduce, error_fn=error_fn,
                                             **extra)


# --------------------------------------------------------------------------------------------
# optimiser and schedule


def _bnb_usable(params: list[torch.Tensor]) -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return all(p.device.type == "cuda" for p in params)


def make_optimizer(param_groups: Iterable, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    """Build the optimiser named by ``cfg.optimizer``. Returns ``(optimizer, name_used)``.

    ``"auto"`` takes bitsandbytes' 8-bit AdamW when it is installed and every parameter is on CUDA,
    else ``torch.optim.AdamW`` (its fused kernel when every parameter is on CUDA or the CPU).

    Raises:
        DualAdapterError: ``"adamw8bit"`` / ``"lion"`` asked for but their package is missing,
            or no trainable parameter.
    """
    groups = list(param_groups)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise DualAdapterError("nothing to train: no trainable parameters")
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    name = cfg.optimizer
    if name == "auto":
        name = "adamw8bit" if _bnb_usable(params) else "adamw"
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except Exception:
            raise DualAdapterError("optimizer 'adamw8bit' needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, eps=cfg.eps, **kw), name
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except Exception:
            raise DualAdapterError("optimizer 'lion' needs the lion-pytorch package (pip install lion-pytorch)") from None
        return Lion(groups, **kw), name
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, eps=cfg.eps, fused=fused or None, **kw), "adamw"


def make_lr_schedule(optimizer, cfg: TrainConfig):
    """Warm-up then cosine-with-restarts / cosine / constant (diffusers.optimization).

    The warm-up is ``cfg.warmup_steps`` as given, as in DualReal's released trainer (diffusers ``get_scheduler``
    with ``num_warmup_steps=lr_warmup_steps``): step ``k`` (0-based) of the warm-up runs at ``lr * k / warmup``,
    so a run of ``steps <= warmup_steps`` never reaches ``lr`` and peaks at ``lr * (steps - 1) / warmup_steps``
    (100 steps with the default 200 warm-up steps: 4.95e-4 for lr 1e-3). A warning says so.
    """
    from diffusers.optimization import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                                        get_cosine_with_hard_restarts_schedule_with_warmup)

    warm = int(cfg.warmup_steps)
    if warm >= int(cfg.steps) > 0:
        log.warning("warm-up of %d steps in a %d-step run: the learning rate peaks at %.3g (lr x %d/%d), as in the "
                    "authors' schedule; lower the warm-up to reach lr", warm, int(cfg.steps),
                    float(cfg.lr) * (int(cfg.steps) - 1) / warm, int(cfg.steps) - 1, warm)
    total = max(int(cfg.steps), 1)
    if cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warm)
    if cfg.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warm, total)
    return get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, warm, total, num_cycles=int(cfg.num_cycles))


# --------------------------------------------------------------------------------------------
# resumable state


def _all_params(optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def save_train_state(path: str | Path, optimizer, lr_schedule, step: int, extra: dict | None = None) -> Path:
    """Write the trainable weights, optimiser + schedule state and the step count to one safetensors
    file (atomic; overwrites the previous state file of the same run).

    The weights (``param.<i>``, in the optimiser's parameter order) make the file a complete resume
    point on its own, whatever happened to the trainer's separate weights checkpoint.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    for i, p in enumerate(_all_params(optimizer)):
        tensors[f"param.{i}"] = p.detach()
    meta = {
        "step": int(step),
        "param_groups": sd["param_groups"],
        "scalars": scalars,
        "lr_schedule": lr_schedule.state_dict() if lr_schedule is not None else None,
        "extra": extra or {},
        "has_params": True,
    }
    return save_safetensors(tensors, path, json.loads(json.dumps(meta, default=str)), overwrite=True)


def _load_state(path: str | Path, optimizer, lr_schedule) -> dict:
    tensors, meta = load_safetensors(path)
    params = _all_params(optimizer)
    state: dict[int, dict] = {}
    restored = False
    if meta.get("has_params"):
        got = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("param.")}
        if len(got) != len(params) or any(got[i].shape != p.shape for i, p in enumerate(params) if i in got):
            raise DualAdapterError(f"resume: state file {str(path)!r} holds {len(got)} trainable tensors that do not "
                                   f"match this run's {len(params)}; resume with the same settings (method, rank, "
                                   f"targets, widths) or start a new run")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(got[i].to(p.device, p.dtype))
        restored = True
    for k, v in tensors.items():
        if not k.startswith("state."):
            continue
        _, idx, name = k.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for k, v in (meta.get("scalars") or {}).items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    dev_of = {i: p.device for i, p in enumerate(params)}
    for i, st in state.items():
        for k, v in list(st.items()):
            if torch.is_tensor(v) and v.ndim > 0:
                st[k] = v.to(dev_of.get(i, "cpu"))
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if lr_schedule is not None and meta.get("lr_schedule"):
        lr_schedule.load_state_dict(meta["lr_schedule"])
    groups = meta.get("param_groups") or [{}]
    return {"step": int(meta["step"]), "extra": meta.get("extra") or {}, "params_restored": restored,
            "lr": groups[0].get("initial_lr", groups[0].get("lr"))}


def load_train_state(path: str | Path, optimizer, lr_schedule) -> tuple[int, dict]:
    """Restore what :func:`save_train_state` wrote: the trainable weights (when the file holds them),
    the optimiser and the schedule. Returns ``(step, extra)``.

    Raises:
        DualAdapterError: unreadable file, or its tensors do not match the optimiser's parameters.
    """
    st = _load_state(path, optimizer, lr_schedule)
    return st["step"], st["extra"]


def _set_peak_lr(optimizer, lr_schedule, old: float, new: float) -> None:
    """Scale every group's peak and current learning rate by ``new / old`` (the schedule's shape and
    position stay: LambdaLR's lr is ``base_lr * factor(step)``)."""
    r = float(new) / float(old)
    for g in optimizer.param_groups:
        if "initial_lr" in g:
            g["initial_lr"] = g["initial_lr"] * r
        g["lr"] = g["lr"] * r
    if lr_schedule is not None:
        lr_schedule.base_lrs = [b * r for b in lr_schedule.base_lrs]
        if hasattr(lr_schedule, "_last_lr"):
            lr_schedule._last_lr = [g["lr"] for g in optimizer.param_groups]


# --------------------------------------------------------------------------------------------
# run files: lock, resume / refuse rules


def _state_step(state: Path) -> str:
    try:
        return f" (its last checkpoint is from step {int(read_safetensors_metadata(state).get('step'))})"
    except Exception:
        return ""


def _empty_file(path: str | Path) -> bool:
    try:
        return Path(path).is_file() and Path(path).stat().st_size == 0
    except OSError:
        return False


def check_run_files(out: str | Path | None, files: dict, *, resume: bool, state_key: str = "state",
                    resume_hint: str = "resume=True", rename_hint: str = "another output name") -> None:
    """The resume / refuse rules every trainer and front end shares (never destroy a run).

    Args:
        out: the run's final output file (must not exist yet), or None when the caller writes none.
        files: the run's side files, name -> path (checkpoint weights, state, losses...).
        resume: the caller asks to continue the run.
        state_key: which of ``files`` is the state file (:func:`save_train_state`) a resume needs.
        resume_hint / rename_hint: how the front end spells the two choices (``--resume`` / ``another
            --out`` on the CLI, the node's ``resume`` / ``name`` inputs).

    Raises:
        DualAdapterError: ``out`` exists; without ``resume``, any side file exists (names them and the
            two choices: continue it, or choose another name); with ``resume``, no state file.

    Names this process reserved (:func:`dual_adapter.io.reserve_path`, still empty) do not count as
    existing. With ``resume``, an empty ``out`` (the reservation of a killed run) is removed.
    """
    if out is not None and resume and _empty_file(out) and not is_own_reservation(out):
        Path(out).unlink()  # the name reservation of a run that was killed (the caller holds the run's lock)
    if out is not None and Path(out).exists() and not is_own_reservation(out):
        out = Path(out)
        raise DualAdapterError(f"{str(out)!r} already exists (a finished run); choose {rename_hint} "
                               f"(existing files are never replaced)")
    existing = [Path(p) for p in files.values() if Path(p).exists() and not is_own_reservation(p)]
    state = Path(files[state_key])
    if resume:
        if not state.exists():
            raise DualAdapterError(f"nothing to resume: no state file {str(state)!r} (no interrupted run with this "
                                   f"name); start without {resume_hint}")
        return
    if existing:
        names = ", ".join(repr(str(p)) for p in existing)
        raise DualAdapterError(f"a run with this name already has files: {names}{_state_step(state)}. "
                               f"Continue it with {resume_hint}, or choose {rename_hint} "
                               f"(to start over, delete those files yourself)")


@contextlib.contextmanager
def training_run(out: str | Path | None, files: dict, *, resume: bool, lock: str | Path | None = None, **hints):
    """Hold the run's lock (``<out>.lock``, or ``<lock>.lock``) and check :func:`check_run_files` for the
    whole run.

    ``out`` and ``lock`` both None (no files): nothing to lock or check. ``hints``: ``state_key``,
    ``resume_hint``, ``rename_hint`` as in :func:`check_run_files`.

    Raises:
        DualAdapterError: another process runs with the same output, or the resume / refuse rules.
    """
    target = lock if lock is not None else out
    if target is None or dist_rank_world()[0] != 0:  # data parallel: rank 0 locks, checks and writes
        yield
        return
    with run_lock(target, "training run"):
        check_run_files(out, files, resume=resume, **hints)
        yield


# --------------------------------------------------------------------------------------------
# signals


def _sigterm_handler(signum, frame):
    raise InterruptedByUser("stopped by SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While active, SIGTERM raises :class:`InterruptedByUser` (like Ctrl-C raises KeyboardInterrupt), so a
    terminated run writes its checkpoint before it stops. Only in the main thread and only where SIGTERM
    still has its default action (a host application's own handler is left alone)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    try:
        prev = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        prev = None
    if prev is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _sigterm_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


@contextlib.contextmanager
def _no_sigterm():
    """Ignore SIGTERM while the stop checkpoint is written (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    prev = signal.getsignal(signal.SIGTERM)
    if prev is not _sigterm_handler:
        yield
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


def loss_summary(losses: Sequence[dict], frac: float = 0.1) -> tuple[float, float]:
    """Mean loss of the first and of the last ``frac`` of the steps (at least one step each)."""
    if not losses:
        return float("nan"), float("nan")
    n = max(1, int(len(losses) * frac))
    return (sum(r["loss"] for r in losses[:n]) / n, sum(r["loss"] for r in losses[-n:]) / n)


def write_loss_log(losses: Sequence[dict], path: str | Path) -> Path:
    """Write per-step records as JSON lines (one ``{"step":..., "loss":..., ...}`` per line), atomically."""
    from .io import atomic_write_text

    text = "".join(json.dumps(r) + "\n" for r in losses)
    return atomic_write_text(path, text, overwrite=True)


# --------------------------------------------------------------------------------------------
# the loop


StepFn = Callable[[int, torch.Generator], "tuple[torch.Tensor, dict]"]


def init_distributed() -> tuple[int, int, Any]:
    """``(rank, world_size, device)``: starts the process group through accelerate when this process was
    launched by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1; NCCL on GPUs, gloo on CPU), else
    ``(0, 1, None)``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    st = PartialState()  # starts the process group from the launcher's environment
    rank, world = dist_rank_world()  # (accelerate's own counters read 0 / 1 on CPU processes)
    return rank, world, st.device


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def micro_batches(batch: int, grad_accum: int = 1) -> list[torch.Tensor]:
    """This process's micro-batches of a global batch of ``batch`` samples: index tensors (``[b_i]``, int64).

    The batch is cut into ``min(batch, grad_accum * world_size)`` near-equal parts, dealt round-robin to
    the processes of the running group (all parts in one process). A process may get none (batch 1 on 2
    processes): its gradients are then zero for that step (:func:`all_reduce_grads` fills them in)."""
    rank, world = dist_rank_world()
    n = min(int(batch), max(int(grad_accum), 1) * world)
    return list(torch.arange(int(batch)).tensor_split(n))[rank::world]


def check_micro_batches(batch: int, grad_accum: int, what: str) -> None:
    """With sharded weights (``TrainConfig.fsdp``) every process must run the same number of forward passes
    (each one gathers the shards from all processes); raise :class:`DualAdapterError` naming ``what`` (the
    batch option, e.g. ``"motion_batch"``) when ``batch`` with ``grad_accum`` would leave them unequal."""
    world = dist_rank_world()[1]
    n = min(int(batch), max(int(grad_accum), 1) * world)
    if n % world:
        raise DualAdapterError(
            f"{what}={batch} with grad_accum={grad_accum} on {world} processes gives {n} micro-batches, which "
            f"cannot be shared equally; FSDP needs every process to run the same number of forward passes: "
            f"use a {what} that is a multiple of {world}, or at least {world * max(int(grad_accum), 1)} "
            f"(processes x grad_accum)")


def batch_diffusion_loss(
    model: torch.nn.Module,
    noise_scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator,
    *,
    grad_accum: int = 1,
    error_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    before: Callable[[torch.Tensor], None] | None = None,
    after: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The loss of one training batch (:func:`diffusion_loss`), run as micro-batches when asked to.

    Gradient accumulation and data parallelism share this: the batch's timesteps and noise are drawn from
    ``generator`` exactly as :func:`diffusion_loss` draws them for the whole batch (so every process draws
    the same global batch), the batch is cut by :func:`micro_batches`, and each of this process's
    micro-batches runs forward and backward with its loss weighted by its share of the batch
    (``b_i / B``): the gradients then sum to the whole batch's, over micro-batches and processes.

    Args:
        latents: ``[B, F, C, h, w]`` clean latents of the global batch. prompt_embeds: ``[1 or B, L, D]``.
        grad_accum: micro-batches per process (capped at the batch).
        error_fn: as :func:`diffusion_loss`.
        before: ``before(idx)`` is called before each micro-batch's forward with its sample indices ``[b_i]``
            (a trainer sets per-sample conditioning, e.g. DualReal's reference embeddings).
        after: called after each micro-batch's forward (e.g. to collect a value the forward left behind).

    Returns:
        With ``grad_accum`` 1 in one process: the loss with its graph (the caller, e.g. :func:`train_loop`,
        runs backward). Otherwise this process's share of the loss, already backpropagated, detached
        (``train_loop`` then skips backward and sums the shares over the processes).
    """
    B = latents.shape[0]
    if min(int(grad_accum), B) <= 1 and dist_rank_world()[1] == 1:
        if before is not None:
            before(torch.arange(B))
        loss = diffusion_loss(model, noise_scheduler, latents, prompt_embeds, generator=generator, error_fn=error_fn)
        if after is not None:
            after()
        return loss
    from .backbones import backbone_for

    p_t = backbone_for(model).time_patch(model)  # the noise covers the padded frames, as diffusion_loss draws it
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (B,), generator=generator)
    pad = (-latents.shape[1]) % p_t
    noise = torch.randn((B, latents.shape[1] + pad, *latents.shape[2:]), generator=generator, dtype=torch.float32)
    total = torch.zeros((), device=latents.device)
    for part in micro_batches(B, grad_accum):
        if before is not None:
            before(part)
        emb = prompt_embeds[part.to(prompt_embeds.device)] if prompt_embeds.shape[0] == B > 1 else prompt_embeds
        loss = diffusion_loss(model, noise_scheduler, latents[part.to(latents.device)], emb, timesteps=t[part],
                              noise=noise[part], error_fn=error_fn) * (len(part) / B)
        if after is not None:
            after()
        with torch.autocast(latents.device.type, enabled=False):  # backward as train_loop runs it: outside autocast
            loss.backward()
        total = total + loss.detach()
    return total


def shard_frozen_weights(model: torch.nn.Module, trainable: Iterable[torch.Tensor], device=None,
                         release_loaded: bool = False) -> torch.nn.Module:
    """FSDP (``TrainConfig.fsdp``): shard ``model``'s frozen weights over the running process group with
    PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``), one unit per transformer block plus the root.

    Each process keeps ``1/N`` of the frozen weights and gathers a block's weights just before it runs
    (again in backward), so the frozen transformer (10.4 GiB in bf16 at 5B) no longer sits whole on every
    GPU. The ``trainable`` parameters (adapters, LoRA) are left out of the sharding: they stay whole in
    every process and their gradients are summed by :func:`train_loop` as in plain data parallel, so
    checkpoints, resume and the gradient mask work unchanged. ``model`` must be the trainer's own copy
    (its modules are changed in place; the weights it shares with the loaded model are replaced by shards
    in the copy only: the loaded model keeps its full weights unless ``release_loaded``, which then frees
    their storage (the shards are copies), leaving the loaded model unusable: for a process that ends
    after training). Works on CPU (gloo) and CUDA (NCCL).

    Raises:
        DualAdapterError: no process group (FSDP needs ``accelerate launch`` / ``torchrun`` with 2 or more
            processes), or a model without ``transformer_blocks``.
    """
    rank, world = dist_rank_world()
    if world < 2:
        raise DualAdapterError("FSDP (--fsdp / TrainConfig.fsdp) shards the weights over several processes: start "
                               "the run with `accelerate launch --num_processes N -m dual_adapter ...` (N >= 2) or "
                               "torchrun, or train without --fsdp on one process")
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise DualAdapterError(f"FSDP: {type(model).__name__} has no transformer_blocks to shard")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (world,))
    keep = {p for p in trainable}
    loaded = [p for p in model.parameters() if p not in keep]
    for blk in blocks:
        fully_shard(blk, mesh=mesh, ignored_params={p for p in blk.parameters() if p in keep})
    fully_shard(model, mesh=mesh, ignored_params={p for p in model.parameters() if p in keep})
    if release_loaded:
        with torch.no_grad():
            for p in loaded:  # the copy now holds its shards (copies); only the loaded model referenced these
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return model


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Sum the gradients over the process group (each process's loss is its share of the global batch).
    Parameters without a gradient in every process keep ``grad = None`` (AdamW then skips them)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    req = [p for p in params if p.requires_grad]
    if not req:
        return
    has = torch.tensor([float(p.grad is not None) for p in req], device=req[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    sel = [p for p, h in zip(req, has.tolist()) if h]
    for p in sel:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not sel:
        return
    flat = _flatten_dense_tensors([p.grad for p in sel])
    dist.all_reduce(flat)
    for p, g in zip(sel, _unflatten_dense_tensors(flat, [p.grad for p in sel])):
        p.grad.copy_(g)


def autocast_context(device_type: str, cfg: TrainConfig):
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if device_type == "cuda" else "fp32"
    if mp == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


class SanityCheck:
    """Whether the weights at a checkpoint are *sane*: a resume point that training can recover from.

    A non-finite value is caught elsewhere; this catches a run that is blowing up while still finite (lr 1e9:
    weights of 1e16 and a loss that turns NaN a few steps later), judged against the run's own history:

    * the weight norm (L2 over every trainable tensor) must stay within ``norm_factor`` (1000) times the
      reference norm: the norm at the start of the run (or at the resumed checkpoint) or at the last sane
      checkpoint, whichever is larger (with lr 1e-1, ten times the default, the tiny models' norm grows
      about 10x in 30 steps; lr 1e9 grows it 1e10x in one step). A reference norm of 0 (all-zero weights)
      skips this test.
    * the median loss of the steps since the last sane checkpoint (at least the last ``window`` steps) must
      stay within ``loss_factor`` (10) times the median of the steps before them (tested once at least
      ``window`` earlier steps exist).

    ``problem(step, losses)`` returns None (sane) or the reason; ``accept(step)`` moves the reference to a
    checkpoint that was written.
    """

    def __init__(self, params: Sequence[torch.Tensor], start_step: int = 0, norm_factor: float = 1000.0,
                 loss_factor: float = 10.0, window: int = 5):
        self.params = list(params)
        self.norm_factor, self.loss_factor, self.window = float(norm_factor), float(loss_factor), int(window)
        self.start_norm = self.ref_norm = self.norm()
        self.start_step = self.ref_step = int(start_step)

    def norm(self) -> float:
        """The L2 norm over every trainable tensor (float64 on the CPU: exact for weights of any size)."""
        if not self.params:
            return 0.0
        return math.sqrt(sum(float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64)) ** 2 for p in self.params))

    def problem(self, step: int, losses: Sequence[dict]) -> str | None:
        n = self.norm()
        ref, at = max((self.start_norm, self.start_step), (self.ref_norm, self.ref_step))
        if ref > 0 and not n <= self.norm_factor * ref:
            return (f"the weight norm grew to {n:.3g}, {n / ref:.3g} times its {ref:.3g} at step {at} "
                    f"(a sane run stays within {self.norm_factor:g} times)")
        vals = [float(r["loss"]) for r in losses if r.get("loss") is not None]
        recent = max(self.window, sum(1 for r in losses if r.get("step", 0) > self.ref_step))
        if len(vals) >= recent + self.window:
            now, before = _median(vals[-recent:]), _median(vals[:-recent])
            if before > 0 and not now <= self.loss_factor * before:
                return (f"the median loss of the last {recent} steps is {now:.4g}, {now / before:.3g} times the "
                        f"run's median of {before:.4g} before them (a sane run stays within "
                        f"{self.loss_factor:g} times)")
        return None

    def accept(self, step: int) -> None:
        self.ref_norm, self.ref_step = self.norm(), int(step)


def _median(v: Sequence[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def _all_finite(params: Sequence[torch.Tensor]) -> bool:
    """True when no parameter holds a NaN or an infinity. One float32 sum per tensor and one ``isfinite`` in
    all (a NaN or an infinity anywhere makes the total non-finite), since on CPU this runs after every
    optimiser step; when finite values overflow the float32 sum, the exact per-tensor test decides."""
    if not params:
        return True
    total = torch.stack([p.detach().sum(dtype=torch.float32) for p in params]).sum()
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all())


def _step_global_rng(seed: int, step: int, device_type: str):
    """Context: the global torch RNG (CPU and the current CUDA device) seeded from ``(seed, step)`` and the
    process's rank, restored afterwards. Dropout layers (peft's LoRA dropout) draw from it, not from the step's
    generator; in a data-parallel run each process draws its own dropout masks (rank 0's are those of a
    one-process run). A batch split into micro-batches therefore draws different masks than the whole
    batch: with dropout the two agree in distribution, not bit for bit."""
    import contextlib

    devices = [torch.cuda.current_device()] if device_type == "cuda" and torch.cuda.is_available() else []
    rank = dist_rank_world()[0]

    @contextlib.contextmanager
    def ctx():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 17 + rank * 104_729) % (2 ** 63 - 1))
            yield

    return ctx()


def train_loop(
    param_groups: Sequence,
    step_fn: StepFn,
    cfg: TrainConfig,
    *,
    device_type: str = "cpu",
    callback: Callable[[int, int, dict], None] | None = None,
    before_optimizer_step: Callable[[int, dict], None] | None = None,
    on_checkpoint: Callable[[int, "torch.optim.Optimizer", Any, list], None] | None = None,
    resume_state: str | Path | None = None,
    start_losses: list | None = None,
    resume_weights_step: int | None = None,
    checkpoint_note: str = "",
    distributed: bool = False,
    preview: Any = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimiser steps.

    Each step ``k`` (0-based): ``loss, info = step_fn(k, step_generator(cfg.seed, k))`` under autocast,
    ``loss.backward()`` (skipped when the loss has no grad: a ``step_fn`` that accumulates gradients over
    micro-batches runs backward itself and returns the detached total), ``before_optimizer_step(k, info)`` (e.g. DualReal's gradient mask, which sets
    the inactive adapters' ``.grad`` to None so that AdamW skips them entirely), grad-norm clipping,
    optimiser and schedule step, then ``callback(k + 1, steps, {"loss", "lr", **info})`` (every
    ``cfg.sync_every`` steps for the steps since the last call, default 1 on CPU and 10 on CUDA, so a GPU
    is not synchronised every step; 0-d tensors in ``info`` are read back then). The loss and the trainable
    weights are checked for finiteness at each read-back and before every checkpoint.

    ``on_checkpoint(step, optimizer, lr_schedule, losses)`` is called every ``cfg.checkpoint_every`` steps,
    at the end, and also when the run stops early (interrupt, SIGTERM or error) so that what was learned
    so far is kept; the exception is then re-raised. It is never called with non-finite weights, nor with
    weights that fail :class:`SanityCheck` (weight norm or loss far outside the run's history): on divergence
    nothing is written and the last (sane) checkpoint stays. When it raises
    :class:`~dual_adapter.errors.DiskFull`, the failure is logged (naming the checkpoint kept) and the run
    goes on; at the end the result is still returned, with ``checkpoint_error`` set.

    ``resume_state`` (a file from :func:`save_train_state`) restores the weights, optimiser, schedule and
    step count, so that the run continues where it stopped. A state file without weights (older
    format) must be from the same step as the trainer's weights checkpoint (``resume_weights_step``).
    A different ``cfg.lr`` than the interrupted run's is applied (the peak learning rate is rescaled; the
    schedule keeps its position), with a warning.

    ``checkpoint_note``: where the checkpoint lives, for messages (e.g. the file names).

    ``distributed``: data parallel over the running process group (see :func:`init_distributed`): each
    process's ``step_fn`` returns its share of the global batch's loss (already weighted), the gradients
    and the loss are summed over the processes after backward; every process then takes the same
    optimiser step. Only ``step_fn`` knows how to split a batch, so a trainer opts in.

    ``preview``: a :class:`~dual_adapter.previews.Previewer` the trainer has bound to the model it trains; after
    every step it says is due (and after any checkpoint of that step) it samples one video with the current weights
    under a forked RNG and no gradient, so the run's weights are bit-identical with and without previews. Its time
    is kept out of ``TrainResult.seconds`` and reported at the end as a share of the training time
    (``TrainResult.preview_seconds``; only rank 0 previews in a data-parallel run).

    Raises:
        DualAdapterError: invalid config, a state file that does not fit, a resume whose state is already at or
            past ``cfg.steps`` (nothing is written).
        TrainingDiverged: a non-finite loss or non-finite weights, or a checkpoint that is not sane (names the
            step and the last sane checkpoint kept; nothing written).
        InterruptedByUser: re-raised from the callback (or SIGTERM) after checkpointing.
    """
    cfg.validate()
    optimizer, opt_name = make_optimizer(param_groups, cfg)
    sched = make_lr_schedule(optimizer, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    start = 0
    losses: list[dict] = list(start_losses or [])
    if resume_state is not None:
        st = _load_state(resume_state, optimizer, sched)
        start = st["step"]
        if start >= cfg.steps:  # nothing left to train: say so instead of "finishing" without a step
            raise DualAdapterError(
                f"resume: the run is already at step {start} and steps={cfg.steps} asks for no more; steps counts "
                f"the whole run, not the steps to add: set it above {start} to train more (the checkpoint"
                f"{' ' + checkpoint_note if checkpoint_note else ''} is kept as it is and loads as a result)")
        if not st["params_restored"] and resume_weights_step is not None and resume_weights_step != start:
            raise DualAdapterError(
                f"resume: the weights checkpoint is from step {resume_weights_step} but the state file "
                f"{str(resume_state)!r} from step {start} (the run was killed between the two writes); "
                f"they cannot be continued together. Start a new run, or load the weights file as a result")
        old_lr = st["lr"]
        if old_lr is not None and not math.isclose(float(old_lr), float(cfg.lr), rel_tol=1e-9):
            _set_peak_lr(optimizer, sched, float(old_lr), float(cfg.lr))
            log.warning("resume: the learning rate changed from %g to %g; the new one applies from step %d "
                        "(the schedule keeps its position)", float(old_lr), float(cfg.lr), start + 1)
        losses = [r for r in losses if r.get("step", 0) <= start]
        if preview is not None:
            preview.forget_after(start)
        if not _all_finite(params):
            raise TrainingDiverged(f"resume: the state file {str(resume_state)!r} holds non-finite weights; "
                                   f"start a new run")
    result = TrainResult(losses=losses, completed=False, steps_done=start, optimizer_name=opt_name)
    last_ckpt = start if resume_state is not None else None
    where = f" ({checkpoint_note})" if checkpoint_note else ""
    sanity = SanityCheck(params, start)

    def kept() -> str:
        return (f"the last sane checkpoint, from step {last_ckpt}{where}, is kept" if last_ckpt
                else "no checkpoint had been written yet" + (" (checkpoint_every=0)" if not cfg.checkpoint_every else ""))

    def diverged(step: int, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged at step {step}: {what}. Nothing from it was saved; {kept()}. "
                                f"Lower the learning rate (lr={cfg.lr:g}) and "
                                + ("resume from it" if last_ckpt else "start again"))

    def checkpoint(step: int, then: str = "") -> bool:
        """Write a checkpoint of sane weights (else raise TrainingDiverged); True when written. A full disk is
        reported (``then``: what happens next) and the run goes on."""
        nonlocal last_ckpt
        if not _all_finite(params):  # belt and braces: never write non-finite weights
            raise diverged(step, "the weights are not finite")
        why = sanity.problem(step, losses)
        if why is not None:
            raise diverged(step, why)
        try:
            on_checkpoint(step, optimizer, sched, losses)
        except DiskFull as e:
            then = then or (f"training goes on and the next checkpoint is tried at step "
                             f"{min(step + cfg.checkpoint_every, cfg.steps)}")
            msg = f"disk full while writing {e.path or 'the checkpoint'} at step {step}; {kept()}; {then}"
            log.error("%s", msg)
            result.checkpoint_error = msg
            return False
        last_ckpt = step
        sanity.accept(step)
        return True

    t0 = time.time()
    step = start
    every = cfg.sync_every or (10 if device_type == "cuda" else 1)
    pending: list = []  # (record, loss, {info key: tensor}) of steps whose loss is still on the device
    is_diverged = False

    def flush(report: bool = True) -> None:
        """Read the pending losses back (one sync), append the records, call the callback."""
        nonlocal is_diverged
        if not pending:
            return
        flat = [l.detach().float().reshape(()) for _, l, _ in pending]
        flat += [v.detach().float().reshape(()) for _, _, t in pending for v in t.values()]
        vals = torch.stack(flat).tolist()
        extra = iter(vals[len(pending):])
        batch = list(pending)
        pending.clear()
        for (rec, _, tens), v in zip(batch, vals):
            if not math.isfinite(v):
                is_diverged = True
                raise diverged(rec["step"], f"the loss is {v}")
            rec["loss"] = v
            rec.update({k: next(extra) for k in tens})
            losses.append(rec)
            if report and callback is not None:
                callback(rec["step"], cfg.steps, rec)

    try:
        with sigterm_as_interrupt():
            for step in range(start, cfg.steps):
                optimizer.zero_grad(set_to_none=True)
                # Layers that draw from the global RNG (LoRA dropout, nn.Dropout) get a per-step seed too, so
                # identical runs (and resumed ones) are bit-identical; the caller's global RNG is left as it was.
                with _step_global_rng(cfg.seed, step, device_type):
                    with autocast_context(device_type, cfg):
                        loss, info = step_fn(step, step_generator(cfg.seed, step))
                    if every == 1 and not torch.isfinite(loss):
                        is_diverged = True
                        raise diverged(step + 1, f"the loss is {loss.item()}")
                    if loss.requires_grad:  # a step_fn that accumulates gradients runs backward itself
                        loss.backward()
                if distributed and dist_rank_world()[1] > 1:
                    import torch.distributed as dist

                    all_reduce_grads(params)
                    loss = loss.detach().clone().reshape(()).float()
                    dist.all_reduce(loss)
                if before_optimizer_step is not None:
                    before_optimizer_step(step, info)
                if cfg.grad_clip and cfg.grad_clip > 0:
                    with_grad = [p for p in params if p.grad is not None]
                    if with_grad:
                        torch.nn.utils.clip_grad_norm_(with_grad, cfg.grad_clip)
                optimizer.step()
                sched.step()
                rec = {"step": step + 1, "loss": None, "lr": float(sched.get_last_lr()[0])}
                rec.update({k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool))})
                pending.append((rec, loss, {k: v for k, v in (info or {}).items() if torch.is_tensor(v)}))
                result.steps_done = step + 1
                ckpt = on_checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < cfg.steps
                if ckpt or (step + 1 - start) % every == 0 or step + 1 == cfg.steps:
                    flush()
                    if not _all_finite(params):
                        is_diverged = True
                        raise diverged(step + 1, "the weights became non-finite after the update")
                if ckpt:
                    checkpoint(step + 1)
                if preview is not None and dist_rank_world()[0] == 0 and preview.due(step + 1, cfg.steps):
                    flush()
                    preview(step + 1)
        result.completed = True
    except TrainingDiverged:
        result.seconds = time.time() - t0
        raise
    except BaseException:
        result.seconds = time.time() - t0
        try:
            flush(report=False)
        except DualAdapterError:  # TrainingDiverged included: is_diverged is set, nothing is written
            pass
        if on_checkpoint is not None and result.steps_done > start and result.steps_done != last_ckpt \
                and not is_diverged:
            try:
                with _no_sigterm():
                    if checkpoint(result.steps_done, "the run stops"):
                        log.warning("the run stopped at step %d; its checkpoint is kept%s", result.steps_done, where)
            except Exception as e:  # never hide the original error
                log.error("could not write the checkpoint after the run stopped: %s", e)
        raise
    result.seconds = time.time() - t0
    if preview is not None:
        result.preview_seconds = preview.seconds
        result.seconds -= preview.seconds
        if preview.count:
            log.info("%s", preview.report(result.seconds))
    if on_checkpoint is not None:
        checkpoint(result.steps_done, "the trained weights are still returned (the final output is written if it fits)")
    return result
