"""The sampling schedulers (DPM-Solver, DDIM) and the training noise scheduler of a CogVideoX model.
"""
from __future__ import annotations

from ...errors import DualAdapterError


# --------------------------------------------------------------------------------------------
# schedulers and the training objective

SCHEDULERS = ("dpm", "ddim")


def make_scheduler(bundle_or_config, name: str = "dpm"):
    """A fresh CogVideoX scheduler (``"dpm"`` = CogVideoXDPMScheduler, ``"ddim"`` = CogVideoXDDIMScheduler)
    from the model's scheduler config, always with ``timestep_spacing="trailing"``.

    Raises:
        DualAdapterError: unknown name.
    """
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cfg = dict(getattr(bundle_or_config, "scheduler_config", bundle_or_config))
    cfg["timestep_spacing"] = "trailing"
    cls = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}.get(str(name).lower())
    if cls is None:
        raise DualAdapterError(f"scheduler {name!r} is not one of {SCHEDULERS}")
    return cls.from_config(cfg)


def make_noise_scheduler(bundle_or_config):
    """The training noise scheduler (CogVideoXDDIMScheduler from the model's scheduler config)."""
    from diffusers import CogVideoXDDIMScheduler

    cfg = dict(getattr(bundle_or_config, "scheduler_config", bundle_or_config))
    return CogVideoXDDIMScheduler.from_config(cfg)
