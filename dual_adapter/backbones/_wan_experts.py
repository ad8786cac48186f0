"""Wan 2.2 A14B: two experts behind one :class:`~dual_adapter.backbones.base.VideoBackbone` (docs/wan.md).

A diffusers A14B folder (``Wan-AI/Wan2.2-T2V-A14B-Diffusers``) holds ``transformer/`` (the *high-noise* expert)
and ``transformer_2/`` (the *low-noise* expert), two ``WanTransformer3DModel`` of the same architecture, and
``model_index.json`` with ``boundary_ratio`` (0.875 on T2V, 0.9 on I2V). As diffusers' ``WanPipeline`` switches
them: the boundary timestep is ``boundary_ratio x num_train_timesteps``; ``transformer`` denoises every step whose
timestep ``t >= boundary``, ``transformer_2`` every step with ``t < boundary``.

The backbone names its denoisers ``high_noise`` and ``low_noise`` (:meth:`WanExpertsBackbone.denoiser_names`),
says which serves a timestep (:meth:`~WanExpertsBackbone.denoiser_for`) and hands out a one-expert backbone
(:meth:`~WanExpertsBackbone.expert`) whose training noise schedule holds only the timesteps that expert serves, so
the pack's trainers, unchanged, train one expert's LoRA or adapters on its own timesteps (as musubi-tuner trains
the experts separately with ``--min_timestep`` / ``--max_timestep``).

Built-in ``tiny-wan-a14b``: two seeded random ``tiny-wan`` transformers (the high-noise one is ``tiny-wan``'s
with the same seed), the ``tiny-wan`` VAE and text encoder, ``boundary_ratio`` 0.875.

This module is private to the Wan backbone (``wan.py`` hands A14B names and folders to it).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import DualAdapterError
from .wan import ARCHITECTURE_KEYS, WanBackbone

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


def check_experts_folder(root: Path, tcfg: dict) -> float:
    """Check the A14B-specific parts of a Wan folder; return its ``boundary_ratio``.

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
    diff = [k for k in ARCHITECTURE_KEYS if tcfg.get(k) != t2.get(k)]
    if diff:
        raise DualAdapterError(f"model folder {str(root)!r}: transformer/ and transformer_2/ differ in "
                               f"{', '.join(diff)}; the two experts of a Wan 2.2 A14B share one architecture")
    return float(ratio)


def build_tiny(seed: int = 0, device: str = "cpu", dtype="fp32", num_layers: int = 4,
               boundary_ratio: float = DEFAULT_BOUNDARY_RATIO) -> "WanExpertsBackbone":
    """The built-in ``tiny-wan-a14b``: ``tiny-wan`` (seed ``seed``; its transformer is the high-noise expert) plus a
    second seeded random transformer of the same config (the low-noise expert). Same ``seed`` -> same weights."""
    from diffusers import WanTransformer3DModel

    from .wan import _TINY_TRANSFORMER, build_tiny as build_one

    one = build_one(seed=seed, device=device, dtype=dtype, num_layers=num_layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)
        low = WanTransformer3DModel(**{**_TINY_TRANSFORMER, "num_layers": int(num_layers)}).eval()
    low.requires_grad_(False)
    low.to(device=one.device) if one.dtype == torch.float32 else low.to(device=one.device, dtype=one.dtype)
    return WanExpertsBackbone(one.denoiser, low, boundary_ratio, one.vae, one.text_encoder, one.tokenizer,
                              one.scheduler_config, name=TINY_NAMES[0], device=one.device, dtype=one.dtype,
                              text_len=one.text_length, size=one.default_size)


