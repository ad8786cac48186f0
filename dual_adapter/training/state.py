"""What a run keeps on disk and the rules around it: the resumable state file (trainable weights, optimiser,
schedule), the run rules (lock, resume / refuse, :func:`training_run`), SIGTERM handled like Ctrl-C, and the
per-step loss log.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DualAdapterError, InterruptedByUser
from ..io import is_own_reservation, load_safetensors, read_safetensors_metadata, run_lock, save_safetensors
from .distributed import dist_rank_world


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
    from ..io import atomic_write_text

    text = "".join(json.dumps(r) + "\n" for r in losses)
    return atomic_write_text(path, text, overwrite=True)
