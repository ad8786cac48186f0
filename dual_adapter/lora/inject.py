"""peft LoRA layers on a denoiser: injection, active adapters, strengths, and their tensors.

Every backbone goes through these: the layers are peft's ``LoraLayer`` wrapping ``nn.Linear`` modules named by a
:class:`~dual_adapter.lora.spec.LoraSpec` or by explicit module names.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from .spec import LoraSpec, _backbone, lora_config

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


@contextlib.contextmanager
def _drawing_from(generator: torch.Generator | None):
    """Context: torch's global CPU random state replaced by ``generator``'s (peft's layer init draws from the global
    state), ``generator`` advanced by what was drawn, and the global state restored afterwards."""
    if generator is None:
        yield
        return
    if generator.device.type != "cpu":
        raise DualAdapterError(f"LoRA init generator: expected a CPU torch.Generator, got one on {generator.device}")
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(generator.get_state())
        try:
            yield
        finally:
            generator.set_state(torch.random.get_rng_state())


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
    generator: torch.Generator | None = None,
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
        generator: a CPU ``torch.Generator`` (:func:`dual_adapter.seeds.seed_generator` of the run's seed) that
            the random start of ``lora_A`` (peft's Kaiming-uniform init) draws from, and which is advanced by those
            draws (so a second adapter injected with it continues the stream); torch's global random state is
            left untouched. None: peft draws from the global state (fine when the weights are then overwritten,
            as when a LoRA file is applied).

    Returns:
        The new LoRA parameters (``lora_A`` / ``lora_B`` weights), in module order.

    Raises:
        DualAdapterError: bad spec or targets, or the adapter name is taken.
    """
    from peft import inject_adapter_in_model

    spec.validate()
    names = list(target_names) if target_names is not None else spec.target_modules(transformer)
    if not names:
        raise DualAdapterError("LoRA has no target modules")
    if adapter_name in _adapter_names(transformer):
        raise DualAdapterError(f"LoRA adapter name {adapter_name!r} is already used on this model")
    cfg = lora_config(spec, names, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    with _keep_requires_grad(transformer), warnings.catch_warnings(), _drawing_from(generator):
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
# state dicts


def lora_state_dict(transformer, adapter_name: str = "default", *, prefix: str | None = None,
                    fold: bool | float = False) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``adapter_name`` in the diffusers layout.

    Keys: ``{prefix}.{module}.lora_A.weight`` ``[r, in]`` and ``{prefix}.{module}.lora_B.weight`` ``[out, r]``,
    e.g. ``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``; ``prefix`` defaults to the backbone's
    (:attr:`~dual_adapter.backbones.base.VideoBackbone.lora_prefix`: ``transformer`` on DiTs, ``unet`` on
    U-Nets). Values are detached CPU copies in their training dtype, and the peft scale ``alpha / r`` is *not*
    applied (:func:`~dual_adapter.lora.file.save_lora` folds it in), unless ``fold``: then each module's
    ``alpha / r`` (or ``fold`` itself when it is a number) is multiplied into ``lora_B`` and both are float32.

    Raises:
        DualAdapterError: the model has no adapter of that name.
    """
    layers = lora_modules(transformer, adapter_name)
    if not layers:
        raise DualAdapterError(f"the model has no LoRA adapter named {adapter_name!r}; has: {_adapter_names(transformer)}")
    if prefix is None:
        prefix = _backbone(transformer).lora_prefix
    out: dict[str, torch.Tensor] = {}
    for n, m in layers.items():
        a, b = m.lora_A[adapter_name].weight.detach(), m.lora_B[adapter_name].weight.detach()
        if fold is not False:
            s = float(m.scaling[adapter_name]) if fold is True else float(fold)
            a, b = a.float(), b.float() * s
        out[f"{prefix}.{n}.lora_A.weight"] = a.to("cpu").clone()
        out[f"{prefix}.{n}.lora_B.weight"] = b.to("cpu").clone()
    return out
