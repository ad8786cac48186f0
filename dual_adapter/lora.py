"""Motion LoRA with TAP on CogVideoX: presets, peft injection, training, diffusers-format files.

docs/tap.md ("Separate Motion from Appearance"). TAP (Temporal Attention
Purification, paper) trains a motion LoRA that reshapes attention only and never the Value
projection, so the pretrained values are re-organised into the new motion. CogVideoX attends
jointly over space and time, so on this backbone TAP is a LoRA on ``attn1.to_q`` and
``attn1.to_k`` of every block (preset ``tap``). Other presets: ``k_out`` (the authors' released
code: ``to_k`` and ``to_out.0``) and ``full`` (q, k, v, out: the plain LoRA baseline).
AH (appearance highway) needs U-Net skip connections that CogVideoX does not have; it is not
built here (docs/tap.md).

What lives here:
  * :data:`PRESETS`, :class:`LoraSpec` (rank, alpha, dropout, targets, blocks);
  * :func:`inject_lora`: peft LoRA layers on a weight-sharing copy of the transformer;
  * :func:`lora_state_dict`, :func:`save_lora`, :func:`load_lora`: LoRA files in the diffusers
    CogVideoX format (``transformer.transformer_blocks.{i}.attn1.to_q.lora_A.weight``), readable by
    ``CogVideoXPipeline.load_lora_weights`` and by ComfyUI CogVideoX tools; reading also accepts
    peft files and kohya ``lora_unet_*`` files;
  * :func:`check_compatible`: a LoRA against a transformer (mismatched keys / shapes -> error);
  * :class:`LoraPatch`: a model patch (``patches.ModelPatch``) with a strength; several stack;
  * :func:`train_lora`: the trainer, on the shared loop of :mod:`dual_adapter.training`, with
    MotionDirector's optional spatial path and appearance-debiased loss.

Weights convention of saved files: ``delta_W = lora_B @ lora_A`` (alpha == rank, scale 1), the
convention every diffusers-format reader assumes. A LoRA trained with ``alpha != rank`` has the
factor ``alpha / rank`` folded into ``lora_B`` when saved; the training alpha is kept in the
metadata (``trained_alpha``).

Size: presets, peft injection, the file, its formats' dispatch, the patch, CLI parsing and the two
trainers (CogVideoX, U-Net) are still one module; it becomes a ``lora/`` package when the CogVideoX and
U-Net LoRA code (here and in ``unet_motion.py``) is one mechanism, so that the split does not copy the
duplication into more files.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import DualAdapterError
from .seeds import derived_seed

if TYPE_CHECKING:
    from .training import TrainResult

log = logging.getLogger(__name__)

__all__ = [
    "parse_blocks",
    "PRESETS",
    "LoraSpec",
    "LoraFile",
    "LoraPatch",
    "resolve_targets",
    "preset_name",
    "inject_lora",
    "lora_modules",
    "lora_state_dict",
    "lora_metadata",
    "save_lora",
    "load_lora",
    "check_compatible",
    "parse_lora_arg",
    "lora_train_config",
    "train_lora",
    "train_lora_on_latents",
    "train_state_path",
    "spatial_checkpoint_path",
    "set_lora_strength",
    "base_config",
    "LORA_FORMAT",
]

#: LoRA targets inside every transformer block (block-relative module names).
PRESETS: dict[str, list[str]] = {
    "tap": ["attn1.to_q", "attn1.to_k"],
    "k_out": ["attn1.to_k", "attn1.to_out.0"],
    "full": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"],
}

#: Marker written in the metadata of the files this module saves.
LORA_FORMAT = "dual_adapter.lora/1"

# Linear layers of diffusers' CogVideoXTransformer3DModel (2B, 5B, 1.5-5B), used to turn kohya's
# underscore names (lora_unet_transformer_blocks_0_attn1_to_q) back into module paths.
_BLOCK_LINEARS = ("norm1.linear", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "norm2.linear",
                  "ff.net.0.proj", "ff.net.2")
_TOP_LINEARS = ("patch_embed.proj", "patch_embed.text_proj", "time_embedding.linear_1", "time_embedding.linear_2",
                "ofs_embedding.linear_1", "ofs_embedding.linear_2", "norm_out.linear", "proj_out")



# --------------------------------------------------------------------------------------------
# spec


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
    from .backbones import backbone_for

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


# --------------------------------------------------------------------------------------------
# injection (peft)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_modules(transformer, adapter_name: str | None = None) -> dict[str, nn.Module]:
    """Module name -> peft LoRA layer of ``transformer`` (only those holding ``adapter_name`` if given)."""
    return {n: m for n, m in _lora_layers(transformer).items()
            if adapter_name is None or adapter_name in m.lora_A}


def _adapter_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for m in _lora_layers(model).values():
        for k in m.lora_A.keys():
            if k not in names:
                names.append(k)
    return names


@contextlib.contextmanager
def _keep_requires_grad(model: nn.Module):
    """peft flips requires_grad of every parameter it touches; restore the caller's flags."""
    flags = {id(p): (p, p.requires_grad) for p in model.parameters()}
    try:
        yield flags
    finally:
        for p, rg in flags.values():
            p.requires_grad_(rg)


def _set_active(model: nn.Module, names: Sequence[str] | None = None) -> None:
    """Make ``names`` (default: every adapter of the model) the active adapters of every LoRA layer,
    leaving every parameter's requires_grad as it was."""
    names = list(names) if names is not None else _adapter_names(model)
    with _keep_requires_grad(model):
        for m in _lora_layers(model).values():
            m.set_adapter(names)


def inject_lora(
    transformer: nn.Module,
    spec: LoraSpec,
    adapter_name: str = "default",
    *,
    trainable: bool = True,
    target_names: Sequence[str] | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    dtype: torch.dtype | None = None,
) -> list[nn.Parameter]:
    """Add a peft LoRA adapter named ``adapter_name`` to ``transformer`` **in place**.

    Pass a weight-sharing copy (:func:`dual_adapter.patches.shallow_copy_module`), never a loaded
    model: the module tree is changed (Linear layers are wrapped), the frozen weights are not
    (peft keeps the original tensors as ``base_layer``). ``lora_B`` starts at zero, so the new
    adapter leaves the output unchanged until trained. Several adapters may live on one model;
    all of them are active. Only the new LoRA tensors are trainable (when ``trainable``); the
    requires_grad flag of every other parameter is left as it was.

    Args:
        spec: rank, alpha, dropout, targets, blocks (see :class:`LoraSpec`).
        adapter_name: peft adapter name (unique on this model).
        trainable: new LoRA tensors require grad (fp32 for training) or not (inference; base dtype).
        target_names: explicit full module names (overrides ``spec.targets`` / ``spec.blocks``).
        rank_pattern, alpha_pattern: per-module rank / alpha (full module name -> value) for LoRAs
            whose modules differ (files from other trainers).
        dtype: dtype of the new LoRA tensors (default: fp32 when trainable, else the base weights').

    Returns:
        The new LoRA parameters (``lora_A`` / ``lora_B`` weights), in module order.

    Raises:
        DualAdapterError: bad spec or targets, or the adapter name is taken.
    """
    from peft import LoraConfig, inject_adapter_in_model

    spec.validate()
    names = list(target_names) if target_names is not None else spec.target_modules(transformer)
    if not names:
        raise DualAdapterError("LoRA has no target modules")
    if adapter_name in _adapter_names(transformer):
        raise DualAdapterError(f"LoRA adapter name {adapter_name!r} is already used on this model")
    esc = lambda d: {re.escape(k): v for k, v in (d or {}).items()}  # noqa: E731 - exact-name patterns
    cfg = LoraConfig(r=int(spec.rank), lora_alpha=float(spec.alpha), lora_dropout=float(spec.dropout),
                     target_modules=names, rank_pattern=esc(rank_pattern), alpha_pattern=esc(alpha_pattern),
                     init_lora_weights=True)
    with _keep_requires_grad(transformer), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about re-using a model that already holds an adapter
        inject_adapter_in_model(cfg, transformer, adapter_name=adapter_name)
    _set_active(transformer)
    layers = lora_modules(transformer, adapter_name)
    missing = [n for n in names if n not in layers]
    if missing:
        raise DualAdapterError(f"peft did not wrap these LoRA targets: {missing[:8]}")
    params: list[nn.Parameter] = []
    training = transformer.training
    for n in names:
        m = layers[n]
        base = m.get_base_layer()
        base_w = base.weight  # an fp8-stored base (dual_adapter.memory) computes in its compute_dtype
        dt = dtype or (torch.float32 if trainable else getattr(base, "compute_dtype", base_w.dtype))
        for d in (m.lora_A, m.lora_B):
            lin = d[adapter_name]
            lin.to(device=base_w.device, dtype=dt)
            lin.weight.requires_grad_(bool(trainable))
            params.append(lin.weight)
        m.lora_dropout[adapter_name].train(training)
    return params


