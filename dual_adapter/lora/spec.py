"""What LoRA goes where: presets, block selection, target resolution, and the peft ``LoraConfig`` they make.

docs/tap.md. Targets are module names inside every block of the denoiser (``attn1.to_q``), or absolute
module names (``transformer_blocks.3.ff.net.2``); the blocks are the backbone's
(:meth:`~dual_adapter.backbones.base.VideoBackbone.blocks`), so one spec fits every backbone whose blocks
hold the named layers.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch import nn

from ..errors import DualAdapterError

#: LoRA targets inside every transformer block (block-relative module names).
PRESETS: dict[str, list[str]] = {
    "tap": ["attn1.to_q", "attn1.to_k"],
    "k_out": ["attn1.to_k", "attn1.to_out.0"],
    "full": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"],
}

def parse_blocks(text: str | Sequence[int] | None, num_blocks: int | None = None) -> list[int] | None:
    """``"0,2,5-7"`` (or a list of ints) -> sorted unique block indices; ``""``/``"all"``/None -> None (all).

    Raises:
        DualAdapterError: unparsable text, or an index outside ``0..num_blocks-1`` when given.
    """
    if text is None:
        return None
    if isinstance(text, str):
        s = text.strip()
        if s in ("", "all"):
            return None
        out: list[int] = []
        try:
            for part in s.split(","):
                part = part.strip()
                if not part:
                    continue
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError(part)
                    out += list(range(lo, hi + 1))
                else:
                    out.append(int(part))
        except ValueError:
            raise DualAdapterError(f"blocks {text!r}: expected block indices like '0,2,5-7' (or empty for all)") from None
    else:
        out = [int(b) for b in text]
    out = sorted(set(out))
    if not out:
        return None
    if num_blocks is not None:
        bad = [b for b in out if not 0 <= b < num_blocks]
        if bad:
            raise DualAdapterError(f"blocks {bad} out of range: the model has {num_blocks} blocks (0..{num_blocks - 1})")
    return out


def resolve_targets(targets: str | Sequence[str] | None) -> list[str]:
    """A preset name (``"tap"``, ``"k_out"``, ``"full"``), a comma-separated string or a list of
    module names -> list of module names (block-relative like ``"attn1.to_q"``, or absolute like
    ``"transformer_blocks.3.ff.net.2"``).

    Raises:
        DualAdapterError: empty, or not strings.
    """
    if targets is None:
        return list(PRESETS["tap"])
    if isinstance(targets, str):
        t = targets.strip()
        if t in PRESETS:
            return list(PRESETS[t])
        targets = [s.strip() for s in t.split(",") if s.strip()]
    out = [str(t).strip() for t in targets]
    if not out or not all(out):
        raise DualAdapterError(f"LoRA targets {targets!r}: expected a preset ({', '.join(PRESETS)}) or module names "
                               f"such as attn1.to_q")
    if len(out) == 1 and out[0] in PRESETS:
        return list(PRESETS[out[0]])
    return out


def preset_name(targets: Sequence[str]) -> str:
    """The preset whose targets are exactly ``targets`` (any order), else ``"custom"``."""
    s = sorted(targets)
    for k, v in PRESETS.items():
        if sorted(v) == s:
            return k
    return "custom"


def _backbone(transformer):
    from ..backbones import backbone_for

    return backbone_for(transformer)


def _blocks_of(transformer) -> int:
    return len(_backbone(transformer).blocks(transformer))


@dataclass
class LoraSpec:
    """What LoRA to put where.

    Attributes:
        rank: LoRA rank r (>= 1). 32 in the TAP paper.
        alpha: LoRA alpha; the LoRA output is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA input during training (0.1 in the authors' setting; 0..1).
        targets: module names inside each block (default: :data:`PRESETS` ``["tap"]`` = ``attn1.to_q``,
            ``attn1.to_k``); absolute names (``transformer_blocks.3.ff.net.2``, ``proj_out``) are taken as is.
        blocks: indices of the transformer blocks that get the LoRA (``None`` = all); used by
            layer-selective LoRAs (CustomTTT).
    """

    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.1
    targets: list[str] = field(default_factory=lambda: list(PRESETS["tap"]))
    blocks: list[int] | None = None

    @classmethod
    def from_preset(cls, preset: str | Sequence[str] = "tap", **kw) -> "LoraSpec":
        """``LoraSpec(targets=resolve_targets(preset), **kw)``."""
        return cls(targets=resolve_targets(preset), **kw)

    def validate(self) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise DualAdapterError(f"LoRA rank={self.rank!r}: must be an integer >= 1")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not math.isfinite(self.alpha) \
                or self.alpha <= 0:
            raise DualAdapterError(f"LoRA alpha={self.alpha!r}: must be a number > 0")
        if not isinstance(self.dropout, (int, float)) or not (0.0 <= float(self.dropout) < 1.0):
            raise DualAdapterError(f"LoRA dropout={self.dropout!r}: must be in [0, 1)")
        self.targets = resolve_targets(self.targets)
        if self.blocks is not None:
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in self.blocks) or not list(self.blocks):
                raise DualAdapterError(f"LoRA blocks={self.blocks!r}: expected a non-empty list of block indices or None")

    def target_modules(self, transformer) -> list[str]:
        """Full module names (``transformer_blocks.{i}.attn1.to_q`` ...) of ``transformer`` that get the LoRA.

        Raises:
            DualAdapterError: a block index out of range, or a target that is not a Linear layer of
                this model (the message lists what the block offers).
        """
        self.validate()
        bnames = [b.name for b in _backbone(transformer).blocks(transformer)]  # transformer_blocks.{i} on CogVideoX
        n = len(bnames)
        blocks = list(range(n)) if self.blocks is None else sorted(set(self.blocks))
        bad = [b for b in blocks if not 0 <= b < n]
        if bad:
            raise DualAdapterError(f"LoRA blocks {bad} out of range: this model has {n} blocks (0..{n - 1})")
        modules = dict(transformer.named_modules())

        def linear(name):
            m = modules.get(name)
            return isinstance(getattr(m, "base_layer", m), nn.Linear)

        names: list[str] = []
        for t in self.targets:
            if any(t.startswith(b + ".") for b in bnames) or (t in modules and f"{bnames[0]}.{t}" not in modules):
                cands = [t]  # an absolute module name
            else:
                cands = [f"{bnames[i]}.{t}" for i in blocks]
            for c in cands:
                if not linear(c):
                    offer = sorted(k[len(bnames[0]) + 1:] for k, v in modules.items()
                                   if k.startswith(bnames[0] + ".") and isinstance(v, nn.Linear))
                    what = "not a Linear layer" if c in modules else "not in this model"
                    raise DualAdapterError(f"LoRA target {t!r} ({c}) is {what}; the Linear layers of a block are: "
                                           f"{', '.join(offer)}")
                if c not in names:
                    names.append(c)
        return names


def lora_config(spec: LoraSpec, target_names: Sequence[str], *, rank_pattern: Mapping[str, int] | None = None,
                alpha_pattern: Mapping[str, float] | None = None):
    """The peft ``LoraConfig`` of ``spec`` on exactly ``target_names`` (full module names).

    ``rank_pattern`` / ``alpha_pattern``: per-module rank / alpha (full module name -> value), matched by exact
    name (the names are escaped for peft's regex matching).
    """
    from peft import LoraConfig

    esc = lambda d: {re.escape(k): v for k, v in (d or {}).items()}  # noqa: E731 - exact-name patterns
    return LoraConfig(r=int(spec.rank), lora_alpha=float(spec.alpha), lora_dropout=float(spec.dropout),
                      target_modules=list(target_names), rank_pattern=esc(rank_pattern),
                      alpha_pattern=esc(alpha_pattern), init_lora_weights=True)
