"""Wan 2.2 A14B helpers the one-transformer Wan backbone needs too (no import of it): the two-expert folder checks
and the training noise schedule of one expert (the timesteps it serves). The backbone itself is
:mod:`dual_adapter.backbones.wan_a14b` (docs/wan.md "Wan 2.2 A14B")."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import DualAdapterError

#: the denoiser names of an A14B backbone: the high-noise expert (diffusers ``transformer``), then the low-noise one
EXPERTS = ("high_noise", "low_noise")
TINY_NAMES = ("tiny-wan-a14b",)
#: diffusers' Wan 2.2 T2V A14B ``boundary_ratio`` (I2V A14B: 0.9)
DEFAULT_BOUNDARY_RATIO = 0.875
#: the key of a one-expert backbone's scheduler config holding ``[lo, hi)``, the timesteps its expert serves
RANGE_KEY = "_timestep_range"


def is_experts_folder(root: str | Path) -> bool:
    """A folder with ``transformer_2/`` or a ``boundary_ratio`` in ``model_index.json`` (a two-expert A14B)."""
    root = Path(root).expanduser()
    if (root / "transformer_2").is_dir():
        return True
    index = root / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("boundary_ratio") is not None
    except (ValueError, OSError, AttributeError):
        return False


def check_experts_folder(root: Path, tcfg: dict, architecture_keys) -> float:
    """Check the A14B-specific parts of a Wan folder (``tcfg``: ``transformer/config.json``; the experts must agree on
    ``architecture_keys``); return its ``boundary_ratio``.

    Raises:
        DualAdapterError: no ``transformer_2/config.json``, a ``boundary_ratio`` missing or outside (0, 1), or two
            experts of different architectures (names the differing fields).
    """
    from .cogvideox import _read_json

    cfg2 = root / "transformer_2" / "config.json"
    if not cfg2.is_file():
        raise DualAdapterError(f"model folder {str(root)!r} has a boundary_ratio but no transformer_2/config.json "
                               f"(a Wan 2.2 A14B folder holds both experts: transformer/ and transformer_2/)")
    t2 = _read_json(cfg2, "transformer_2 config")
    index = root / "model_index.json"
    ratio = (_read_json(index, "model index") if index.is_file() else {}).get("boundary_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise DualAdapterError(f"{root}/model_index.json: boundary_ratio={json.dumps(ratio)} (a Wan 2.2 A14B folder "
                               f"needs a number between 0 and 1: 0.875 for T2V, 0.9 for I2V)")
    diff = [k for k in architecture_keys if tcfg.get(k) != t2.get(k)]
    if diff:
        raise DualAdapterError(f"model folder {str(root)!r}: transformer/ and transformer_2/ differ in "
                               f"{', '.join(diff)}; the two experts of a Wan 2.2 A14B share one architecture")
    return float(ratio)


# --------------------------------------------------------------------------------------------
# the training noise schedule of one expert


class ServedNoiseSchedule:
    """A flow-matching training schedule (``FlowMatchEulerDiscreteScheduler``) cut to the timesteps ``[lo, hi)`` one
    expert serves: ``sigmas`` and ``timesteps`` are the kept entries and ``config.num_train_timesteps`` their count,
    so a trainer's uniform draw ``k ~ U{0..n-1}`` is uniform over the expert's timesteps. Anything else is the full
    schedule's."""

    def __init__(self, schedule, lo: float, hi: float | None):
        t = schedule.timesteps.float()
        keep = (t >= float(lo)) & ((t < float(hi)) if hi is not None else torch.ones_like(t, dtype=torch.bool))
        if not bool(keep.any()):
            raise DualAdapterError(f"no training timestep in [{lo}, {hi}): the expert serves none of them")
        self.__dict__["_schedule"] = schedule
        self.sigmas = schedule.sigmas[: len(t)][keep]
        self.timesteps = schedule.timesteps[keep]
        self.config = SimpleNamespace(**{**dict(schedule.config), "num_train_timesteps": int(keep.sum())})
        self.timestep_range = (float(lo), None if hi is None else float(hi))

    def __getattr__(self, name):
        return getattr(self.__dict__["_schedule"], name)


def served_schedule(schedule, scheduler_config: dict):
    """``schedule`` cut to ``scheduler_config["_timestep_range"]`` when the config holds one (a one-expert backbone
    from :meth:`dual_adapter.backbones.wan_a14b.WanExpertsBackbone.expert`), else ``schedule`` unchanged."""
    rng = scheduler_config.get(RANGE_KEY)
    return schedule if rng is None else ServedNoiseSchedule(schedule, rng[0], rng[1])


