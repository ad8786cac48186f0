"""Model patches: how adapters and LoRAs plug into a loaded model without changing it.

A *model patch* is any object with ``apply(transformer) -> None`` that modifies the module
tree it is given (wraps blocks, injects LoRA layers, ...). :func:`patched_copy` makes a
*structural* copy of the transformer whose parameters and buffers are the very same tensors
as the original's (no weight memory is duplicated), applies the patches to the copy and
returns it. The loaded model is never touched, so ComfyUI's cached model stays valid and
several patched variants can coexist.

Patches must not modify shared tensors in place (no weight merging): they add modules.
"""
from __future__ import annotations

import copy
import itertools
from typing import Iterable, Protocol, runtime_checkable

import torch

__all__ = ["ModelPatch", "PatchedModel", "PerDenoiser", "patches_for", "shallow_copy_module", "patched_copy"]


@runtime_checkable
class ModelPatch(Protocol):
    """Protocol of a model patch (see module docstring)."""

    def apply(self, transformer: torch.nn.Module) -> None:  # pragma: no cover - protocol
        ...


def shallow_copy_module(module: torch.nn.Module) -> torch.nn.Module:
    """Copy the module tree of ``module`` while sharing every parameter and buffer tensor.

    Changing the structure of the copy (replacing sub-modules, adding attributes) leaves the
    original untouched; changing a weight *in place* would affect both, which patches never do.
    """
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def patched_copy(transformer: torch.nn.Module, patches: Iterable[ModelPatch] = ()) -> torch.nn.Module:
    """Return a copy of ``transformer`` (sharing weights) with ``patches`` applied in order.

    With no patches the original module is returned as is.
    """
    patches = [p for p in (patches or ()) if p is not None]
    if not patches:
        return transformer
    model = shallow_copy_module(transformer)
    for p in patches:
        if not hasattr(p, "apply"):
            raise TypeError(f"model patch {p!r} has no apply(transformer) method")
        p.apply(model)
    return model


class PerDenoiser:
    """One model patch per denoiser of a model with several (Wan 2.2 A14B: ``high_noise``, ``low_noise``; the names of
    its backbone's ``denoiser_names``): the sampler applies ``by_name[name]`` to the denoiser ``name`` only
    (:func:`patches_for`); a name mapped to ``None`` runs that denoiser unpatched. A patch that is not a
    ``PerDenoiser`` applies to every denoiser.

    Raises:
        DualAdapterError: ``by_name`` is empty or holds something without ``apply``; asked for a denoiser it does not
            name (the patches were made for another model).
    """

    def __init__(self, by_name: dict):
        from .errors import DualAdapterError

        if not by_name:
            raise DualAdapterError("PerDenoiser needs at least one denoiser name -> patch")
        bad = [k for k, p in by_name.items() if p is not None and not hasattr(p, "apply")]
        if bad:
            raise DualAdapterError(f"PerDenoiser: the patch for {', '.join(map(repr, bad))} has no apply(transformer)")
        self.by_name = dict(by_name)

    def for_denoiser(self, name: str):
        from .errors import DualAdapterError

        if name not in self.by_name:
            raise DualAdapterError(f"these patches are for the denoisers {', '.join(map(repr, self.by_name))}, not "
                                   f"{name!r} (a model with other denoisers, e.g. one-transformer Wan vs Wan 2.2 A14B)")
        return self.by_name[name]

    def apply(self, transformer: torch.nn.Module) -> None:
        from .errors import DualAdapterError

        raise DualAdapterError("per-denoiser patches apply through the sampler, which picks one per denoiser "
                               "(patches_for); apply one of by_name's patches to a single transformer")

    def __repr__(self) -> str:
        return f"PerDenoiser({ {k: type(p).__name__ for k, p in self.by_name.items()} })"


def patches_for(patches: Iterable, name: str) -> list:
    """The patches to apply to the denoiser ``name``: each :class:`PerDenoiser`'s patch for it, every other patch as
    it is; ``None`` entries dropped."""
    out = []
    for p in patches or ():
        p = p.for_denoiser(name) if isinstance(p, PerDenoiser) else p
        if p is not None:
            out.append(p)
    return out


class PatchedModel:
    """A loaded model plus the patches to apply when it runs (the ``VIDEO_MODEL`` payload of the nodes).

    Immutable: :meth:`with_patch` returns a new object, so a ComfyUI node that "applies" an adapter
    never mutates its input, and the frozen weights are shared by every variant.

    Attributes:
        bundle: the :class:`~dual_adapter.backbones.cogvideox.CogVideoXBundle`.
        patches: model patches, applied in order to a weight-sharing copy at sampling time.
    """

    __slots__ = ("bundle", "patches")

    def __init__(self, bundle, patches: Iterable[ModelPatch] = ()):
        object.__setattr__(self, "bundle", bundle)
        object.__setattr__(self, "patches", tuple(patches))

    def __setattr__(self, k, v):
        raise AttributeError("PatchedModel is immutable; use with_patch()")

    def with_patch(self, patch: ModelPatch) -> "PatchedModel":
        return PatchedModel(self.bundle, self.patches + (patch,))

    def build(self) -> torch.nn.Module:
        """The patched transformer (a weight-sharing copy when there are patches)."""
        return patched_copy(self.bundle.transformer, self.patches)

    def __repr__(self) -> str:
        return f"PatchedModel({self.bundle.name!r}, patches={[type(p).__name__ for p in self.patches]})"
