"""ONE LoRA file type for every backbone: :class:`LoraFile`, :func:`load_lora`, :func:`save_lora`,
:func:`check_compatible`.

docs/file_formats.md. A :class:`LoraFile` holds diffusers-layout tensors ``{prefix}.{module}.lora_A.weight``
``[r, in]`` / ``.lora_B.weight`` ``[out, r]``, where ``prefix`` is the denoiser component's name in diffusers
(the backbone's :attr:`~dual_adapter.backbones.base.VideoBackbone.lora_prefix`: ``transformer`` on CogVideoX and
Wan, ``unet`` on the U-Nets), plus each module's alpha and the file's metadata. Reading accepts every layout of
:mod:`dual_adapter.lora.formats`; what differs per model (which layers exist, their sizes, the component prefix) is
asked of the model through its backbone.

Weights convention of saved files: ``delta_W = lora_B @ lora_A`` (alpha == rank, scale 1), the
convention every diffusers-format reader assumes. A LoRA trained with ``alpha != rank`` has the
factor ``alpha / rank`` folded into ``lora_B`` when saved; the training alpha is kept in the
metadata (``trained_alpha``).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from .formats import COMPONENT_PREFIXES, diffusers_to_kohya, diffusers_to_peft, \
    native_lora_state_dict, normalize_lora_tensors, to_diffusers
from .spec import LoraSpec, _backbone, _blocks_of, preset_name

log = logging.getLogger(__name__)

#: Marker written in the metadata of the files this package saves.
LORA_FORMAT = "dual_adapter.lora/1"
#: The marker of U-Net LoRA files written before the U-Net and DiT LoRAs were one file type (still read).
UNET_LORA_FORMAT = "dual_adapter.unet_lora/1"
#: the layouts :func:`save_lora_as` writes
SAVE_LAYOUTS = ("diffusers", "comfyui_native", "kohya", "peft")


def _module_of(key: str) -> str:
    k = key.split(".", 1)[1] if key.startswith(COMPONENT_PREFIXES) else key
    return k.rsplit(".lora_", 1)[0]


def _prefix_of(keys: Iterable[str], default: str = "transformer") -> str:
    """The component prefix (``transformer`` / ``unet``) that ``keys`` use, else ``default``."""
    for k in keys:
        if k.startswith(COMPONENT_PREFIXES):
            return k.split(".", 1)[0]
    return default


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

    ``state_dict`` is what :func:`~dual_adapter.lora.inject.lora_state_dict` returns
    (``{prefix}.{module}.lora_A/B.weight``, ``prefix`` = ``transformer`` or ``unet``, one for all keys).
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
    from ..io import save_safetensors

    sd = dict(state_dict)
    if not sd:
        raise DualAdapterError(f"cannot save LoRA {str(path)!r}: no tensors")
    prefix = _prefix_of(sd)
    bad = [k for k in sd if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
           or not k.startswith(prefix + ".")]
    if bad:
        raise DualAdapterError(f"cannot save LoRA {str(path)!r}: keys not in diffusers format "
                               f"({prefix}.<module>.lora_A/B.weight): {bad[:5]}")
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
    md["lora_adapter_metadata"] = json.dumps({f"{prefix}.{k}": v for k, v in {
        "r": rank, "lora_alpha": float(rank), "target_modules": modules, "rank_pattern": rank_pattern,
        "alpha_pattern": {m: float(r) for m, r in rank_pattern.items()}, "use_dora": False, "lora_bias": False,
    }.items()}, sort_keys=True)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return save_safetensors(sd, path, md, overwrite=overwrite)


@dataclass
class LoraFile:
    """A LoRA ready to apply, on any backbone: diffusers-layout tensors plus what is known about them.

    ``LoraFile(state_dict, metadata)`` fills rank, alpha, targets, blocks and alphas from the tensors (and the
    metadata's ``alpha``, else alpha = rank); :meth:`from_state_dict` does the same with per-module alphas.

    Attributes:
        state_dict: ``{prefix}.{module}.lora_A.weight`` ``[r, in]`` / ``.lora_B.weight`` ``[out, r]``, ``prefix``
            = ``transformer`` (DiTs) or ``unet`` (U-Nets).
        metadata: the file's metadata (JSON-decoded), or ``{}``.
        rank: the most common rank. alpha: the most common alpha (scale = alpha / rank).
        targets: block-relative module names (``attn1.to_q``...), absolute for non-block modules.
        blocks: block indices that carry the LoRA (None when only non-block modules do).
        alphas: per-module alpha (module name without the prefix).
        source_format: ``"dual_adapter"``, ``"diffusers"``, ``"peft"`` or ``"kohya"``.
        path: the file it came from (None when built in memory).
        skipped: keys of the file that are not for the denoiser (text-encoder LoRA), not applied.
        name: a short name (default: the file's stem, else ``"lora"``).

    Raises:
        DualAdapterError: (when rank and alpha are derived) missing halves, non-2-D tensors, inconsistent ranks.
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
    name: str | None = None

    def __post_init__(self):
        self.metadata = dict(self.metadata or {})
        if not self.rank:
            self.rank, self.alpha, self.targets, self.blocks, self.alphas = _derive(
                self.state_dict, self.metadata, self.alphas or None, self.path)
        if self.name is None:
            self.name = Path(self.path).stem if self.path else "lora"

    @property
    def modules(self) -> list[str]:
        """Full module names (without the prefix) that the LoRA changes."""
        return sorted({_module_of(k) for k in self.state_dict})

    @property
    def ranks(self) -> dict[str, int]:
        return {_module_of(k): int(v.shape[0]) for k, v in self.state_dict.items() if k.endswith(".lora_A.weight")}

    @property
    def prefix(self) -> str:
        """The component prefix of the keys: ``transformer`` or ``unet``."""
        return _prefix_of(self.state_dict)

    @property
    def backbone(self) -> str | None:
        """The backbone kind recorded in the metadata (``unet3d``, ...), or None."""
        return self.metadata.get("backbone")

    def tensor(self, module: str, half: str) -> torch.Tensor:
        """``lora_A`` (``half="A"``, ``[r, in]``) or ``lora_B`` (``"B"``, ``[out, r]``) of ``module``."""
        return self.state_dict[f"{self.prefix}.{module}.lora_{half}.weight"]

    def with_prefix(self, prefix: str) -> "LoraFile":
        """This LoRA with keys ``{prefix}.{module}...`` (itself when they already are)."""
        if self.prefix == prefix or not self.state_dict:
            return self
        sd = {f"{prefix}.{k.split('.', 1)[1] if k.startswith(COMPONENT_PREFIXES) else k}": v
              for k, v in self.state_dict.items()}
        return dataclasses.replace(self, state_dict=sd)

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
        """Build from diffusers-layout tensors; checks that every module has a matching A/B pair.

        Raises:
            DualAdapterError: missing halves, non-2-D tensors or inconsistent ranks (names the keys).
        """
        sd, md = dict(state_dict), dict(metadata or {})
        rank, alpha, targets, blocks, al = _derive(sd, md, alphas, path)
        return cls(state_dict=sd, metadata=md, rank=rank, alpha=alpha, targets=targets, blocks=blocks, alphas=al,
                   source_format=source_format, path=path, skipped=list(skipped))


def _derive(sd: Mapping[str, torch.Tensor], md: Mapping, alphas: Mapping[str, float] | None, path: str | None):
    """``(rank, alpha, targets, blocks, alphas)`` of diffusers-layout tensors (see :meth:`LoraFile.from_state_dict`)."""
    where = f"LoRA file {path!r}" if path else "LoRA"
    if not sd:
        raise DualAdapterError(f"{where} contains no LoRA tensors for the denoiser")
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
    return rank, alpha, targets, blocks, al


def _read_peft_config(path: Path) -> dict:
    cfg = path.parent / "adapter_config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())
        except (OSError, ValueError):
            log.warning("could not read %s; assuming alpha == rank", cfg)
    return {}


def _linear_names(denoiser: nn.Module) -> list[str]:
    return [n for n, m in denoiser.named_modules() if isinstance(getattr(m, "base_layer", m), nn.Linear)]


def _model_of(model, denoiser: nn.Module | None = None):
    """``(backbone, denoiser)`` of a backbone / bundle / patched model, or of a bare denoiser module."""
    from ..backbones import as_backbone, backbone_for

    if isinstance(model, nn.Module):
        return backbone_for(model), (model if denoiser is None else denoiser)
    bb = as_backbone(model)
    return bb, bb.pick_denoiser(denoiser)


def load_lora(path: str | Path, backbone=None) -> LoraFile:
    """Read a LoRA file of any backbone and layout; convert to the diffusers layout.

    Recognised layouts (``{m}`` = a module path such as ``transformer_blocks.0.attn1.to_q``):
      * diffusers: ``transformer.{m}.lora_A.weight`` / ``lora_B.weight`` (``unet.{m}...`` on U-Nets; alpha from
        diffusers' ``lora_adapter_metadata`` when present, else alpha = rank), also the older
        ``{m}.lora.down/up.weight`` and ``{m}.lora_linear_layer.down/up.weight``;
      * peft: ``base_model.model.{m}.lora_A.weight`` or ``{m}.lora_A[.<adapter>].weight``
        (alpha from an ``adapter_config.json`` beside the file);
      * kohya: ``lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight`` / ``lora_up.weight`` /
        ``.alpha`` (kohya-style trainers; VideoX-Fun's ``lora_unet__...`` double underscore too); the
        underscored names are resolved with ``backbone``'s layer names when given, else CogVideoX's;
      * ComfyUI native: ``diffusion_model.blocks.0.q.lora_up/lora_down.weight`` + ``.alpha`` (see
        :mod:`dual_adapter.lora.formats`; ``.diff`` / ``.diff_b`` are refused with a message);
      * finetrainers: diffusers names with alpha in the ``lora_config`` metadata;
      * Wan (docs/wan.md): diffusers' ``transformer.blocks.0.attn1.to_q``, ComfyUI native / original
        ``diffusion_model.blocks.0.self_attn.q`` and musubi-tuner ``lora_unet_blocks_0_self_attn_q`` names.
    Text-encoder keys (``text_encoder.*``, ``lora_te*``) are not applied; they are listed in
    ``LoraFile.skipped`` and logged.

    Args:
        backbone: the model the LoRA is for (a backbone, bundle or patched model), or None. When given, the
            LoRA is checked against it (:func:`check_compatible`) and its keys take the backbone's prefix.

    Raises:
        DualAdapterError: missing, empty, corrupted or non-safetensors file (names the file); keys that
            are not LoRA weights of a video model's denoiser; unsupported variants (DoRA, LoHa, LoKr);
            malformed A/B pairs (the message names the keys); with ``backbone``, a LoRA that does not fit it.
    """
    from ..io import load_safetensors

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
    bb = d = None
    if backbone is not None:
        bb, d = _model_of(backbone)
    prefix = bb.lora_prefix if bb is not None else _prefix_of(tensors)
    tensors, meta = normalize_lora_tensors(tensors, meta, p)
    where = f"LoRA file {str(p)!r}"
    sd, alphas, fmt, skipped = to_diffusers(tensors, meta, ours=meta.get("format") in (LORA_FORMAT, UNET_LORA_FORMAT),
                                            where=where, modules=_linear_names(d) if d is not None else None,
                                            peft_config=lambda: _read_peft_config(p))
    if skipped:
        log.warning("%s: %d text-encoder LoRA keys are not applied (this pack only patches the denoiser)",
                    where, len(skipped))
    lf = LoraFile.from_state_dict(sd, meta, alphas=alphas, source_format=fmt, path=str(p), skipped=skipped)
    lf = lf.with_prefix(prefix)
    if bb is not None:
        check_compatible(lf, bb, d)
    return lf


def check_compatible(lora: LoraFile, model, denoiser: nn.Module | None = None) -> None:
    """Check that ``lora`` fits ``model``: the backbone it was trained on (when its metadata names one), and every
    module of ``lora`` a Linear layer of the denoiser with matching size.

    Args:
        model: a backbone, bundle or patched model, or a bare denoiser module (its backbone is looked up).
        denoiser: the denoiser to check (default: the model's; e.g. a patched copy).

    Raises:
        DualAdapterError: a LoRA of another backbone kind (names both); modules the model lacks (e.g. a 42-block
            LoRA on a 30-block model) and shape mismatches (e.g. a 5B LoRA, width 3072, on 2B, width 1920): key,
            LoRA shape, and the layer's ``[out, in]``. Never a partial load.
    """
    from ..backbones import backbone_modules

    bb, transformer = _model_of(model, denoiser)
    if lora.backbone and lora.backbone != bb.kind:
        kinds = backbone_modules()
        fam = kinds[lora.backbone].FAMILY if lora.backbone in kinds else lora.backbone
        raise DualAdapterError(f"LoRA {lora.name!r} was trained on {fam}; the model {bb.name!r} is {bb.family}")
    modules = dict(transformer.named_modules())
    missing, shapes = [], []
    for mod in lora.modules:
        m = modules.get(mod)
        base = m.get_base_layer() if hasattr(m, "get_base_layer") else m
        if not isinstance(base, nn.Linear):
            missing.append(mod)
            continue
        a, b = lora.tensor(mod, "A"), lora.tensor(mod, "B")
        if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
            shapes.append(f"{lora.prefix}.{mod}: LoRA maps {a.shape[1]} -> {b.shape[0]} (lora_A {tuple(a.shape)}, "
                          f"lora_B {tuple(b.shape)}) but the layer is {base.in_features} -> {base.out_features}")
    if missing or shapes:
        n_blocks = len(bb.blocks(transformer))
        try:
            width = bb.width(transformer)
        except NotImplementedError:
            width = None
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
            if tb == (n_blocks, width):
                trained = (f" It was trained on a model of the same size ({tb[0]} blocks, width {tb[1]}), so the "
                           f"model's module tree has been changed (by another patch?): the layers above are missing.")
            else:
                trained = f" It was trained on a model with {tb[0]} blocks, width {tb[1]}."
        size = f"{n_blocks} blocks" + (f", width {width}" if width is not None else "")
        raise DualAdapterError(f"{src} does not fit this model ({bb.name!r}, {bb.family}, {size}): " + " | ".join(parts)
                               + "." + trained)
    fp = (lora.metadata or {}).get("base_fingerprint")
    if fp:
        if fp != bb.fingerprint(transformer):
            log.warning("LoRA %s was trained on a different %s variant (same layer sizes); applying it anyway",
                        lora.name, bb.family)


def save_lora_as(path: str | Path, lora: LoraFile, layout: str = "diffusers", *, overwrite: bool = False,
                 dtype: torch.dtype | None = None) -> Path:
    """Write ``lora`` in one of :data:`SAVE_LAYOUTS`, atomically; :func:`load_lora` reads every one back to the
    same update.

    * ``diffusers``: :func:`save_lora` (the pack's file);
    * ``comfyui_native``: core ComfyUI's native names (CogVideoX / Wan; for core ``LoraLoaderModelOnly`` on a
      native MODEL), alpha per module as a ``.alpha`` tensor;
    * ``kohya``: ``lora_unet_{module_}.lora_down/lora_up.weight`` + ``.alpha``;
    * ``peft``: ``base_model.model.{module}.lora_A/B.weight``, and peft's ``adapter_config.json`` (rank, alpha)
      beside the file.

    Raises:
        DualAdapterError: an unknown layout; the file (or, for peft, ``adapter_config.json``) exists and not
            ``overwrite``; a module with no native name (``comfyui_native``).
    """
    from ..io import save_safetensors

    if layout not in SAVE_LAYOUTS:
        raise DualAdapterError(f"LoRA layout {layout!r}: expected one of {', '.join(SAVE_LAYOUTS)}")
    if layout == "diffusers":
        return lora.save(path, overwrite=overwrite, dtype=dtype)
    md = {k: v for k, v in (lora.metadata or {}).items() if k != "lora_adapter_metadata"}
    md["key_format"] = layout
    md["rank"] = int(lora.rank)
    md["alpha"] = float(lora.alpha)
    cfg = None
    if layout == "comfyui_native":
        sd = native_lora_state_dict(lora)
    elif layout == "kohya":
        sd = diffusers_to_kohya(lora)
    else:
        sd, cfg = diffusers_to_peft(lora)
        md.pop("format", None)  # its alpha is adapter_config.json's
        conf = Path(path).parent / "adapter_config.json"
        if conf.exists() and not overwrite:
            raise DualAdapterError(f"cannot save the peft LoRA beside {str(conf)!r}: it exists; choose another folder")
    if dtype is not None:
        sd = {k: (v if k.endswith(".alpha") else v.to(dtype)) for k, v in sd.items()}
    out = save_safetensors(sd, path, md, overwrite=overwrite)
    if cfg is not None:
        from ..io import atomic_write_text

        atomic_write_text(Path(path).parent / "adapter_config.json", json.dumps(cfg, indent=1), overwrite=overwrite)
    return out


def save_lora_native(path: str | Path, lora: LoraFile, *, overwrite: bool = False,
                     dtype: torch.dtype | None = None) -> Path:
    """Write ``lora`` with native key names (for core ``LoraLoaderModelOnly`` on a native CogVideoX / Wan MODEL),
    atomically; :func:`load_lora` reads it back to the same LoRA. ``save_lora_as(path, lora, "comfyui_native")``.

    Raises:
        DualAdapterError: the file exists and not ``overwrite``; a module with no native name.
    """
    return save_lora_as(path, lora, "comfyui_native", overwrite=overwrite, dtype=dtype)


def with_alpha(lora: LoraFile, alpha: float) -> LoraFile:
    """A copy of ``lora`` whose every module uses ``alpha`` (scale ``alpha / rank``).

    For files trained with another convention than they state, e.g. DimensionX-style LoRAs trained with
    alpha 1 but saved without it (apply with ``alpha=1``: the same as strength ``1/rank``).

    Raises:
        DualAdapterError: alpha not a positive finite number.
    """
    a = float(alpha)
    if not (a > 0 and a < float("inf")):
        raise DualAdapterError(f"alpha override={alpha!r}: must be a positive number (e.g. 1 for 1/rank-scaled LoRAs)")
    md = dict(lora.metadata or {})
    md["alpha_override"] = a
    return dataclasses.replace(lora, alphas={m: a for m in lora.modules}, alpha=a, metadata=md)


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
    out = LoraFile.from_state_dict(sd, md, alphas={m: float(r) for m, r in lf.ranks.items()},
                                   source_format=lf.source_format, path=lf.path)
    out.name = lf.name
    return out


