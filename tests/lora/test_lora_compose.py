"""Patches compose: DualReal adapters and a LoRA give the same output in either order, and the patched model
keeps the base model's module paths."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.backbones.cogvideox import transformer_forward
from dual_adapter.dualreal import DualRealAdapters, DualRealConfig, DualRealPatch
from dual_adapter.patches import patched_copy

from helpers import (
    forward_inputs as _inputs,
    fresh_tiny,  # noqa: F401  (the fixture bundle: a tiny model of this module's own)
    random_full_lora as _lora,
    randomise as _randomise,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def test_dualreal_and_lora_compose_in_any_order(bundle):
    from dual_adapter.lora import LoraPatch

    tr = bundle.transformer
    mod = DualRealAdapters(DualRealConfig.for_transformer(tr, groups=2))
    _randomise(mod)
    dr, lp = DualRealPatch(mod, torch.randn(1, 1024)), LoraPatch(_lora(bundle))
    x, e, t = _inputs(bundle)
    a = transformer_forward(patched_copy(tr, [dr, lp]), x, e, t)
    b = transformer_forward(patched_copy(tr, [lp, dr]), x, e, t)
    only_dr = transformer_forward(patched_copy(tr, [dr]), x, e, t)
    only_lora = transformer_forward(patched_copy(tr, [lp]), x, e, t)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert (a - only_dr).abs().max() > 1e-3 and (a - only_lora).abs().max() > 1e-3  # both patches act
    # the patched model keeps the base model's module paths (nothing nested under a wrapper name)
    names = {n for n, _ in patched_copy(tr, [dr]).named_modules()}
    assert "transformer_blocks.0.attn1.to_q" in names and not any(".block." in n for n in names)
