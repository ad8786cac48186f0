"""CPU threads for the small built-in models (``tiny*``, ``mini`` and ``mini`` folders).

These models are far too small to gain from several intra-op threads, and torch's threads spin-wait on
each other: on a 2-core machine with one other busy process, a default-threaded demo ran ten times slower
than a one-thread one (docs/results/demo.md). So loading a small model on CPU sets torch to one thread,
unless the user chose a count: :func:`set_threads` (the CLI's ``--threads N``), the ``DUAL_ADAPTER_THREADS``
environment variable, or ``OMP_NUM_THREADS`` (which torch reads itself). The setting is process-wide (torch
has one), so in ComfyUI it also holds for the other CPU models of the server: set ``DUAL_ADAPTER_THREADS``
there to keep another count. Real models are never touched.
"""
from __future__ import annotations

import contextlib
import logging
import os

from .errors import DualAdapterError

log = logging.getLogger(__name__)

#: The environment variable that sets the thread count (a positive integer) for every model.
ENV = "DUAL_ADAPTER_THREADS"

_chosen: int | None = None  # set_threads' count, for this process


def set_threads(n: int | None) -> None:
    """The user's thread count (a ``--threads N`` flag), kept for this process: torch's intra-op threads become
    ``n`` now and small models keep it when they load. ``None`` or 0 withdraws the choice (small models then get
    one thread again; torch's count is left as it is).

    Raises:
        DualAdapterError: ``n`` is not an integer >= 0.
    """
    import torch

    global _chosen
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise DualAdapterError(f"threads={n!r}: expected an integer >= 1 (0 = the pack's choice)")
    _chosen = n or None
    if _chosen:
        torch.set_num_threads(_chosen)


@contextlib.contextmanager
def threads_for_command(n: int | None):
    """:func:`set_threads` for one command (the CLI's ``--threads``; ``None`` or 0 changes nothing), then the
    earlier choice and torch's earlier count come back (a host that runs several commands in one process keeps
    its own setting)."""
    import torch

    global _chosen
    before, count = _chosen, torch.get_num_threads()
    try:
        if n:
            set_threads(n)
        yield
    finally:
        _chosen = before
        torch.set_num_threads(count)


def chosen_threads() -> int | None:
    """The thread count the user chose, or ``None``: :func:`set_threads`, else ``DUAL_ADAPTER_THREADS``, else
    ``OMP_NUM_THREADS``.

    Raises:
        DualAdapterError: ``DUAL_ADAPTER_THREADS`` is set but not a positive integer.
    """
    if _chosen:
        return _chosen
    raw = os.environ.get(ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise DualAdapterError(f"{ENV}={raw!r}: expected a positive integer (the number of CPU threads)")
        return int(raw)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(omp) if omp.isdigit() and int(omp) >= 1 else None


def small_model_threads(device=None) -> int:
    """Called when a small built-in model loads: on CPU (``device`` None, ``"cpu"`` or a ``torch.device`` of type
    cpu), torch gets one intra-op thread unless the user chose a count (:func:`chosen_threads`), which is then
    applied. On another device nothing changes. Returns torch's thread count afterwards.

    Raises:
        DualAdapterError: see :func:`chosen_threads`.
    """
    import torch

    if device is not None and torch.device(device).type != "cpu":
        return torch.get_num_threads()
    n = chosen_threads() or 1
    if torch.get_num_threads() != n:
        if n == 1:
            log.info("small model on CPU: one torch thread (set %s or --threads to choose another count)", ENV)
        torch.set_num_threads(n)
    return n