def set_lora_strength(transformer, adapter_name: str, strength: float) -> None:
    """Scale the output of adapter ``adapter_name`` to ``strength * alpha / rank`` (peft ``set_scale``)."""
    for m in lora_modules(transformer, adapter_name).values():
        m.set_scale(adapter_name, float(strength))


# --------------------------------------------------------------------------------------------
# state dicts and files


def lora_state_dict(transformer, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``adapter_name`` in the diffusers CogVideoX format.

    Keys: ``transformer.{module}.lora_A.weight`` ``[r, in]`` and ``transformer.{module}.lora_B.weight``
    ``[out, r]``, e.g. ``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``. Values are
    detached CPU copies in their training dtype. The peft scale ``alpha / r`` is *not* applied here
    (:func:`save_lora` folds it in).

    Raises:
        DualAdapterError: the model has no adapter of that name.
    """
    layers = lora_modules(transformer, adapter_name)
    if not layers:
        raise DualAdapterError(f"the model has no LoRA adapter named {adapter_name!r}; has: {_adapter_names(transformer)}")
    out: dict[str, torch.Tensor] = {}
    for n, m in layers.items():
        out[f"transformer.{n}.lora_A.weight"] = m.lora_A[adapter_name].weight.detach().to("cpu").clone()
        out[f"transformer.{n}.lora_B.weight"] = m.lora_B[adapter_name].weight.detach().to("cpu").clone()
    return out


def _module_of(key: str) -> str:
    k = key[len("transformer."):] if key.startswith("transformer.") else key
    return k.rsplit(".lora_", 1)[0]


def _block_relative(names: Iterable[str]) -> tuple[list[str], list[int] | None]:
    targets: list[str] = []
    blocks: set[int] = set()
    for n in names:
        m = re.match(r"^(?:transformer_blocks|blocks)\.(\d+)\.(.+)$", n)  # CogVideoX / Wan block names
        if m:
            blocks.add(int(m.group(1)))
            if m.group(2) not in targets:
                targets.append(m.group(2))
        elif n not in targets:
            targets.append(n)
    return targets, (sorted(blocks) or None)


def base_config(transformer) -> dict:
    """The architecture fields of the denoiser's config that a LoRA depends on (its backbone's
    :meth:`~dual_adapter.backbones.base.VideoBackbone.architecture`)."""
    return _backbone(transformer).architecture(transformer)


def lora_metadata(spec: LoraSpec, transformer, *, base_model: str | None = None, **extra) -> dict:
    """Metadata for a LoRA trained with ``spec`` on ``transformer`` (rank, alpha, targets, blocks,
    preset, the base model's config and fingerprint); ``extra`` (training settings...) is merged in."""
    spec.validate()
    n = _blocks_of(transformer)
    md = {
        "format": LORA_FORMAT,
        "method": "TAP" if preset_name(spec.targets) == "tap" else "LoRA",
        "preset": preset_name(spec.targets),
        "rank": int(spec.rank),
        "alpha": float(spec.alpha),
        "dropout": float(spec.dropout),
        "targets": list(spec.targets),
        "blocks": list(range(n)) if spec.blocks is None else sorted(set(spec.blocks)),
        "base_model": base_model,
        "base_config": base_config(transformer),
        "base_fingerprint": _backbone(transformer).fingerprint(transformer),
    }
    md.update(extra)
    return md


def save_lora(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None,
              *, alphas: Mapping[str, float] | None = None, overwrite: bool = False,
              dtype: torch.dtype | None = None) -> Path:
    """Write a LoRA as a diffusers-format safetensors file, atomically.

    ``state_dict`` is what :func:`lora_state_dict` returns (``transformer.{module}.lora_A/B.weight``).
    Each module's scale ``alpha / rank`` is folded into its ``lora_B``, so the file follows the
    convention every diffusers-format reader assumes (delta_W = lora_B @ lora_A, alpha == rank) and
    diffusers, ComfyUI CogVideoX tools and :func:`load_lora` all apply exactly the trained update at
    strength 1. The metadata records ``alpha = rank`` and, when they differed, ``trained_alpha``;
    diffusers' own ``lora_adapter_metadata`` entry (r, lora_alpha, target_modules, patterns) is added.

    Args:
        path: destination ``.safetensors`` file.
        metadata: JSON-serialisable dict (see :func:`lora_metadata`); ``alpha`` there applies to every
            module unless ``alphas`` is given (no alpha anywhere = alpha == rank).
        alphas: per-module alpha (module name without ``transformer.``).
        overwrite: replace an existing file (checkpoints); default refuses.
        dtype: cast tensors (e.g. ``torch.bfloat16`` for smaller files); default keeps them.

    Raises:
        DualAdapterError: empty or malformed state dict, or the file exists and not ``overwrite``.
    """
    from .io import save_safetensors

    sd = dict(state_dict)
    if not sd:
        raise DualAdapterError(f"cannot save LoRA {str(path)!r}: no tensors")
    bad = [k for k in sd if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
           or not k.startswith("transformer.")]
    if bad:
        raise DualAdapterError(f"cannot save LoRA {str(path)!r}: keys not in diffusers format "
                               f"(transformer.<module>.lora_A/B.weight): {bad[:5]}")
    lf = _folded(LoraFile.from_state_dict(sd, metadata, alphas=alphas))  # checks the A/B pairs
    sd, md, ranks, rank = lf.state_dict, dict(lf.metadata), lf.ranks, lf.rank
    md.setdefault("format", LORA_FORMAT)
    md["rank"] = rank
    md["alpha"] = float(rank)
    modules = sorted(ranks)
    targets, blocks = _block_relative(modules)
    md.setdefault("targets", targets)
    md.setdefault("blocks", blocks)
    rank_pattern = {re.escape(m): r for m, r in ranks.items() if r != rank}
    md["lora_adapter_metadata"] = json.dumps({
        "transformer.r": rank, "transformer.lora_alpha": float(rank),
        "transformer.target_modules": modules, "transformer.rank_pattern": rank_pattern,
        "transformer.alpha_pattern": {m: float(r) for m, r in rank_pattern.items()},
        "transformer.use_dora": False, "transformer.lora_bias": False,
    }, sort_keys=True)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return save_safetensors(sd, path, md, overwrite=overwrite)


@dataclass
class LoraFile:
    """A LoRA ready to apply: diffusers-format tensors plus what is known about them.

    Attributes:
        state_dict: ``transformer.{module}.lora_A.weight`` ``[r, in]`` / ``.lora_B.weight`` ``[out, r]``.
        metadata: the file's metadata (JSON-decoded), or ``{}``.
        rank: the most common rank. alpha: the most common alpha (scale = alpha / rank).
        targets: block-relative module names (``attn1.to_q``...), absolute for non-block modules.
        blocks: block indices that carry the LoRA (None when only non-block modules do).
        alphas: per-module alpha (module name without ``transformer.``).
        source_format: ``"dual_adapter"``, ``"diffusers"``, ``"peft"`` or ``"kohya"``.
        path: the file it came from (None when built in memory).
        skipped: keys of the file that are not for the transformer (text-encoder LoRA), not applied.
    """

    state_dict: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)
    rank: int = 0
    alpha: float = 0.0
    targets: list[str] = field(default_factory=list)
    blocks: list[int] | None = None
    alphas: dict[str, float] = field(default_factory=dict)
    source_format: str = "dual_adapter"
    path: str | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def modules(self) -> list[str]:
        """Full module names (without ``transformer.``) that the LoRA changes."""
        return sorted({_module_of(k) for k in self.state_dict})

    @property
    def ranks(self) -> dict[str, int]:
        return {_module_of(k): int(v.shape[0]) for k, v in self.state_dict.items() if k.endswith(".lora_A.weight")}

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else "lora"

    def spec(self) -> LoraSpec:
        """A :class:`LoraSpec` with this LoRA's rank / alpha / targets / blocks (dropout 0)."""
        return LoraSpec(rank=int(self.rank), alpha=float(self.alpha), dropout=0.0, targets=list(self.targets),
                        blocks=self.blocks)

    def save(self, path: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
        """:func:`save_lora` of this LoRA (scales folded, metadata kept)."""
        return save_lora(path, self.state_dict, self.metadata, alphas=self.alphas, overwrite=overwrite, dtype=dtype)

    def __repr__(self) -> str:
        return (f"LoraFile({self.name!r}, rank={self.rank}, alpha={self.alpha:g}, targets={self.targets}, "
                f"modules={len(self.modules)}, format={self.source_format})")

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], metadata: Mapping | None = None,
                        alphas: Mapping[str, float] | None = None, source_format: str = "dual_adapter",
                        path: str | None = None, skipped: Sequence[str] = ()) -> "LoraFile":
        """Build from diffusers-format tensors; checks that every module has a matching A/B pair.

        Raises:
            DualAdapterError: missing halves, non-2-D tensors or inconsistent ranks (names the keys).
        """
        where = f"LoRA file {path!r}" if path else "LoRA"
        sd = dict(state_dict)
        if not sd:
            raise DualAdapterError(f"{where} contains no LoRA tensors for the transformer")
        mods: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in sd.items():
            if k.endswith(".lora_A.weight"):
                mods.setdefault(_module_of(k), {})["A"] = v
            elif k.endswith(".lora_B.weight"):
                mods.setdefault(_module_of(k), {})["B"] = v
            else:
                raise DualAdapterError(f"{where}: unexpected key {k!r} (expected transformer.<module>.lora_A/B.weight)")
        problems = []
        for m, d in mods.items():
            if "A" not in d or "B" not in d:
                problems.append(f"{m}: only lora_{'A' if 'A' in d else 'B'}")
            elif d["A"].ndim != 2 or d["B"].ndim != 2 or d["A"].shape[0] != d["B"].shape[1]:
                problems.append(f"{m}: lora_A {tuple(d['A'].shape)} and lora_B {tuple(d['B'].shape)} "
                                f"do not form a rank-r pair ([r, in] and [out, r])")
        if problems:
            raise DualAdapterError(f"{where} is malformed: " + "; ".join(problems[:10]) +
                                   (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
        ranks = {m: int(d["A"].shape[0]) for m, d in mods.items()}
        rank = collections.Counter(ranks.values()).most_common(1)[0][0]
        md = dict(metadata or {})
        if alphas:
            al = {m: float(alphas.get(m, ranks[m])) for m in mods}
        elif md.get("alpha"):
            al = {m: (float(md["alpha"]) if ranks[m] == rank else float(ranks[m])) for m in mods}
        else:
            al = {m: float(ranks[m]) for m in mods}
        alpha = collections.Counter(al.values()).most_common(1)[0][0]
        targets, blocks = _block_relative(sorted(mods))
        if isinstance(md.get("targets"), list) and sorted(md["targets"]) == sorted(targets):
            targets = list(md["targets"])  # the order the file was trained with
        return cls(state_dict=sd, metadata=md, rank=rank, alpha=alpha, targets=targets, blocks=blocks, alphas=al,
                   source_format=source_format, path=path, skipped=list(skipped))


def _kohya_table() -> tuple[dict[str, str], dict[str, str]]:
    block = {n.replace(".", "_"): n for n in _BLOCK_LINEARS}
    top = {n.replace(".", "_"): n for n in _TOP_LINEARS}
    return block, top


def _kohya_module(layer: str) -> str | None:
    """``lora_unet_transformer_blocks_0_attn1_to_q`` -> ``transformer_blocks.0.attn1.to_q`` (None if unknown)."""
    block, top = _kohya_table()
    rest = layer[len("lora_unet_"):]
    m = re.match(r"^transformer_blocks_(\d+)_(.+)$", rest)
    if m:
        sub = block.get(m.group(2))
        return f"transformer_blocks.{m.group(1)}.{sub}" if sub else None
    return top.get(rest)


_PEFT_SUFFIX = re.compile(r"^(?P<mod>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
                          r"lora_linear_layer\.down|lora_linear_layer\.up)(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")
_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")


def _read_peft_config(path: Path) -> dict:
    cfg = path.parent / "adapter_config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())
        except (OSError, ValueError):
            log.warning("could not read %s; assuming alpha == rank", cfg)
    return {}


def _pattern_match(pattern: str, module: str) -> bool:
    """peft's rule: ``pattern`` matches ``module`` or a dotted suffix of it (regex; plain text if invalid)."""
    try:
        return re.match(rf"(.*\.)?({pattern})$", module) is not None
    except re.error:
        return module == pattern or module.endswith("." + pattern)


def _convert(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: Path) -> LoraFile:
    where = f"LoRA file {str(path)!r}"
    keys = list(tensors)
    skipped: list[str] = []
    alphas: dict[str, float] = {}
    sd: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    unsupported = [k for k in keys if "dora_scale" in k or "lora_magnitude_vector" in k
                   or re.search(r"\.lora_B(\.[^.]+)?\.bias$", k) or "hada_" in k or "lokr_" in k]
    if unsupported:
        raise DualAdapterError(f"{where} uses a LoRA variant this loader does not apply (DoRA, LoHa, LoKr or "
                               f"LoRA biases): {unsupported[:5]}")
    if any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in keys):
        fmt = "kohya"
        layers: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("lora_te"):
                skipped.append(k)
                continue
            layer, _, elem = k.partition(".")
            if not layer.startswith("lora_unet_") or elem not in ("lora_down.weight", "lora_up.weight", "alpha"):
                unknown.append(k)
                continue
            layers.setdefault(layer, {})[elem] = v
        for layer, d in layers.items():
            mod = _kohya_module(layer)
            if mod is None:
                unknown.append(layer)
                continue
            if "lora_down.weight" in d:
                sd[f"transformer.{mod}.lora_A.weight"] = d["lora_down.weight"].reshape(d["lora_down.weight"].shape[0], -1)
            if "lora_up.weight" in d:
                sd[f"transformer.{mod}.lora_B.weight"] = d["lora_up.weight"].reshape(d["lora_up.weight"].shape[0], -1)
            if "alpha" in d:
                alphas[mod] = float(d["alpha"].float().item())
        if unknown:
            raise DualAdapterError(f"{where} (kohya format) has keys that name no CogVideoX transformer layer: "
                                   f"{unknown[:8]}" + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
        for mod in {_module_of(k) for k in sd}:
            if mod not in alphas:
                a = sd.get(f"transformer.{mod}.lora_A.weight")
                if a is not None:
                    alphas[mod] = float(a.shape[0])
        if skipped:
            log.warning("%s: %d text-encoder LoRA keys are not applied (this pack only patches the transformer)",
                        where, len(skipped))
        return LoraFile.from_state_dict(sd, meta, alphas=alphas, source_format=fmt, path=str(path), skipped=skipped)

    ours = meta.get("format") == LORA_FORMAT
    fmt = "dual_adapter" if ours else ("peft" if any(k.startswith("base_model.model.") for k in keys)
                                       or not any(k.startswith("transformer.") for k in keys) else "diffusers")
    file_alpha: dict[str, float] = {}
    for k, v in tensors.items():
        if k.startswith("text_encoder") or k.startswith("base_model.model.text_encoder"):
            skipped.append(k)
            continue
        kk = k
        for p in _PREFIXES:
            if kk.startswith(p):
                kk = kk[len(p):]
        if kk.endswith(".alpha"):
            file_alpha[kk[:-len(".alpha")]] = float(v.float().item())
            continue
        m = _PEFT_SUFFIX.match(kk)
        if not m:
            unknown.append(k)
            continue
        half = "A" if m.group("kind") in ("lora_A", "lora_down", "lora.down", "lora_linear_layer.down") else "B"
        name = f"transformer.{m.group('mod')}.lora_{half}.weight"
        if name in sd:
            raise DualAdapterError(f"{where} holds several adapters or duplicate keys for {m.group('mod')} "
                                   f"({k!r}); save one adapter per file")
        sd[name] = v
    if unknown:
        raise DualAdapterError(f"{where} has keys that are not LoRA weights of a CogVideoX transformer: "
                               f"{unknown[:8]}" + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    # alpha: explicit .alpha tensors > our metadata > diffusers' lora_adapter_metadata > peft adapter_config.json
    ranks = {_module_of(k): int(v.shape[0]) for k, v in sd.items() if k.endswith(".lora_A.weight") and v.ndim == 2}
    alpha_all: float | None = None
    pattern: dict[str, float] = {}
    dm = meta.get("lora_adapter_metadata")
    if ours and not isinstance(dm, (str, dict)):
        alpha_all = _alpha_number(meta.get("alpha") or 0, where, "alpha") or None
    else:
        if isinstance(dm, str):
            try:
                dm = json.loads(dm)
            except ValueError:
                dm = None
        cfg = {}
        if isinstance(dm, dict):
            cfg = {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in dm.items()}
        elif fmt == "peft":
            cfg = _read_peft_config(path)
        # peft semantics: alpha_pattern entry if one matches the module, else lora_alpha
        if cfg.get("lora_alpha") is not None:
            alpha_all = _alpha_number(cfg["lora_alpha"], where, "lora_alpha")
            pattern = {str(k): _alpha_number(v, where, f"alpha_pattern[{k!r}]")
                       for k, v in (cfg.get("alpha_pattern") or {}).items()}
    for mod, r in ranks.items():
        if mod in file_alpha:
            alphas[mod] = file_alpha[mod]
            continue
        hit = next((v for p, v in pattern.items() if _pattern_match(p, mod)), None)
        alphas[mod] = hit if hit is not None else (alpha_all if alpha_all is not None else float(r))
    if skipped:
        log.warning("%s: %d text-encoder LoRA keys are not applied (this pack only patches the transformer)",
                    where, len(skipped))
    return LoraFile.from_state_dict(sd, meta, alphas=alphas, source_format=fmt, path=str(path), skipped=skipped)


def _alpha_number(v, where: str, name: str) -> float:
    """A LoRA alpha read from a file's metadata as a finite float, or :class:`DualAdapterError` naming it."""
    try:
        out = float(v)
    except (TypeError, ValueError):
        out = float("nan")
    if isinstance(v, bool) or not math.isfinite(out):
        raise DualAdapterError(f"{where}: its {name} is {v!r}; it must be a finite number (the LoRA scale alpha)")
    return out


def load_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file: ours, diffusers / peft format, or kohya ``lora_unet_*``; convert to diffusers keys.

    Recognised layouts (``{m}`` = a module path such as ``transformer_blocks.0.attn1.to_q``):
      * diffusers: ``transformer.{m}.lora_A.weight`` / ``lora_B.weight`` (alpha from diffusers'
        ``lora_adapter_metadata`` when present, else alpha = rank), also the older
        ``{m}.lora.down/up.weight`` and ``{m}.lora_linear_layer.down/up.weight``;
      * peft: ``base_model.model.{m}.lora_A.weight`` or ``{m}.lora_A[.<adapter>].weight``
        (alpha from an ``adapter_config.json`` beside the file);
      * kohya: ``lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight`` / ``lora_up.weight`` /
        ``.alpha`` (kohya-style trainers; VideoX-Fun's ``lora_unet__...`` double underscore too);
      * ComfyUI native: ``diffusion_model.blocks.0.q.lora_up/lora_down.weight`` + ``.alpha`` (see
        :mod:`dual_adapter.lora_formats`; ``.diff`` / ``.diff_b`` are refused with a message);
      * finetrainers: diffusers names with alpha in the ``lora_config`` metadata;
      * Wan (docs/wan.md): diffusers' ``transformer.blocks.0.attn1.to_q``, ComfyUI native / original
        ``diffusion_model.blocks.0.self_attn.q`` and musubi-tuner ``lora_unet_blocks_0_self_attn_q`` names.
    Text-encoder keys (``text_encoder.*``, ``lora_te*``) are not applied; they are listed in
    ``LoraFile.skipped`` and logged.

    Raises:
        DualAdapterError: missing, empty, corrupted or non-safetensors file (names the file); keys that
            are not LoRA weights of a CogVideoX transformer; unsupported variants (DoRA, LoHa, LoKr);
            malformed A/B pairs. The message names the keys.
    """
    from .io import load_safetensors

    p = Path(path)
    if p.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt") and p.is_file():
        raise DualAdapterError(f"LoRA file {str(p)!r}: only .safetensors LoRAs are read (pickle files can run code); "
                               f"convert it to safetensors first")
    tensors, meta = load_safetensors(p)
    if not tensors:
        raise DualAdapterError(f"LoRA file {str(p)!r} contains no tensors")
    ints = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in tensors.items()
            if not v.is_floating_point() and not k.endswith(".alpha")]
    if ints:
        raise DualAdapterError(f"LoRA file {str(p)!r}: LoRA weights must be floating point (float32, float16 or "
                               f"bfloat16); these are not: {ints[:5]}" + (f" (and {len(ints) - 5} more)" if len(ints) > 5 else ""))
    from .lora_formats import normalize_lora_tensors  # native / VideoX-Fun / finetrainers layouts

    tensors, meta = normalize_lora_tensors(tensors, meta, p)
    return _convert(tensors, meta, p)


def check_compatible(lora: LoraFile, transformer) -> None:
    """Check that every module of ``lora`` exists in ``transformer`` as a Linear layer of matching size.

    Raises:
        DualAdapterError: listing modules the model lacks (e.g. a 42-block LoRA on a 30-block model)
            and shape mismatches (e.g. a 5B LoRA, width 3072, on 2B, width 1920): key, LoRA shape,
            and the layer's ``[out, in]``. Never a partial load.
    """
    modules = dict(transformer.named_modules())
    missing, shapes = [], []
    for mod in lora.modules:
        m = modules.get(mod)
        base = m.get_base_layer() if hasattr(m, "get_base_layer") else m
        if not isinstance(base, nn.Linear):
            missing.append(mod)
            continue
        a = lora.state_dict[f"transformer.{mod}.lora_A.weight"]
        b = lora.state_dict[f"transformer.{mod}.lora_B.weight"]
        if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
            shapes.append(f"transformer.{mod}: LoRA maps {a.shape[1]} -> {b.shape[0]} (lora_A {tuple(a.shape)}, "
                          f"lora_B {tuple(b.shape)}) but the layer is {base.in_features} -> {base.out_features}")
    if missing or shapes:
        transformer_width = _backbone(transformer).width
        parts = []
        if missing:
            parts.append(f"{len(missing)} module(s) not in this model: " + ", ".join(missing[:8]) +
                         (" ..." if len(missing) > 8 else ""))
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:6]) + (" ..." if len(shapes) > 6 else ""))
        src = f"LoRA {lora.path!r}" if lora.path else "LoRA"
        bc = (lora.metadata or {}).get("base_config") or {}
        trained = ""
        if bc:
            tb = (bc.get("num_layers"), (bc.get("num_attention_heads") or 0) * (bc.get("attention_head_dim") or 0))
            if tb == (_blocks_of(transformer), transformer_width(transformer)):
                trained = (f" It was trained on a model of the same size ({tb[0]} blocks, width {tb[1]}), so the "
                           f"model's module tree has been changed (by another patch?): the layers above are missing.")
            else:
                trained = f" It was trained on a model with {tb[0]} blocks, width {tb[1]}."
        raise DualAdapterError(f"{src} does not fit this model ({_blocks_of(transformer)} blocks, width "
                               f"{transformer_width(transformer)}): " + " | ".join(parts) + "." + trained)
    fp = (lora.metadata or {}).get("base_fingerprint")
    if fp:
        if fp != _backbone(transformer).fingerprint(transformer):
            log.warning("LoRA %s was trained on a different CogVideoX variant (same layer sizes); applying it anyway",
                        lora.name)


# --------------------------------------------------------------------------------------------
# model patch


class LoraPatch:
    """Model patch that adds a LoRA to a transformer copy (see :mod:`dual_adapter.patches`).

    ``apply(transformer)`` checks compatibility, injects peft LoRA layers under a fresh adapter
    name, loads the tensors (cast to the base weights' dtype/device) and sets the output scale to
    ``strength * alpha / rank`` per module. Several patches on one copy stack (all active, summed).
    Strength 0 reproduces the base model exactly; negative strengths subtract the LoRA.

    Args:
        lora: a :class:`LoraFile` (from :func:`load_lora` or :func:`train_lora`).
        strength: multiplier of the LoRA update (1 = as trained).
        name: adapter name (default: ``lora``, made unique per model).

    Raises:
        DualAdapterError: at construction for a non-LoraFile, a non-finite strength or NaN/Inf LoRA
            tensors (a diverged training); at ``apply`` for an
            incompatible LoRA (see :func:`check_compatible`).
    """

    def __init__(self, lora: LoraFile, strength: float = 1.0, name: str | None = None):
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

    def apply(self, transformer) -> None:
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
                    w.copy_(lora.state_dict[f"transformer.{mod}.lora_{half}.weight"].to(w.device, w.dtype))
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


# --------------------------------------------------------------------------------------------
# training


def lora_train_config(**overrides):
    """The shared loop's :class:`~dual_adapter.training.TrainConfig` with the motion-LoRA defaults.

    Authors' setting (docs/tap.md): AdamW, lr 5e-4, weight decay 1e-2, 1000 steps. This
    project's choices on top: betas (0.9, 0.999) and eps 1e-8 (AdamW's defaults), constant learning
    rate with no warm-up, grad-norm clip 1.0, plain AdamW (not 8-bit: a LoRA's optimiser state is
    small), gradient checkpointing on, bf16 autocast on GPU, checkpoint every 100 steps.
    """
    from .training import TrainConfig

    kw = dict(steps=1000, lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, optimizer="adamw",
              lr_schedule="constant", warmup_steps=0, grad_clip=1.0)
    kw.update(overrides)
    return TrainConfig(**kw)


def _phi(y: torch.Tensor, anchor: int) -> torch.Tensor:
    """MotionDirector's appearance-debiasing map (beta = 1): ``sqrt(2) * y - y[:, anchor]`` over frames."""
    return math.sqrt(2.0) * y - y[:, anchor: anchor + 1]


def debiased_error(anchor: int):
    """``error_fn`` for :func:`training.diffusion_loss` giving MotionDirector's loss plus its
    appearance-debiased term: ``d^2 + phi(d)^2`` with ``d = x0_pred - x_0``.

    ``phi`` is linear, so ``phi(x0_pred) - phi(x_0) = phi(d)``, and noising ``phi(x_0)`` with the
    debiased noise ``phi(eps) = sqrt(2) eps - eps_anchor`` gives ``phi(x_t)``: the debiased term needs no
    second forward pass. The mean of this error is ``L + L_debiased``.
    """
    return lambda d: d ** 2 + _phi(d, anchor) ** 2


def _check_frames(x, what: str, ndim: int) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != ndim or x.shape[-1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        layout = "[F, H, W, 3]" if ndim == 4 else "[H, W, 3]"
        raise DualAdapterError(f"{what} must be a float tensor {layout} in 0..1, got {shape}")
    if x.numel() == 0:
        raise DualAdapterError(f"{what} is empty")
    x = x.detach().float()
    if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise DualAdapterError(f"{what} must hold finite values in 0..1 (got {float(x.min()):.3g}..{float(x.max()):.3g})")
    return x.clamp(0, 1)


def train_state_path(checkpoint_path: str | Path) -> Path:
    """The optimiser-state file written beside a LoRA checkpoint: ``<stem>.state.safetensors``, or
    ``state.safetensors`` in a run folder (:func:`dual_adapter.runs.side_file`)."""
    from .runs import side_file

    return side_file(checkpoint_path, "state")


def spatial_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """The spatial-path LoRA written beside a checkpoint (``spatial_path=True``): ``<stem>.spatial.safetensors``, or
    ``spatial.safetensors`` in a run folder (:func:`dual_adapter.runs.side_file`)."""
    from .runs import side_file

    return side_file(checkpoint_path, "spatial")


def train_lora(
    bundle,
    *,
    clips: Sequence[torch.Tensor] | None = None,
    photos: Sequence[torch.Tensor] | None = None,
    prompt: str,
    spec: LoraSpec | None = None,
    cfg=None,
    spatial_path: bool = False,
    debiased_loss: bool = False,
    callback: Callable[[int, int, dict], None] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    patches: Sequence = (),
    spatial_spec: LoraSpec | None = None,
    fixed_batch: bool = False,
    base_model: str | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    preview=None,
) -> tuple[LoraFile, "TrainResult"]:
    """Train a (motion) LoRA on clips and/or photos (docs/tap.md; TAP with the default spec).

    Latents and the prompt embedding are computed once (VAE posterior mode, T5), then the LoRA
    trains on a weight-sharing copy of ``bundle.transformer`` (never modified) with the shared loop
    (:func:`training.train_loop`) and the CogVideoX objective (:func:`training.diffusion_loss`). Each
    step takes one clip or photo at random (batch 1: clips may differ in length).

    Args:
        bundle: the loaded model (a :class:`~dual_adapter.backbones.cogvideox.CogVideoXBundle`, or any
            :class:`~dual_adapter.backbones.base.VideoBackbone` whose blocks hold ``spec``'s targets).
        clips: motion clips, each ``[F, H, W, 3]`` float 0..1 (any size: resized to cover and
            centre-cropped). Each clip is cut to ``num_frames`` (4k+1).
        photos: images ``[H, W, 3]`` 0..1, each trained as a 1-frame video (appearance LoRAs).
        prompt: the text used for every sample (e.g. ``"a person is playing guitar"``).
        spec: :class:`LoraSpec` (default: TAP, rank 32, alpha 32, dropout 0.1, all blocks).
        cfg: :class:`~dual_adapter.training.TrainConfig` (default :func:`lora_train_config`).
        spatial_path: MotionDirector's dual path: a second LoRA (``spatial_spec``, default the
            ``full`` preset at the same rank) trained on single random frames of the clips with only
            itself active; in the clip (temporal) step it is active but not updated by that step's
            loss. It is dropped afterwards: the returned LoRA is the motion LoRA only.
        debiased_loss: add MotionDirector's appearance-debiased loss on clips:
            ``L + mean(w * (phi(x0_pred) - phi(x0))^2)`` with ``phi(y) = sqrt(2) y - y_anchor`` over latent
            frames, the anchor a random latent frame (equivalent to ``eps~ = sqrt(2) eps - eps_anchor``
            on both target and prediction).
        callback: ``callback(step, total, record)`` after each step; may raise InterruptedByUser.
        checkpoint_path: ``.safetensors`` path for the LoRA checkpoint (rewritten every
            ``cfg.checkpoint_every`` steps, at the end and when the run stops); the optimiser state
            goes beside it (``<stem>.state.safetensors``, plus ``<stem>.spatial.safetensors``).
        resume: continue from ``checkpoint_path``'s state file (weights, optimiser, schedule, step; same
            settings expected). Without ``resume`` an existing checkpoint is never replaced: the run is
            refused (:func:`dual_adapter.training.check_run_files`); a lock file ``<checkpoint>.lock`` keeps
            two processes from sharing one checkpoint.
        num_frames, height, width: training video size; default the model's (49x480x720 on the
            released models). With ``num_frames=None`` a shorter clip uses its largest 4k+1 prefix.
        patches: model patches applied under the LoRA (e.g. train on top of another LoRA).
        fixed_batch: every step uses the same clip, timestep and noise (step 0's draw): a
            diagnostic that checks the LoRA can fit one target; not for real training.
        base_model: name recorded in the metadata (default ``bundle.name``).
        batch_size: samples per step (1, the authors'), drawn at random with replacement; more than 1 needs
            samples of one size and kind (clips of the same length, or photos only). In a data-parallel run
            (``accelerate launch``) it is the global batch, shared out over the processes.
        grad_accum: run each step's batch as this many micro-batches per process with accumulated gradients
            (1), so batch 3 runs within the memory of batch 1 with the batch-3 gradient (up to float rounding).
        preview: :class:`~dual_adapter.previews.PreviewOptions` (a validation video every ``every`` steps with
            the LoRA as it is then, the spatial path off; default prompt: ``prompt``), or None.

    Returns:
        ``(LoraFile, TrainResult)``: the motion LoRA (diffusers-format tensors + metadata) and the
        loop's per-step records.

    Raises:
        DualAdapterError: no clips/photos, bad tensors, sizes the model cannot take, bad spec/config,
            ``cfg.steps`` < 1, resume without a checkpoint, an existing checkpoint without resume, another
            process training with the same checkpoint, ``batch_size`` / ``grad_accum`` < 1, a batch of
            samples of different sizes, ``cfg.fsdp`` without 2+ processes or with a batch the processes
            cannot share equally.
        TrainingDiverged: non-finite loss or weights (nothing written; the last checkpoint stays).
        InterruptedByUser: from the callback (the checkpoint, if any, is written first).
    """
    from .backbones import as_backbone
    from .experts import require_one_denoiser

    bb = as_backbone(bundle)
    require_one_denoiser(bb, "train_lora")  # Wan 2.2 A14B: one LoRA per expert (dual_adapter.experts)
    spec = copy.deepcopy(spec) if spec is not None else LoraSpec()
    spec.validate()
    cfg = cfg if cfg is not None else lora_train_config()
    cfg.validate(min_steps=1)
    _check_batching(batch_size, grad_accum)
    clips = list(clips or [])
    photos = list(photos or [])
    if not clips and not photos:
        raise DualAdapterError("train_lora needs at least one motion clip (clips=) or photo (photos=)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DualAdapterError("prompt must be a non-empty string (e.g. 'a person is playing guitar')")
    if spatial_path and not clips:
        raise DualAdapterError("spatial_path needs motion clips (its single frames come from them)")
    f0, h0, w0 = bb.default_size
    height, width = int(height or h0), int(width or w0)
    t = bb.frame_step()
    from .media import fit_frames

    clips = [_check_frames(c, f"clip {i}", 4) for i, c in enumerate(clips)]
    photos = [_check_frames(p, f"photo {i}", 3) for i, p in enumerate(photos)]
    prepared = []
    for i, c in enumerate(clips):
        n = num_frames
        if n is None:
            n = min(f0, (c.shape[0] - 1) // t * t + 1)
        elif c.shape[0] < n:
            raise DualAdapterError(f"clip {i} has {c.shape[0]} frames, fewer than num_frames={n}; load it with "
                                   f"media.load_clip(num_frames=...) (loops or holds short clips) or lower num_frames")
        bb.check_video_size(int(n), height, width)
        prepared.append(fit_frames(c[:n], height, width))
    if photos:
        bb.check_video_size(1, height, width)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    with _checkpoint_run(checkpoint_path, resume):  # refuse before encoding; held for the whole run
        return _train_lora(bb, prepared, photos, prompt, spec, cfg, spatial_path, debiased_loss, callback,
                           checkpoint_path, resume, height, width, patches, spatial_spec, fixed_batch, base_model,
                           batch_size, grad_accum, preview)


def _checkpoint_files(checkpoint_path: Path) -> dict[str, Path]:
    return {"checkpoint": checkpoint_path, "state": train_state_path(checkpoint_path),
            "spatial": spatial_checkpoint_path(checkpoint_path)}


def _checkpoint_run(checkpoint_path: Path | None, resume: bool):
    """The shared run rules (:func:`dual_adapter.training.training_run`) for a checkpoint file: a lock,
    no run replaced without ``resume``, nothing to resume refused."""
    from .training import training_run

    if checkpoint_path is None:
        if resume:
            raise DualAdapterError("resume needs checkpoint_path (the interrupted run's checkpoint file)")
        return training_run(None, {}, resume=False)
    return training_run(None, _checkpoint_files(checkpoint_path), resume=resume, lock=checkpoint_path,
                        rename_hint="another checkpoint_path")


def _train_lora(bb, prepared, photos, prompt, spec, cfg, spatial_path, debiased_loss, callback, checkpoint_path,
                resume, height, width, patches, spatial_spec, fixed_batch, base_model, batch_size, grad_accum,
                preview=None):
    from .media import fit_frames

    # ---- precompute latents and text once
    latents: list[torch.Tensor] = []
    kinds: list[str] = []
    frame_latents: list[torch.Tensor | None] = []
    for c in prepared:
        latents.append(bb.encode_frames(c))
        kinds.append("clip")
        frame_latents.append(bb.encode_frames(c[:, None]) if spatial_path else None)  # [F, 1, C, h, w]
    for p in photos:
        latents.append(bb.encode_frames(fit_frames(p[None], height, width)))
        kinds.append("photo")
        frame_latents.append(None)
    emb = bb.encode_prompt(prompt)
    previewer = None
    if preview is not None and preview.enabled:
        from .previews import Previewer, backbone_renderer

        pemb = bb.encode_prompt(preview.prompt) if preview.prompt else emb
        previewer = Previewer(preview, backbone_renderer(bb, pemb, preview, height=height, width=width))
    meta = dict(prompt=prompt, train=dict(num_frames=[int(c.shape[0]) for c in prepared], height=height, width=width,
                                          clips=len(prepared), photos=len(photos)))

    offloaded = []
    if getattr(bb, "device", "cpu") != "cpu" and not getattr(bb, "cpu_offload", False):
        # free accelerator memory for training (T5-XXL is ~9 GB in bf16); put them back afterwards
        for part in ("text_encoder", "vae"):
            m = getattr(bb, part, None)
            if m is not None and next(m.parameters()).device.type != "cpu":
                offloaded.append((part, next(m.parameters()).device))
        bb.release(*[p for p, _ in offloaded])
    try:
        with bb.use("denoiser") as transformer:
            return train_lora_on_latents(
                transformer, bb.scheduler_config, latents=latents, prompt_embeds=emb, kinds=kinds,
                frame_latents=frame_latents, spec=spec, cfg=cfg, spatial_path=spatial_path,
                debiased_loss=debiased_loss, callback=callback, checkpoint_path=checkpoint_path, resume=resume,
                patches=patches, spatial_spec=spatial_spec, fixed_batch=fixed_batch,
                base_model=base_model or getattr(bb, "name", None), metadata=meta, batch_size=batch_size,
                grad_accum=grad_accum, preview=previewer)
    finally:
        for part, d in offloaded:
            getattr(bb, part).to(d)


def train_lora_on_latents(
    transformer: nn.Module,
    scheduler_config: Mapping,
    *,
    latents: Sequence[torch.Tensor],
    prompt_embeds: torch.Tensor,
    kinds: Sequence[str] | None = None,
    frame_latents: Sequence[torch.Tensor | None] | None = None,
    spec: LoraSpec | None = None,
    cfg=None,
    spatial_path: bool = False,
    debiased_loss: bool = False,
    callback: Callable[[int, int, dict], None] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    patches: Sequence = (),
    spatial_spec: LoraSpec | None = None,
    fixed_batch: bool = False,
    base_model: str | None = None,
    metadata: Mapping | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    preview=None,
) -> tuple[LoraFile, "TrainResult"]:
    """The training core of :func:`train_lora`, on precomputed latents (also used by the benchmarks).

    Args:
        transformer: the CogVideoX transformer (never modified: a weight-sharing copy trains), on the
            training device.
        scheduler_config: the model's noise-scheduler config (``bundle.scheduler_config``).
        latents: training samples, each ``[1, F', C, h, w]`` scaled VAE latents (1 latent frame for photos).
        prompt_embeds: ``[1, L, D_text]`` T5 embedding of the training prompt.
        kinds: ``"clip"`` / ``"photo"`` per sample (default all clips); the spatial path and the
            debiased loss apply to clips.
        frame_latents: per sample, ``[F, 1, C, h, w]`` single-frame latents of its frames (needed for
            clips when ``spatial_path``), or None.
        metadata: extra metadata merged into the LoRA's (``train`` dicts are merged).
        preview: a :class:`~dual_adapter.previews.Previewer` (bound here to the model being trained), or None.
        Others: as :func:`train_lora`.

    Returns:
        ``(LoraFile, TrainResult)``.
    """
    spec = copy.deepcopy(spec) if spec is not None else LoraSpec()
    spec.validate()
    cfg = cfg if cfg is not None else lora_train_config()
    cfg.validate(min_steps=1)
    items = list(latents)
    if not items:
        raise DualAdapterError("nothing to train on: no latents")
    for i, x in enumerate(items):
        if not torch.is_tensor(x) or x.ndim != 5 or x.shape[0] != 1:
            raise DualAdapterError(f"latents[{i}]: expected [1, F, C, h, w], got "
                                   f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    kinds = list(kinds) if kinds is not None else ["clip"] * len(items)
    frame_latents = list(frame_latents) if frame_latents is not None else [None] * len(items)
    if spatial_path and any(k == "clip" and f is None for k, f in zip(kinds, frame_latents)):
        raise DualAdapterError("spatial_path needs frame_latents for every clip")
    _check_batching(batch_size, grad_accum)
    if batch_size > 1 and len({(k, tuple(x.shape)) for k, x in zip(kinds, items)}) > 1:
        sizes = sorted({f"{k} {list(x.shape)}" for k, x in zip(kinds, items)})
        raise DualAdapterError(f"batch_size={batch_size} needs training samples of one size and kind (a batch is "
                               f"one tensor), got {', '.join(sizes)}; use batch_size=1 (grad_accum then has nothing "
                               f"to split), clips of the same length, or photos only")
    emb = prompt_embeds
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    with _checkpoint_run(checkpoint_path, resume):
        return _train_on_latents(transformer, scheduler_config, items, emb, kinds, frame_latents, spec, cfg,
                                 spatial_path, debiased_loss, callback, checkpoint_path, resume, patches, spatial_spec,
                                 fixed_batch, base_model, metadata, batch_size, grad_accum, preview)


def _check_batching(batch_size, grad_accum) -> None:
    for k, v in (("batch_size", batch_size), ("grad_accum", grad_accum)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DualAdapterError(f"{k}={v!r}: must be an integer >= 1")


def _train_on_latents(transformer, scheduler_config, items, emb, kinds, frame_latents, spec, cfg, spatial_path,
                      debiased_loss, callback, checkpoint_path, resume, patches, spatial_spec, fixed_batch, base_model,
                      metadata, batch_size, grad_accum, preview=None):
    from .patches import shallow_copy_module
    from .backbones import backbone_for
    from .training import (all_reduce_grads, batch_diffusion_loss, check_micro_batches, dist_rank_world,
                           save_train_state, shard_frozen_weights, step_generator, train_loop)

    # ---- the trainable copy
    model = shallow_copy_module(transformer)
    _materialize_inference_tensors(model)
    for p in patches or ():
        p.apply(model)
    model.eval()
    sspec = None
    spatial_params: list[nn.Parameter] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed))  # lora_A's random init: the same seed repeats the run
        params = inject_lora(model, spec, "default")
        param_groups = [{"params": params}]
        if spatial_path:
            sspec = copy.deepcopy(spatial_spec) if spatial_spec is not None else LoraSpec(
                rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout, targets=list(PRESETS["full"]),
                blocks=spec.blocks)
            spatial_params = inject_lora(model, sspec, "spatial")
            param_groups.append({"params": spatial_params})
    for m in lora_modules(model).values():
        for d in m.lora_dropout.values():
            d.train(True)
    if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    if cfg.fsdp:
        check_micro_batches(batch_size, grad_accum, "batch_size")
        shard_frozen_weights(model, params + spatial_params, device=next(transformer.parameters()).device,
                             release_loaded=cfg.fsdp_release_loaded)
    bb = backbone_for(transformer, dict(scheduler_config))
    sched = bb.noise_scheduler()
    device_type = next(transformer.parameters()).device.type
    all_adapters = _adapter_names(model)

    resume_state = None
    start_losses: list = []
    weights_step = None
    if resume:
        if not checkpoint_path.is_file():
            raise DualAdapterError(f"resume: the checkpoint {str(checkpoint_path)!r} is missing beside its state file; "
                                   f"start a new run")
        ck = load_lora(checkpoint_path)
        weights_step = int((ck.metadata.get("train") or {}).get("steps_done", -1))
        _load_into(model, "default", ck)
        if spatial_path:
            sp = spatial_checkpoint_path(checkpoint_path)
            if not sp.is_file():
                raise DualAdapterError(f"resume with spatial_path: {str(sp)!r} is missing")
            _load_into(model, "spatial", load_lora(sp))
        resume_state = train_state_path(checkpoint_path)
        from .io import read_safetensors_metadata

        start_losses = list((read_safetensors_metadata(resume_state).get("extra") or {}).get("losses") or [])

    stash: dict[int, torch.Tensor] = {}
    world = dist_rank_world()[1]

    def step_fn(step: int, gen: torch.Generator):
        if fixed_batch:
            gen = step_generator(cfg.seed, 0)
        idx = torch.randint(len(items), (batch_size,), generator=gen).tolist()
        kind = kinds[idx[0]]
        x0 = items[idx[0]] if batch_size == 1 else torch.cat([items[i] for i in idx])
        info: dict = {"sample": idx[0]} if batch_size == 1 else {}
        stash.clear()
        if spatial_path and kind == "clip":
            n_fl = frame_latents[idx[0]].shape[0]
            js = torch.randint(n_fl, (batch_size,), generator=gen).tolist()
            frames = torch.cat([frame_latents[i][j: j + 1] for i, j in zip(idx, js)])
            _set_active(model, ["spatial"])
            try:
                ls = batch_diffusion_loss(model, sched, frames, emb, gen, grad_accum=grad_accum)
                if ls.requires_grad:
                    ls.backward()  # the spatial path's gradient, kept apart from the clip loss's (see below)
            finally:
                _set_active(model, all_adapters)
            for p in spatial_params:
                if p.grad is not None:
                    stash[id(p)] = p.grad.detach().clone()
                    p.grad = None
            info["loss_spatial"] = ls.detach()
        error_fn = None
        if debiased_loss and kind == "clip" and x0.shape[1] > 1:
            p_t = bb.time_patch(model)
            n_frames = -(-x0.shape[1] // p_t) * p_t  # after the 1.5 models' padding
            error_fn = debiased_error(int(torch.randint(n_frames, (1,), generator=gen)))
        loss = batch_diffusion_loss(model, sched, x0, emb, gen, grad_accum=grad_accum, error_fn=error_fn)
        return loss, info

    def before_optimizer_step(step: int, info: dict):
        # MotionDirector's dual path: the spatial LoRA runs in the clip step but learns from its
        # single-frame loss only, so its gradient from the clip loss is replaced by the stashed one
        # (summed over the processes in a data-parallel run, as train_loop sums the others)
        for p in spatial_params:
            p.grad = stash.get(id(p))
        if world > 1 and "loss_spatial" in info:
            import torch.distributed as dist

            all_reduce_grads(spatial_params)
            dist.all_reduce(info["loss_spatial"])

    extra = dict(metadata or {})
    train_md = dict(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, optimizer=cfg.optimizer,
                    lr_schedule=cfg.lr_schedule, spatial_path=bool(spatial_path), debiased_loss=bool(debiased_loss),
                    fixed_batch=bool(fixed_batch), batch_size=int(batch_size), grad_accum=int(grad_accum))
    train_md.update(extra.pop("train", None) or {})

    def make_file(steps_done: int, completed: bool) -> LoraFile:
        md = lora_metadata(spec, transformer, base_model=base_model, **extra)
        md["train"] = dict(train_md, steps_done=int(steps_done), completed=bool(completed))
        sd = lora_state_dict(model, "default")
        return LoraFile.from_state_dict(sd, md, alphas={_module_of(k): float(spec.alpha) for k in sd})

    def on_checkpoint(step, optimizer, lr_schedule, losses):
        if checkpoint_path is None or dist_rank_world()[0] != 0:  # one writer in a data-parallel run
            return
        make_file(step, step >= cfg.steps).save(checkpoint_path, overwrite=True)
        if spatial_path:
            smd = lora_metadata(sspec, transformer, base_model=base_model, role="spatial path (not for inference)")
            save_lora(spatial_checkpoint_path(checkpoint_path), lora_state_dict(model, "spatial"), smd, overwrite=True)
        save_train_state(train_state_path(checkpoint_path), optimizer, lr_schedule, step, extra={"losses": list(losses)})

    if preview is not None:
        import contextlib

        @contextlib.contextmanager
        def inference_lora():  # the spatial path is dropped at inference
            _set_active(model, ["default"])
            try:
                yield
            finally:
                _set_active(model, all_adapters)

        preview.bind(model, inference_lora if spatial_path else None)
    from .memory import memory_levers

    with torch.inference_mode(False), torch.enable_grad(), \
            memory_levers(model, fp8=getattr(cfg, "fp8_base", False), block_swap=getattr(cfg, "block_swap", 0),
                          release_loaded=cfg.fsdp_release_loaded, trainable=params + spatial_params):
        result = train_loop(param_groups, step_fn, cfg, device_type=device_type, callback=callback,
                            before_optimizer_step=before_optimizer_step if spatial_path else None,
                            on_checkpoint=on_checkpoint, resume_state=resume_state, start_losses=start_losses,
                            resume_weights_step=weights_step,
                            checkpoint_note=f"{checkpoint_path} + {train_state_path(checkpoint_path).name}"
                            if checkpoint_path else "", distributed=world > 1, preview=preview)
    lf = make_file(result.steps_done, result.completed)
    # the file convention (alpha == rank): fold the scale in memory too, so that saving / applying agree
    return _folded(lf), result


def _materialize_inference_tensors(model: nn.Module) -> int:
    """Replace, in ``model`` only, parameters / buffers created under ``torch.inference_mode()`` by
    normal copies: autograd cannot save inference tensors for backward. ComfyUI loads models under
    inference mode, so this can copy the whole transformer (logged). Returns the number of bytes copied."""
    memo: dict[int, torch.Tensor] = {}
    copied = 0
    with torch.inference_mode(False), torch.no_grad():
        for mod in model.modules():
            for store in (mod._parameters, mod._buffers):
                for k, t in list(store.items()):
                    if t is None or not t.is_inference():
                        continue
                    if id(t) not in memo:
                        c = t.clone()
                        memo[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
                        copied += t.numel() * t.element_size()
                    store[k] = memo[id(t)]
    if copied:
        log.warning("the model's weights were created under torch.inference_mode(); training uses a %.2f GB copy "
                    "(load the model outside inference mode to avoid it)", copied / 1e9)
    return copied


def _folded(lf: LoraFile) -> LoraFile:
    scale = {m: lf.alphas[m] / r for m, r in lf.ranks.items()}
    if all(abs(s - 1) < 1e-12 for s in scale.values()):
        return lf
    sd = {k: (v * scale[_module_of(k)]).to(v.dtype) if k.endswith(".lora_B.weight") else v
          for k, v in lf.state_dict.items()}
    md = dict(lf.metadata)
    md["trained_alpha"] = lf.alpha
    md["alpha"] = float(lf.rank)
    md["alpha_folded"] = True
    return LoraFile.from_state_dict(sd, md, alphas={m: float(r) for m, r in lf.ranks.items()},
                                    source_format=lf.source_format, path=lf.path)


def _load_into(model, adapter: str, lora: LoraFile) -> None:
    """Copy a LoRA file's tensors into an existing adapter (resume); folded scales are undone."""
    layers = lora_modules(model, adapter)
    mods = lora.modules
    if sorted(mods) != sorted(layers):
        raise DualAdapterError(f"resume: checkpoint {lora.path!r} targets {len(mods)} modules, this run "
                               f"{len(layers)}; resume with the same preset, targets and blocks")
    with torch.no_grad():
        for mod in mods:
            m = layers[mod]
            unfold = m.lora_alpha[adapter] / m.r[adapter] / (lora.alphas[mod] / lora.ranks[mod])
            a = lora.state_dict[f"transformer.{mod}.lora_A.weight"]
            b = lora.state_dict[f"transformer.{mod}.lora_B.weight"]
            if tuple(a.shape) != tuple(m.lora_A[adapter].weight.shape):
                raise DualAdapterError(f"resume: checkpoint rank {a.shape[0]} != this run's rank {m.r[adapter]}")
            m.lora_A[adapter].weight.copy_(a)
            m.lora_B[adapter].weight.copy_(b / unfold)
