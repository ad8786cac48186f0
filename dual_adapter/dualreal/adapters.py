"""DualReal's DA-block adapters (docs/dualreal.md, paper eqs. 1-3).

Each transformer block of CogVideoX gets four bottleneck adapters that run *in parallel* with its
two sub-layers: identity-attention, identity-FF, motion-attention, motion-FF. An adapter maps the
AdaLN-normalised sub-layer input ``n`` (the concatenated ``[text; visual]`` tokens, ``[B, N, D]``)
to a correction that is added to the sub-layer output *before* CogVideoX's gates:

    A(n, c) = up(GELU(down(n + lambda * W_cond(c))))          (form ``zero_init``)
    A(n, c) = n + up(GELU(down(n + lambda * W_cond(c))))      (form ``official``, the released code)

``down: D -> h`` (h = 64 by default), ``up: h -> D`` with weight and bias zero-initialised,
``lambda = 1``. Only the motion adapters have ``W_cond: Linear(1024 -> D)``, fed the reference-image
embedding ``c`` ``[B, 1, 1024]`` (broadcast over tokens); with no embedding the term is skipped.

:class:`DualRealAdapters` holds every trainable tensor of a DualReal model (the per-block adapters
and the StageBlender controller); its ``state_dict`` keys follow the authors' checkpoint names,
``transformer_blocks.{i}.{id_attn_adapter|id_ff_adapter|motion_attn_adapter|motion_ff_adapter}.
{down_linear|up_linear|condition_linear}.{weight|bias}`` and ``controller.*``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import DualAdapterError
from ..limits import MAX_ADAPTER_HIDDEN, MAX_BLOCKS, MAX_GROUPS, MAX_WIDTH, check_int
from .controller import StageBlender, block_groups

__all__ = ["FORMS", "REFERENCE_DIM", "ADAPTER_NAMES", "IDENTITY_ADAPTERS", "MOTION_ADAPTERS", "Adapter",
           "DABlockAdapters", "DualRealConfig", "DualRealAdapters"]

FORMS = ("official", "zero_init")
REFERENCE_DIM = 1024
IDENTITY_ADAPTERS = ("id_attn_adapter", "id_ff_adapter")
MOTION_ADAPTERS = ("motion_attn_adapter", "motion_ff_adapter")
ADAPTER_NAMES = IDENTITY_ADAPTERS + MOTION_ADAPTERS


class Adapter(nn.Module):
    """One bottleneck adapter (paper eqs. 1-2).

    Args:
        dim: transformer width D (3072 on 5B, 1920 on 2B).
        hidden: bottleneck width h (64 by default).
        cond_dim: width of the reference embedding for ``W_cond`` (1024) or ``None`` (no ``W_cond``:
            the identity adapters).
        skip: add the input back (the ``official`` form) or not (``zero_init``).

    ``forward(n [B, N, D], cond [B, 1, cond_dim] | None, lam=1.0) -> [B, N, D]``.
    """

    def __init__(self, dim: int, hidden: int = 64, cond_dim: int | None = None, skip: bool = False):
        super().__init__()
        self.down_linear = nn.Linear(dim, hidden)
        self.up_linear = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up_linear.weight)
        nn.init.zeros_(self.up_linear.bias)
        self.condition_linear = nn.Linear(cond_dim, dim) if cond_dim else None
        self.skip = bool(skip)

    def forward(self, n: torch.Tensor, cond: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
        x = n
        if cond is not None and self.condition_linear is not None and lam != 0:
            x = x + lam * self.condition_linear(cond)
        out = self.up_linear(F.gelu(self.down_linear(x)))
        return n + out if self.skip else out


class DABlockAdapters(nn.Module):
    """The four adapters of one DA-block (identity/motion x attention/FF)."""

    def __init__(self, dim: int, hidden: int = 64, cond_dim: int = REFERENCE_DIM, skip: bool = False):
        super().__init__()
        self.id_attn_adapter = Adapter(dim, hidden, None, skip)
        self.id_ff_adapter = Adapter(dim, hidden, None, skip)
        self.motion_attn_adapter = Adapter(dim, hidden, cond_dim, skip)
        self.motion_ff_adapter = Adapter(dim, hidden, cond_dim, skip)


@dataclass
class DualRealConfig:
    """Architecture of a DualReal adapter set.

    Attributes:
        num_blocks: transformer blocks L (42 on 5B, 30 on 2B).
        dim: transformer width D (3072 on 5B, 1920 on 2B).
        time_embed_dim: width of the model's timestep embedding (512 on 5B and 2B).
        hidden: adapter bottleneck width (64).
        groups: StageBlender weight groups n (7; paper Table 3); 1 = the "no grouping" ablation.
        form: ``"official"`` (adapters add their input back, as the released code) or ``"zero_init"``
            (an untrained DA-block leaves the model unchanged).
        controller: use the StageBlender controller; ``False`` = the "fixed weights" ablation
            (w_id = w_mo = 0.1 in every block).
        cond_dim: reference-embedding width (1024, OpenCLIP ViT-H/14).
        lam: lambda, the weight of ``W_cond(c)`` in the motion adapters' input (1).
        controller_hidden: width of the controller head's hidden layer (128).
        scale: the controller's total weight, w_id + w_mo (0.2).
    """

    num_blocks: int
    dim: int
    time_embed_dim: int
    hidden: int = 64
    groups: int = 7
    form: str = "official"
    controller: bool = True
    cond_dim: int = REFERENCE_DIM
    lam: float = 1.0
    controller_hidden: int = 128
    scale: float = 0.2

    def validate(self) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field."""
        bounds = {"num_blocks": MAX_BLOCKS, "dim": MAX_WIDTH, "time_embed_dim": MAX_WIDTH, "hidden": MAX_ADAPTER_HIDDEN,
                  "groups": MAX_GROUPS, "cond_dim": MAX_WIDTH, "controller_hidden": MAX_ADAPTER_HIDDEN}
        for k, hi in bounds.items():  # bounded (docs/limits.md): a file's config must not build 10^8 modules
            check_int(f"DualReal {k}", getattr(self, k), 1, hi)
        if self.form not in FORMS:
            raise DualAdapterError(f"DualReal form {self.form!r}: expected one of {FORMS}")
        if self.groups > self.num_blocks:
            raise DualAdapterError(f"DualReal groups={self.groups}: more weight groups than the model's "
                                   f"{self.num_blocks} blocks")
        for k in ("lam", "scale"):  # types first: a file's config may hold "abc" or null
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DualAdapterError(f"DualReal {k}={v!r}: must be a finite number")
        if not isinstance(self.controller, bool):
            raise DualAdapterError(f"DualReal controller={self.controller!r}: must be true or false")
        if not (self.scale > 0):
            raise DualAdapterError(f"DualReal scale={self.scale}: must be > 0")

    @classmethod
    def for_transformer(cls, transformer, **kw) -> "DualRealConfig":
        """The config matching a transformer (blocks, width, StageBlender time width: its backbone's
        :meth:`~dual_adapter.backbones.base.VideoBackbone.adapter_dims`) plus ``kw``."""
        from ..backbones import backbone_for

        dim, blocks, tdim = backbone_for(transformer).adapter_dims(transformer)
        cfg = cls(num_blocks=int(blocks), dim=int(dim), time_embed_dim=int(tdim), **kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DualRealConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cfg = cls(**known)
        cfg.validate()
        return cfg


class DualRealAdapters(nn.Module):
    """Every trainable tensor of DualReal: ``transformer_blocks[i]`` (a :class:`DABlockAdapters`)
    for each block and the :class:`~dual_adapter.dualreal.controller.StageBlender` ``controller``
    (absent when ``config.controller`` is False).

    Attributes:
        config: the :class:`DualRealConfig`.
        block_group: ``[L]`` list, the weight group of each block (contiguous, near-equal groups).
    """

    def __init__(self, config: DualRealConfig):
        super().__init__()
        config.validate()
        self.config = config
        skip = config.form == "official"
        self.transformer_blocks = nn.ModuleList(
            DABlockAdapters(config.dim, config.hidden, config.cond_dim, skip) for _ in range(config.num_blocks))
        self.controller = (StageBlender(config.dim, config.time_embed_dim, config.groups, config.controller_hidden,
                                        config.scale) if config.controller else None)
        self.block_group = block_groups(config.num_blocks, config.groups if config.controller else 1)

    def block(self, i: int) -> DABlockAdapters:
        """The adapters of block ``i``."""
        return self.transformer_blocks[i]

    def identity_parameters(self) -> list[nn.Parameter]:
        """The identity adapters' parameters (trained in the identity phase only)."""
        return [p for b in self.transformer_blocks for name in IDENTITY_ADAPTERS
                for p in getattr(b, name).parameters()]

    def motion_parameters(self) -> list[nn.Parameter]:
        """The motion adapters' parameters (trained in the motion phase only)."""
        return [p for b in self.transformer_blocks for name in MOTION_ADAPTERS
                for p in getattr(b, name).parameters()]

    def controller_parameters(self) -> list[nn.Parameter]:
        """The StageBlender's parameters (trained in both phases); empty without a controller."""
        return list(self.controller.parameters()) if self.controller is not None else []

    def extra_repr(self) -> str:
        c = self.config
        return f"blocks={c.num_blocks}, dim={c.dim}, hidden={c.hidden}, groups={c.groups}, form={c.form}, " \
               f"controller={c.controller}"
