"""One progress format for every front end: the CLI commands, the demo, ``evaluate`` and the headless
workflow runner (inside ComfyUI the nodes keep ComfyUI's own progress bar, through ``nodes/bridge.py``,
and show the same line as text under the node).

The line::

    <label>  <k>/<N>  <pct>%  <elapsed> elapsed, ETA <eta>  [loss 0.1234 (phase)] [stage]

Durations read ``m:ss`` (``h:mm:ss`` past an hour): they are durations, never clock times. The ETA
is the time per step so far in this phase (since its first update) times the steps left; ``?``
until one step has been timed. A *phase* is a run of updates with the same ``total`` and a step
count that does not go back (e.g. DualReal's encoding, then its training steps): a new phase starts
its own clock and, on a terminal, its own line. ``info["stage"]`` (e.g. ``"loading CLIP"``) is
shown, and a new stage is always printed.

Library code never prints: it calls ``callback(step, total, info)``; :class:`TextProgress` is the
callback the front ends pass.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import IO, Any, Mapping

__all__ = ["format_duration", "format_progress", "TextProgress", "console", "console_label", "set_console_label"]


def format_duration(seconds: float | None) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``; ``None`` / non-finite -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_progress(label: str, step: int, total: int, elapsed: float | None = None, eta: float | None = None,
                    info: Mapping[str, Any] | None = None) -> str:
    """The one progress line (see the module docstring). ``info`` may hold ``loss``, ``phase``, ``stage``."""
    total = max(int(total), 1)
    step = int(step)
    parts = [f"{label}  {step}/{total}  {100.0 * min(step, total) / total:3.0f}%"]
    if elapsed is not None:
        parts.append(f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta) if step < total else '0:00'}")
    info = info or {}
    if "loss" in info:
        try:
            loss = f"loss {float(info['loss']):.4f}"
        except (TypeError, ValueError):
            loss = f"loss {info['loss']}"
        if info.get("phase"):
            loss += f" ({info['phase']})"
        parts.append(loss)
    if info.get("stage"):
        parts.append(str(info["stage"]))
    return "  ".join(parts)


class TextProgress:
    """A ``callback(step, total, info)`` that prints :func:`format_progress` lines to stderr.

    On a terminal the line is redrawn in place (at most 5 times a second, always at the end of a
    phase); in a log file about ten lines per phase are written (each 10%, and at least every 30 s).

    Args:
        label: what runs (``"train-dualreal"``, ``"sampling"``, a video name...).
        quiet: print nothing.
        stream: where to write (default ``sys.stderr``).
    """

    def __init__(self, label: str, quiet: bool = False, stream: IO[str] | None = None):
        self.label, self.quiet, self._stream = label, quiet, stream
        self._key = None
        self._step = 0
        self._stage = None
        self._t_phase = self._t_prev_phase_end = time.time()
        self._s0 = 0
        self._last_print = 0.0
        self._last_decile = -1
        self._open_line = False

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def _tty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def __call__(self, step: int, total: int | None = None, info: Mapping[str, Any] | None = None, *_) -> None:
        if self.quiet:
            return
        total = max(int(total if total is not None else step), 1)
        step = int(step)
        info = dict(info or {})
        now = time.time()
        key = total
        tty = self._tty()
        new_phase = key != self._key or step < self._step
        self._step = step
        new_stage = info.get("stage") != self._stage
        self._stage = info.get("stage")
        if new_phase:
            if self._open_line:
                self.stream.write("\n")
                self._open_line = False
            self._key = key
            self._t_phase = self._t_prev_phase_end
            self._s0 = max(step - 1, 0)
            self._last_decile = -1
            self._last_print = 0.0
        elapsed = now - self._t_phase
        done = step - self._s0
        eta = elapsed / done * (total - step) if done > 0 else None
        final = step >= total
        if final:
            self._t_prev_phase_end = now
        line = format_progress(self.label, step, total, elapsed, eta, info)
        if tty:
            if not (final or new_phase or new_stage or now - self._last_print >= 0.2):
                return
            self.stream.write("\r" + line + "   " + ("\n" if final else ""))
            self._open_line = not final
        else:
            decile = int(10 * min(step, total) / total)
            if not (final or new_phase or new_stage or decile > self._last_decile or now - self._last_print >= 30):
                return
            self._last_decile = decile
            self.stream.write(line + "\n")
        self._last_print = now
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# console mode: where nodes report when no ComfyUI runs them (the headless runner)

_CONSOLE: list[str] = []


@contextlib.contextmanager
def console(label: str = ""):
    """While active, progress reported through ``nodes/bridge.Progress`` outside ComfyUI is printed as
    :func:`format_progress` lines, prefixed with the current label (see :func:`set_console_label`)."""
    _CONSOLE.append(label)
    try:
        yield
    finally:
        _CONSOLE.pop()


def set_console_label(label: str) -> None:
    """Name what runs now (e.g. ``"node 5 DualRealTrain"``) in console mode (no-op outside it)."""
    if _CONSOLE:
        _CONSOLE[-1] = label


def console_label() -> str | None:
    """The current console label, or None when console mode is off."""
    return _CONSOLE[-1] if _CONSOLE else None
