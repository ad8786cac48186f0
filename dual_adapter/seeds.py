"""Seeds: one mapping from any seed a user can give to torch generators.

ComfyUI's seed widgets allow ``0 .. 2**64 - 1``; ``torch.Generator.manual_seed`` takes
``-2**63 .. 2**64 - 1`` but overflows on anything larger, which derived streams (``seed + 1`` for the
sampler's step noise, ``seed + 12345`` for DualReal's batch order, ...) used to hit for seeds near
2**64. The mapping, used everywhere a seed becomes a generator:

* a seed is any integer in ``-2**63 .. 2**64 - 1`` (the union of what the widget and torch accept);
  anything else (or a non-integer) is refused with a :class:`~dual_adapter.errors.DualAdapterError`;
* it is taken modulo ``2**64`` (so ``-1`` is the same seed as ``2**64 - 1``); seeds ``0 .. 2**64 - 1``
  are unchanged, so results for every seed that worked before stay bit-identical;
* a derived stream ``seed + k`` wraps around modulo ``2**64`` as well.

torch's CPU generator (mt19937, used for all of the pack's noise so that a seed gives the same video
on any device) keys on the low 32 bits of its seed, as ComfyUI's own samplers do: seeds that differ by
a multiple of ``2**32`` draw the same noise.
"""
from __future__ import annotations

import argparse

from .errors import DualAdapterError

__all__ = ["SEED_MIN", "SEED_MAX", "check_seed", "derived_seed", "seed_generator", "seed_arg"]

#: Smallest and largest seed accepted (torch's lower bound, ComfyUI's widget upper bound).
SEED_MIN = -(2 ** 63)
SEED_MAX = 2 ** 64 - 1
_MOD = 2 ** 64


def check_seed(seed, name: str = "seed") -> int:
    """Validate a seed and map it to ``0 .. 2**64 - 1`` (``seed mod 2**64``).

    Raises:
        DualAdapterError: not an integer, or outside ``-2**63 .. 2**64 - 1``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        try:
            import numpy as np

            if isinstance(seed, np.integer):
                seed = int(seed)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DualAdapterError(f"{name}={seed!r}: expected an integer seed")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise DualAdapterError(f"{name}={seed}: a seed must be between {SEED_MIN} and {SEED_MAX} (2**64 - 1, "
                               f"the largest seed ComfyUI's widget allows)")
    return seed % _MOD


def derived_seed(seed, offset: int = 0, name: str = "seed") -> int:
    """``(seed + offset) mod 2**64``: the seed of a stream derived from ``seed`` (never overflows)."""
    return (check_seed(seed, name) + int(offset)) % _MOD


def seed_generator(seed, offset: int = 0, device="cpu", name: str = "seed"):
    """A ``torch.Generator`` on ``device`` seeded with :func:`derived_seed` ``(seed, offset)``.

    Raises:
        DualAdapterError: ``seed`` is not an integer in ``-2**63 .. 2**64 - 1``.
    """
    import torch

    return torch.Generator(device).manual_seed(derived_seed(seed, offset, name))


def seed_arg(text: str) -> int:
    """argparse ``type=`` for ``--seed``: an integer in ``-2**63 .. 2**64 - 1`` (refused at parse time)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        check_seed(v)
    except DualAdapterError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return v
