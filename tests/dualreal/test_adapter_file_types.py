"""Adapter and LoRA files whose values have the wrong type are refused by name (no raw TypeError, no integer
LoRA applied as if it were weights)."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, load_adapters, save_adapters
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import load_safetensors, save_safetensors
from dual_adapter.lora import load_lora


def _adapter_file_with(tmp_path, **config_changes):
    cfg = DualRealConfig(num_blocks=2, dim=16, time_embed_dim=8, hidden=4, groups=1, controller_hidden=8)
    good = save_adapters(DualRealAdapterSet.from_module(DualRealAdapters(cfg)), tmp_path / "good.safetensors")
    tensors, meta = load_safetensors(good)
    meta["config"] = dict(meta["config"], **config_changes)
    return save_safetensors(tensors, tmp_path / "bad.safetensors", meta)


@pytest.mark.parametrize("key, value", [("scale", "abc"), ("scale", None), ("scale", float("nan")), ("scale", True),
                                        ("lam", "1"), ("controller", "yes")])
def test_an_adapter_config_of_the_wrong_type_is_refused_by_name(tmp_path, key, value):
    path = _adapter_file_with(tmp_path, **{key: value})
    with pytest.raises(DualAdapterError, match=rf"DualReal {key}="):
        load_adapters(path)


def test_a_valid_adapter_file_still_loads(tmp_path):
    a = load_adapters(_adapter_file_with(tmp_path, scale=0.3, lam=0.5))
    assert a.config.scale == 0.3 and a.config.lam == 0.5


def _lora(tmp_path, dtype=torch.float32, meta=None):
    sd = {"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 64).to(dtype),
          "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(64, 2).to(dtype)}
    return save_safetensors(sd, tmp_path / f"lora_{str(dtype).split('.')[-1]}.safetensors", meta)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_a_lora_with_integer_tensors_is_refused(tmp_path, dtype):
    with pytest.raises(DualAdapterError, match=r"must be floating point.*lora_A\.weight \(" + str(dtype).split(".")[-1]):
        load_lora(_lora(tmp_path, dtype))


def test_a_lora_alpha_that_is_not_a_number_is_refused(tmp_path):
    meta = {"lora_adapter_metadata": json.dumps({"lora_alpha": "abc", "r": 2})}
    with pytest.raises(DualAdapterError, match=r"lora_alpha is 'abc'; it must be a finite number"):
        load_lora(_lora(tmp_path, meta=meta))
    ok = load_lora(_lora(tmp_path, torch.bfloat16, meta={"lora_adapter_metadata": json.dumps({"lora_alpha": 4})}))
    assert list(ok.alphas.values()) == [4.0]
