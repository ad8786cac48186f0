"""Saving, loading and importing DualReal adapters.

File format: one safetensors file holding every tensor of
:class:`~dual_adapter.dualreal.adapters.DualRealAdapters` (keys as in its ``state_dict``, which follow
the authors' names) and metadata::

    format        "dualreal-adapters"      version   1
    config        DualRealConfig as a dict (form, dim, num_blocks, time_embed_dim, hidden, groups, ...)
    base_fingerprint  backbone.config_fingerprint of the model it was trained on (or null)
    base_model    the model's name / folder          steps  optimiser steps trained
    identity_prompt, motion_prompt                     reference_encoder  what made the embeddings (or null)
    uses_reference    whether W_cond was trained with reference embeddings

The authors' ``adapter.pth`` (a dict of tensors named
``transformer_blocks.{i}.{id_attn_adapter|...}.{down_linear|up_linear|condition_linear}.{weight|bias}``
and ``controller.*``) imports into the ``official`` form with :func:`import_official`.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DualAdapterError
from ..io import load_safetensors, save_safetensors
from ..limits import MAX_BLOCKS
from .adapters import ADAPTER_NAMES, REFERENCE_DIM, DualRealAdapters, DualRealConfig
from .controller import AUTHORS_CONTROLLER_KEYS

log = logging.getLogger(__name__)

__all__ = ["DualRealAdapterSet", "save_adapters", "load_adapters", "import_official", "load_any"]

FORMAT = "dualreal-adapters"
VERSION = 1


@dataclass
class DualRealAdapterSet:
    """Trained DualReal adapters + controller as plain tensors (the ``DUALREAL_ADAPTERS`` payload).

    Immutable in use: nothing in the library modifies ``state_dict`` in place.

    Attributes:
        config: the :class:`DualRealConfig`.
        state_dict: name -> CPU tensor (the keys of ``DualRealAdapters.state_dict()``).
        meta: base_fingerprint, base_model, steps, identity_prompt, motion_prompt, reference_encoder,
            uses_reference, losses_file ... (JSON-serialisable).
    """

    config: DualRealConfig
    state_dict: dict
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_module(cls, module: DualRealAdapters, **meta) -> "DualRealAdapterSet":
        """Snapshot a module (tensors detached and copied to CPU)."""
        sd = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
        return cls(module.config, sd, dict(meta))

    def to_module(self, device="cpu", dtype: torch.dtype | None = None, trainable: bool = False) -> DualRealAdapters:
        """A new :class:`DualRealAdapters` holding these tensors on ``device`` (``dtype``: default fp32)."""
        with torch.device("meta"):  # no random init of weights that are overwritten right away
            m = DualRealAdapters(self.config)
        m = m.to_empty(device=device).to(dtype=dtype or torch.float32)
        m.load_state_dict(self.state_dict, strict=True)  # copies: the set's tensors are never shared
        m.requires_grad_(trainable)
        return m

    def num_parameters(self) -> int:
        return sum(int(t.numel()) for t in self.state_dict.values())

    def __repr__(self) -> str:
        c = self.config
        return (f"DualRealAdapterSet(blocks={c.num_blocks}, dim={c.dim}, hidden={c.hidden}, groups={c.groups}, "
                f"form={c.form}, controller={c.controller}, steps={self.meta.get('steps')})")


def save_adapters(adapters: DualRealAdapterSet | DualRealAdapters, path: str | os.PathLike,
                  overwrite: bool = False, **meta) -> Path:
    """Write adapters + controller to a safetensors file (atomically; refuses to overwrite unless asked).

    Extra keyword arguments are merged into the metadata.

    Raises:
        DualAdapterError: ``path`` exists and ``overwrite`` is False.
    """
    if isinstance(adapters, DualRealAdapters):
        adapters = DualRealAdapterSet.from_module(adapters)
    m = dict(adapters.meta)
    m.update(meta)
    md = {"format": FORMAT, "version": VERSION, "config": adapters.config.to_dict()}
    md.update({k: v for k, v in m.items() if k not in md})
    return save_safetensors(adapters.state_dict, path, md, overwrite=overwrite)


def load_adapters(path: str | os.PathLike) -> DualRealAdapterSet:
    """Read a file written by :func:`save_adapters`.

    Raises:
        DualAdapterError: missing / unreadable file, not a DualReal adapter file, or tensors that do not
            match the stored config.
    """
    tensors, meta = load_safetensors(path)
    if meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise DualAdapterError(f"{str(path)!r} is not a DualReal adapter file (no 'dualreal-adapters' metadata); "
                               f"for the authors' adapter.pth use import_official")
    cfg = DualRealConfig.from_dict(meta["config"])  # bounded (docs/limits.md) before anything is built
    _check_block_indices(tensors, str(path), cfg.num_blocks)
    _check_tensors(cfg, tensors, str(path))
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "config")}
    return DualRealAdapterSet(cfg, tensors, extra)


def _reference_shapes(cfg: DualRealConfig) -> dict:
    with torch.device("meta"):
        return DualRealAdapters(cfg).state_dict()


_BLOCK_INDEX = re.compile(r"(?:^|\.)transformer_blocks\.(\d+)\.")


def _check_block_indices(tensors, what: str, num_blocks: int | None = None) -> set[int]:
    """The block indices named by tensor keys, checked against ``num_blocks`` (the file's config) or, when
    it is not known yet, against :data:`~dual_adapter.limits.MAX_BLOCKS`, from the names alone (nothing built).

    Raises:
        DualAdapterError: an index at or above the block count, or blocks missing from the tensors.
    """
    found = {int(m.group(1)) for k in tensors for m in [_BLOCK_INDEX.search(k)] if m}
    limit = MAX_BLOCKS if num_blocks is None else num_blocks
    if found and max(found) >= limit:
        raise DualAdapterError(f"{what}: tensor key block index {max(found)} is out of range: "
                               + (f"the file's config says {num_blocks} blocks" if num_blocks is not None else
                                  f"at most {MAX_BLOCKS} blocks are supported (see docs/limits.md)"))
    if num_blocks is not None and len(found) != num_blocks:
        raise DualAdapterError(f"{what}: the file's config says {num_blocks} blocks but its tensors cover "
                               f"{len(found)}")
    return found


def _check_tensors(cfg: DualRealConfig, tensors: dict, what: str) -> None:
    ref = _reference_shapes(cfg)
    missing = sorted(set(ref) - set(tensors))
    unexpected = sorted(set(tensors) - set(ref))
    bad = [k for k in ref if k in tensors and tuple(tensors[k].shape) != tuple(ref[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad:
            parts.append(f"{len(bad)} with wrong shapes (e.g. {bad[0]}: {list(tensors[bad[0]].shape)} vs "
                         f"{list(ref[bad[0]].shape)})")
        raise DualAdapterError(f"{what}: tensors do not match a DualReal set with {cfg.num_blocks} blocks, width "
                               f"{cfg.dim}, hidden {cfg.hidden}: " + "; ".join(parts))


_BLOCK_KEY = re.compile(r"^(?:.*\.)?transformer_blocks\.(\d+)\.(" + "|".join(ADAPTER_NAMES) +
                        r")\.(down_linear|up_linear|condition_linear)\.(weight|bias)$")


def import_official(path: str | os.PathLike, *, time_embed_dim: int | None = None,
                    identity_prompt: str | None = None, motion_prompt: str | None = None) -> DualRealAdapterSet:
    """Import the authors' ``adapter.pth`` into the ``official`` form.

    Loaded with ``torch.load(weights_only=True)`` (tensors only). Block count, width, bottleneck
    width and group count are read from the tensor shapes. Controller sub-module names of the
    released code are mapped to ours (:data:`~dual_adapter.dualreal.controller.AUTHORS_CONTROLLER_KEYS`);
    our own names are accepted too. Identity adapters with a ``condition_linear`` (the released code
    can build them) are refused, since DualReal gives W_cond (docs/dualreal.md) to the motion adapters only.

    Raises:
        DualAdapterError: unreadable file, no adapter tensors, unknown keys, or inconsistent shapes.
    """
    p = Path(path)
    if not p.is_file():
        raise DualAdapterError(f"adapter checkpoint {str(p)!r} does not exist")
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, non-tensor content
        raise DualAdapterError(f"{str(p)!r} could not be read as a tensor checkpoint (torch.load weights_only): "
                               f"{e}") from None
    for k in ("state_dict", "model", "adapter"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise DualAdapterError(f"{str(p)!r} is not a dict of tensors")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    blocks = set()
    for k, v in sd.items():
        m = _BLOCK_KEY.match(k)
        if m:
            i, ad, lin, wb = m.groups()
            blocks.add(int(i))
            out[f"transformer_blocks.{int(i)}.{ad}.{lin}.{wb}"] = v.float()
            continue
        if "controller." in k:
            sub = k.split("controller.", 1)[1]
            mod, _, wb = sub.rpartition(".")
            ours = AUTHORS_CONTROLLER_KEYS.get(mod, mod if mod in AUTHORS_CONTROLLER_KEYS.values() else None)
            if ours is None:
                unknown.append(k)
                continue
            out[f"controller.{ours}.{wb}"] = v.float()
            continue
        unknown.append(k)
    if not blocks:
        raise DualAdapterError(f"{str(p)!r} holds no DualReal adapter tensors (expected keys like "
                               f"transformer_blocks.0.id_attn_adapter.down_linear.weight)")
    if unknown:
        raise DualAdapterError(f"{str(p)!r}: {len(unknown)} unrecognised tensor(s), e.g. {unknown[0]!r}")
    L = max(_check_block_indices(out, str(p))) + 1  # bounded before a module is built
    if len(blocks) != L:
        raise DualAdapterError(f"{str(p)!r}: tensors name blocks up to {L - 1} but only {len(blocks)} blocks are "
                               f"present (a block index is missing or damaged)")
    w = out.get("transformer_blocks.0.id_attn_adapter.down_linear.weight")
    if w is None:
        raise DualAdapterError(f"{str(p)!r}: transformer_blocks.0.id_attn_adapter.down_linear.weight is missing")
    hidden, dim = int(w.shape[0]), int(w.shape[1])
    cw = out.get("transformer_blocks.0.motion_attn_adapter.condition_linear.weight")
    cond_dim = int(cw.shape[1]) if cw is not None else REFERENCE_DIM
    if any(k.endswith("condition_linear.weight") and ".id_" in k for k in out):
        raise DualAdapterError(f"{str(p)!r}: identity adapters carry condition_linear weights; this build gives "
                               f"W_cond to the motion adapters only")
    has_ctrl = any(k.startswith("controller.") for k in out)
    groups, tdim = 1, time_embed_dim
    if has_ctrl:
        ho = out.get("controller.head_out.weight")
        pp = out.get("controller.pool_proj.weight")
        if ho is None or pp is None:
            raise DualAdapterError(f"{str(p)!r}: incomplete controller tensors")
        groups, tdim = int(ho.shape[0]), int(pp.shape[0])
        ctrl_hidden = int(ho.shape[1])
    else:
        ctrl_hidden = 128
        if tdim is None:
            tdim = 512
    cfg = DualRealConfig(num_blocks=L, dim=dim, time_embed_dim=int(tdim), hidden=hidden, groups=groups,
                         form="official", controller=has_ctrl, cond_dim=cond_dim, controller_hidden=ctrl_hidden)
    cfg.validate()
    ref = _reference_shapes(cfg)
    if cw is None:  # checkpoint without W_cond: keep ours at zero so it has no effect
        for k in ref:
            if "condition_linear" in k:
                out[k] = torch.zeros(ref[k].shape)
    _check_tensors(cfg, out, str(p))
    meta = {"base_fingerprint": None, "base_model": "imported", "steps": None, "identity_prompt": identity_prompt,
            "motion_prompt": motion_prompt, "reference_encoder": "OpenCLIP ViT-H/14",
            "uses_reference": cw is not None, "imported_from": p.name}
    return DualRealAdapterSet(cfg, out, meta)


def load_any(path: str | os.PathLike) -> DualRealAdapterSet:
    """``.safetensors`` -> :func:`load_adapters`; ``.pth`` / ``.pt`` / ``.bin`` -> :func:`import_official`."""
    suf = Path(path).suffix.lower()
    if suf in (".pth", ".pt", ".bin"):
        return import_official(path)
    return load_adapters(path)
