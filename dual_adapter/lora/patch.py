"""ONE LoRA model patch for every backbone (:class:`LoraPatch`), and the ``FILE[:STRENGTH]`` argument."""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from ..errors import DualAdapterError
from .file import LoraFile, check_compatible
from .inject import _adapter_names, inject_lora, lora_modules, set_lora_strength


class LoraPatch:
    """Model patch that adds a LoRA to a transformer copy (see :mod:`dual_adapter.patches`).

    ``apply(transformer)`` checks compatibility, injects peft LoRA layers under a fresh adapter
    name, loads the tensors (cast to the base weights' dtype/device) and sets the output scale to
    ``strength * alpha / rank`` per module. Several patches on one copy stack (all active, summed).
    Strength 0 reproduces the base model exactly; negative strengths subtract the LoRA.

    One patch for every backbone: the layers it wraps are the LoRA's modules, checked against the model's
    backbone (:func:`~dual_adapter.lora.file.check_compatible`).

    Args:
        lora: a :class:`LoraFile` (from :func:`load_lora`, a trainer or a merge).
        strength: multiplier of the LoRA update (1 = as trained).
        name: adapter name (default: ``lora``, made unique per model).
        backbone: the model the patched denoiser belongs to (its kind is checked against the LoRA's), or None: the
            backbone is looked up from the denoiser.

    Raises:
        DualAdapterError: at construction for a non-LoraFile, a non-finite strength or NaN/Inf LoRA
            tensors (a diverged training); at ``apply`` for an
            incompatible LoRA (see :func:`check_compatible`).
    """

    def __init__(self, lora: LoraFile, strength: float = 1.0, name: str | None = None, backbone=None):
        if not isinstance(lora, LoraFile):
            raise DualAdapterError(f"LoraPatch needs a LoraFile (from load_lora / train_lora), got {type(lora).__name__}")
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not math.isfinite(strength):
            raise DualAdapterError(f"LoRA strength={strength!r}: must be a finite number")
        bad = [k for k, v in lora.state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise DualAdapterError(f"LoRA {lora.name!r} has NaN/Inf values in {len(bad)} tensor(s) (e.g. {bad[0]}): "
                                   f"its training diverged; use an earlier checkpoint or retrain with a lower lr")
        self.lora = lora
        self.strength = float(strength)
        self.name = name
        self.backbone = backbone

    def apply(self, transformer) -> None:
        if self.backbone is not None:
            check_compatible(self.lora, self.backbone, transformer)
        else:
            check_compatible(self.lora, transformer)
        existing = _adapter_names(transformer)
        base = re.sub(r"[^A-Za-z0-9_]", "_", self.name or "lora") or "lora"
        name, k = base, 1
        while name in existing:
            k += 1
            name = f"{base}_{k}"
        lora = self.lora
        modules = lora.modules
        ranks, alphas = lora.ranks, lora.alphas
        inject_lora(transformer, lora.spec(), name, trainable=False, target_names=modules,
                    rank_pattern={m: r for m, r in ranks.items() if r != lora.rank},
                    alpha_pattern={m: a for m, a in alphas.items() if a != lora.alpha})
        layers = lora_modules(transformer, name)
        with torch.no_grad():
            for mod in modules:
                m = layers[mod]
                for half, d in (("A", m.lora_A), ("B", m.lora_B)):
                    w = d[name].weight
                    w.copy_(lora.tensor(mod, half).to(w.device, w.dtype))
                if abs(m.lora_alpha[name] - alphas[mod]) > 1e-6 or m.r[name] != ranks[mod]:
                    raise DualAdapterError(f"internal: LoRA rank/alpha of {mod} not applied as in the file")
        set_lora_strength(transformer, name, self.strength)

    def __repr__(self) -> str:
        return f"LoraPatch({self.lora.name!r}, strength={self.strength:g})"


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``"FILE[:STRENGTH]"`` -> ``(file, strength)``; strength defaults to 1.

    The text after the last colon is the strength, except in a Windows path (``C:\\loras\\x.safetensors``:
    a drive letter before the colon) and when the whole text names an existing file.

    Raises:
        DualAdapterError: empty file name; a strength that is not a finite number (``x.safetensors:abc``).
    """
    s = str(text).strip()
    path, strength = s, 1.0
    if ":" in s:
        head, tail = s.rsplit(":", 1)
        drive = len(head) == 1 and head.isalpha() and tail[:1] in ("\\", "/")
        if not drive and not Path(s).is_file():
            try:
                strength = float(tail)
            except ValueError:
                raise DualAdapterError(f"--lora {text!r}: strength {tail!r} is not a number; expected FILE or "
                                       f"FILE:STRENGTH, e.g. motion.safetensors:0.8") from None
            if not math.isfinite(strength):
                raise DualAdapterError(f"--lora {text!r}: strength {tail!r} is not a finite number")
            path = head
    if not path:
        raise DualAdapterError(f"--lora {text!r}: expected FILE or FILE:STRENGTH")
    return path, strength
