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

A backbone module of its own (``KIND`` ``wan_a14b``; its backbone's ``kind`` is ``wan``, so everything that serves
Wan serves it); ``wan.py`` leaves A14B folders to it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DualAdapterError
from . import wan
from ._wan_experts import DEFAULT_BOUNDARY_RATIO, EXPERTS, RANGE_KEY, is_experts_folder
from .wan import WanBackbone

KIND = "wan_a14b"
FAMILY = "Wan 2.2 A14B (two WanTransformer3DModel experts)"
TINY_NAMES = ("tiny-wan-a14b",)


def tiny_names() -> tuple[str, ...]:
    return TINY_NAMES


def detect(folder: Path) -> bool:
    """A diffusers Wan folder (``transformer/config.json`` names ``WanTransformer3DModel``) with two experts."""
    return wan.names_wan_transformer(folder) and is_experts_folder(folder)


def owns(denoiser: nn.Module) -> bool:
    """Never: a bare expert is a one-transformer Wan (:func:`dual_adapter.backbones.wan.owns`)."""
    return False


def for_denoiser(denoiser: nn.Module, scheduler_config: dict | None = None):
    """A one-transformer :class:`~dual_adapter.backbones.wan.WanBackbone` for a bare expert."""
    return wan.for_denoiser(denoiser, scheduler_config)


def inspect_model(name_or_path: str):
    """Read and check an A14B folder's configs without loading weights (:func:`dual_adapter.backbones.wan.
    inspect_model`, which reads ``transformer_2/`` and ``boundary_ratio`` too); ``tiny-wan-a14b`` answers as
    ``tiny-wan`` with ``boundary_ratio`` 0.875.

    Raises:
        DualAdapterError: see :func:`dual_adapter.backbones.wan.inspect_model`.
    """
    if name_or_path in TINY_NAMES:
        info = wan.inspect_model("tiny-wan")
        info.name, info.boundary_ratio = name_or_path, DEFAULT_BOUNDARY_RATIO
        return info
    return wan.inspect_model(name_or_path)


def load(name_or_path: str, dtype=None, device=None, seed: int = 0, **kw) -> "WanExpertsBackbone":
    """``tiny-wan-a14b`` -> :func:`build_tiny`; a folder -> :func:`load_folder` (``cpu_offload`` in ``kw``).
    dtype defaults to fp32 for the tiny model and bf16 for real ones.

    Raises:
        DualAdapterError: see :func:`dual_adapter.backbones.wan.inspect_model` and :func:`load_folder`.
    """
    if name_or_path in TINY_NAMES:
        return build_tiny(seed=seed, device=device or "cpu", dtype=dtype or "fp32")
    return load_folder(name_or_path, dtype=dtype or "bf16", device=device, cpu_offload=bool(kw.get("cpu_offload")))


def build_tiny(seed: int = 0, device: str = "cpu", dtype="fp32", num_layers: int = 4,
               boundary_ratio: float = DEFAULT_BOUNDARY_RATIO) -> "WanExpertsBackbone":
    """The built-in ``tiny-wan-a14b``: ``tiny-wan`` (seed ``seed``; its transformer is the high-noise expert) plus a
    second seeded random transformer of the same config (the low-noise expert). Same ``seed`` -> same weights."""
    from diffusers import WanTransformer3DModel

    one = wan.build_tiny(seed=seed, device=device, dtype=dtype, num_layers=num_layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)
        low = WanTransformer3DModel(**{**wan._TINY_TRANSFORMER, "num_layers": int(num_layers)}).eval()
    low.requires_grad_(False)
    low.to(device=one.device) if one.dtype == torch.float32 else low.to(device=one.device, dtype=one.dtype)
    return WanExpertsBackbone(one.denoiser, low, boundary_ratio, one.vae, one.text_encoder, one.tokenizer,
                              one.scheduler_config, name=TINY_NAMES[0], device=one.device, dtype=one.dtype,
                              text_len=one.text_length, size=one.default_size)


def load_folder(folder: str | Path, dtype="bf16", device: str | None = None, cpu_offload: bool = False,
                vae_tiling: bool = True) -> "WanExpertsBackbone":
    """Load a diffusers Wan 2.2 A14B folder: the one-transformer parts with :func:`dual_adapter.backbones.wan.
    load_folder` (``transformer/``, the high-noise expert), then ``transformer_2/`` (the low-noise expert) in the same
    dtype, with safetensors.

    Raises:
        DualAdapterError: see :func:`dual_adapter.backbones.wan.inspect_model` (a ``boundary_ratio`` outside (0, 1),
            no ``transformer_2/``, experts of two architectures); weights that do not load (names the folder).
    """
    from diffusers import WanTransformer3DModel

    root = Path(folder).expanduser()
    info = wan.inspect_model(root)
    if info.boundary_ratio is None:
        raise DualAdapterError(f"model folder {str(root)!r} is a one-transformer Wan (no transformer_2/, no "
                               f"boundary_ratio); load it as a Wan model")
    one = wan.load_folder(root, dtype=dtype, device=device, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
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
