""":func:`train_loop`, the loop every trainer shares: mixed precision, per-step seeding, divergence checks, sane
periodic checkpoints (:class:`SanityCheck`), resume, progress and interrupts.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import DiskFull, DualAdapterError, TrainingDiverged
from .config import TrainConfig, TrainResult
from .distributed import all_reduce_grads, dist_rank_world
from .objective import step_generator
from .optim import make_lr_schedule, make_optimizer
from .state import _load_state, _no_sigterm, _set_peak_lr, sigterm_as_interrupt

log = logging.getLogger(__package__)


# --------------------------------------------------------------------------------------------
# the loop


StepFn = Callable[[int, torch.Generator], "tuple[torch.Tensor, dict]"]


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