def load_folder(root: Path, info: SimpleNamespace, dtype, device, cpu_offload: bool,
                vae_tiling: bool) -> "WanExpertsBackbone":
    """Load a diffusers Wan 2.2 A14B folder (``info`` from :func:`dual_adapter.backbones.wan.inspect_model`): the
    one-transformer parts with :func:`dual_adapter.backbones.wan.load_folder` (``transformer/``, the high-noise
    expert), then ``transformer_2/`` (the low-noise expert) in the same dtype, with safetensors.

    Raises:
        DualAdapterError: weights that do not load (names the folder and the error).
    """
    from diffusers import WanTransformer3DModel

    from .wan import load_folder as load_one

    one = load_one(root, dtype=dtype, device=device, cpu_offload=cpu_offload, vae_tiling=vae_tiling, experts=False)
    try:
        low = WanTransformer3DModel.from_pretrained(root, subfolder="transformer_2", torch_dtype=one.dtype,
                                                    use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DualAdapterError(f"could not load Wan's low-noise expert from {str(root / 'transformer_2')!r}: "
                               f"{type(e).__name__}: {e}") from None
    low.requires_grad_(False)
    low.eval()
    low.to("cpu" if cpu_offload else one.device)
    return WanExpertsBackbone(one.denoiser, low, info.boundary_ratio, one.vae, one.text_encoder, one.tokenizer,
                              one.scheduler_config, name=one.name, device=one.device, dtype=one.dtype,
                              size=one.default_size, cpu_offload=cpu_offload)


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
    from :meth:`WanExpertsBackbone.expert`), else ``schedule`` unchanged."""
    rng = scheduler_config.get(RANGE_KEY)
    return schedule if rng is None else ServedNoiseSchedule(schedule, rng[0], rng[1])


# --------------------------------------------------------------------------------------------
# the backbone


class WanExpertsBackbone(WanBackbone):
    """Wan 2.2 A14B: :attr:`denoiser` is the high-noise expert (diffusers ``transformer``), :attr:`denoiser_2`
    the low-noise one (``transformer_2``); :attr:`boundary_ratio` places the switch (module docstring).
    Everything else (VAE, UMT5, objective, sizes) is :class:`~dual_adapter.backbones.wan.WanBackbone`'s."""

    def __init__(self, denoiser, denoiser_2, boundary_ratio: float, vae, text_encoder, tokenizer,
                 scheduler_config: dict, **kw):
        super().__init__(denoiser, vae, text_encoder, tokenizer, scheduler_config, **kw)
        r = boundary_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise DualAdapterError(f"boundary_ratio={r!r}: expected a number between 0 and 1 (0.875 on Wan 2.2 "
                                   f"T2V A14B, 0.9 on I2V A14B)")
        self.denoiser_2 = denoiser_2
        self.boundary_ratio = float(r)

    @property
    def boundary_timestep(self) -> float:
        """``boundary_ratio x num_train_timesteps`` (875 on T2V A14B): the high-noise expert serves ``t >=`` it."""
        return self.boundary_ratio * int(self.scheduler_config.get("num_train_timesteps", 1000))

    def denoiser_names(self) -> tuple[str, ...]:
        return EXPERTS

    def denoiser_for(self, t) -> str:
        """``high_noise`` for ``t >= boundary_timestep`` (as diffusers' ``WanPipeline``), else ``low_noise``."""
        return EXPERTS[0] if float(t) >= self.boundary_timestep else EXPERTS[1]

    def _part(self, name: str) -> str:
        parts = {"denoiser": "denoiser", EXPERTS[0]: "denoiser", EXPERTS[1]: "denoiser_2"}
        if name not in parts and name not in ("vae", "text_encoder", "tokenizer"):
            raise DualAdapterError(f"{name!r} is not a part of this Wan 2.2 A14B model (its denoisers: "
                                   f"{', '.join(EXPERTS)})")
        return parts.get(name, name)

    def get_denoiser(self, name: str) -> nn.Module:
        return getattr(self, self._part(name))

    def expert(self, name: str):
        """A one-expert :class:`~dual_adapter.backbones.wan.WanBackbone` (the same modules, not copies) whose
        training noise schedule holds only the timesteps ``name`` serves: ``[boundary, 1000]`` for
        ``high_noise``, ``[0, boundary)`` for ``low_noise``. Sampling with it runs that expert at every step.

        Raises:
            DualAdapterError: ``name`` is not ``high_noise`` / ``low_noise``.
        """
        if name not in EXPERTS:
            raise DualAdapterError(f"expert {name!r} is not one of {', '.join(EXPERTS)}")
        b = self.boundary_timestep
        rng = [b, None] if name == EXPERTS[0] else [0.0, b]
        return WanBackbone(self.get_denoiser(name), self.vae, self.text_encoder, self.tokenizer,
                           {**self.scheduler_config, RANGE_KEY: rng}, name=f"{self.name} ({name} expert)",
                           device=self.device, dtype=self.dtype, text_len=self.text_length, size=self.default_size,
                           cpu_offload=self.cpu_offload)

    def predict(self, latents, t, text, denoiser=None):
        """As :meth:`WanBackbone.predict`; without ``denoiser``, the expert that serves ``t`` (every entry of
        ``t`` must fall on the same side of the boundary)."""
        if denoiser is None:
            names = {self.denoiser_for(x) for x in torch.as_tensor(t).reshape(-1).tolist()}
            if len(names) != 1:
                raise DualAdapterError(f"timesteps {t.tolist()} straddle the experts' boundary "
                                       f"{self.boundary_timestep:g}; call each expert on its own timesteps")
            denoiser = self.get_denoiser(names.pop())
        return super().predict(latents, t, text, denoiser=denoiser)

    def use(self, part: str):
        return super().use(self._part(part))

    def release(self, *parts: str) -> None:
        super().release(*(self._part(p) for p in parts))

    def __repr__(self) -> str:
        return (f"WanExpertsBackbone({self.name!r}, kind={self.kind!r}, device={self.device!r}, "
                f"boundary_ratio={self.boundary_ratio})")
