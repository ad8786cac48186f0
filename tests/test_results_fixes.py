"""Wrong-or-silent-result fixes (issue 11): patch composition, reference handling, CustomTTT merge
reference, finiteness checks, reproducibility, and the DualReal recipe options.

CPU, tiny model, seconds.
"""
from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest
import torch

from dual_adapter.backbone import build_tiny, encode_prompt, transformer_forward
from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bundle():
    return build_tiny("tiny", seed=0)


def _randomise(module: torch.nn.Module, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _inputs(bundle, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 4, 8, 12, generator=g)
    e = encode_prompt(bundle, ["dog * is playing guitar", "a person"][:batch])
    t = torch.tensor([700, 150][:batch])
    return x, e, t


def _lora(bundle, seed=1):
    from dual_adapter.lora import LoraFile

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(len(bundle.transformer.transformer_blocks)):
        for m in ("attn1.to_q", "attn1.to_k", "ff.net.2"):
            lin = bundle.transformer.get_submodule(f"transformer_blocks.{i}.{m}")
            sd[f"transformer.transformer_blocks.{i}.{m}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * .2
            sd[f"transformer.transformer_blocks.{i}.{m}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * .2
    return LoraFile.from_state_dict(sd)


# --------------------------------------------------------------------------------------------
# item 11: DualReal + LoRA in any order


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
