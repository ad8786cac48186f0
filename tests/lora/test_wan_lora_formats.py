"""Wan LoRA files (docs/wan.md): the pack's Wan LoRAs save in diffusers / peft layout, ComfyUI native
(``diffusion_model.blocks.N.self_attn.q``) and musubi-tuner / kohya (``lora_unet_blocks_N_self_attn_q``) names, and
every one of them loads back, in ours and in diffusers' own converters, to the same delta per layer with alpha
applied as each tool applies it."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter import lora
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import save_safetensors
from dual_adapter.lora import save_lora_native
from dual_adapter.lora.formats import kohya_lora_state_dict, native_lora_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

#: what musubi-tuner trains (every Linear of every block), which diffusers' musubi converter expects
MODULES = tuple(f"blocks.{i}.{m}" for i in range(4) for m in (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
    "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"))


@pytest.fixture(scope="module")
def wan():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-wan")


@pytest.fixture(scope="module")
def lf(wan):
    """A random rank-4 LoRA with alpha 2 (scale 1/2) on every attention, cross-attention and FFN layer of tiny-wan."""
    g = torch.Generator().manual_seed(0)
    mods = dict(wan.denoiser.named_modules())
    sd = {}
    for m in MODULES:
        lin = mods[m]
        sd[f"transformer.{m}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g)
        sd[f"transformer.{m}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g)
    return lora.LoraFile.from_state_dict(sd, {"format": lora.LORA_FORMAT, "rank": 4, "alpha": 2.0},
                                         alphas={m: 2.0 for m in MODULES})


def _deltas(f) -> dict[str, torch.Tensor]:
    return {m: f.alphas[m] / f.ranks[m] * f.state_dict[f"transformer.{m}.lora_B.weight"].double()
            @ f.state_dict[f"transformer.{m}.lora_A.weight"].double() for m in f.modules}


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-9), k


def test_our_wan_lora_in_every_layout_loads_back_to_the_same_deltas(lf, tmp_path):
    want = _deltas(lf)
    # diffusers layout (what WanPipeline.load_lora_weights reads)
    p = lf.save(tmp_path / "diffusers.safetensors")
    back = lora.load_lora(p)
    assert any(k.startswith("transformer.blocks.0.attn1.to_q.lora_A") for k in lora.load_lora(p).state_dict)
    _same(_deltas(back), want)
    # ComfyUI native
    nat = native_lora_state_dict(lf)
    assert {"diffusion_model.blocks.0.self_attn.q.lora_down.weight", "diffusion_model.blocks.1.self_attn.o.alpha",
            "diffusion_model.blocks.1.cross_attn.v.lora_up.weight", "diffusion_model.blocks.2.ffn.0.lora_down.weight",
            "diffusion_model.blocks.3.ffn.2.lora_up.weight"} <= set(nat)
    back = lora.load_lora(save_lora_native(tmp_path / "native.safetensors", lf))
    assert back.source_format != "kohya"
    _same(_deltas(back), want)
    # musubi-tuner / kohya
    ko = kohya_lora_state_dict(lf)
    assert {"lora_unet_blocks_0_self_attn_q.lora_down.weight", "lora_unet_blocks_0_self_attn_q.alpha",
            "lora_unet_blocks_2_ffn_0.lora_up.weight"} <= set(ko)
    _same(_deltas(lora.load_lora(save_safetensors(ko, tmp_path / "musubi.safetensors", {}))), want)
    # peft (base_model.model. prefix, alpha in adapter_config.json beside the file)
    d = tmp_path / "peft"
    d.mkdir()
    peft_sd = {k.replace("transformer.", "base_model.model.", 1): v for k, v in lf.state_dict.items()}
    save_safetensors(peft_sd, d / "adapter_model.safetensors", {})
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2.0}))
    _same(_deltas(lora.load_lora(d / "adapter_model.safetensors")), want)


def test_files_from_other_tools_load_to_the_delta_those_tools_apply(lf, tmp_path):
    """diffusers' own Wan converters (original / ComfyUI names, musubi-tuner names) fold alpha / rank into the
    weights; ours keep it per module: the delta is the same."""
    from diffusers.loaders.lora_conversion_utils import (_convert_musubi_wan_lora_to_diffusers,
                                                         _convert_non_diffusers_wan_lora_to_diffusers)

    want = _deltas(lf)
    for conv, sd in ((_convert_non_diffusers_wan_lora_to_diffusers, native_lora_state_dict(lf)),
                     (_convert_musubi_wan_lora_to_diffusers, kohya_lora_state_dict(lf))):
        theirs = conv({k: v.clone() for k, v in sd.items()})
        theirs = {m: theirs[f"transformer.{m}.lora_B.weight"].double() @ theirs[f"transformer.{m}.lora_A.weight"].double()
                  for m in MODULES}
        _same(theirs, want)
    # native files without alpha (ComfyUI: scale 1) and with lora_A / lora_B names
    plain = {k.replace("lora_down", "lora_A").replace("lora_up", "lora_B"): v
             for k, v in native_lora_state_dict(lf).items() if not k.endswith(".alpha")}
    got = lora.load_lora(save_safetensors(plain, tmp_path / "plain.safetensors", {}))
    _same(_deltas(got), {m: 2 * d for m, d in want.items()})  # alpha = rank: twice our alpha-2 delta
    theirs = _convert_non_diffusers_wan_lora_to_diffusers(dict(plain))
    _same({m: theirs[f"transformer.{m}.lora_B.weight"].double() @ theirs[f"transformer.{m}.lora_A.weight"].double()
                  for m in MODULES},
          _deltas(got))


def test_a_native_wan_lora_applies_like_its_diffusers_twin(wan, lf, tmp_path):
    from dual_adapter.patches import patched_copy

    x, t, e = torch.randn(1, 3, 4, 8, 8), torch.tensor([400.0]), wan.encode_prompt("x")
    outs = []
    for path in (lf.save(tmp_path / "d.safetensors"), save_lora_native(tmp_path / "n.safetensors", lf)):
        lora.check_compatible(lora.load_lora(path), wan.denoiser)
        model = patched_copy(wan.denoiser, [lora.LoraPatch(lora.load_lora(path), 0.7)])
        outs.append(wan.predict(x, t, e, denoiser=model))
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and not torch.allclose(outs[0], wan.predict(x, t, e), atol=1e-4)


def test_unknown_wan_keys_and_full_differences_are_refused_by_name(tmp_path):
    bad = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 8),
           "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(8, 2),
           "diffusion_model.blocks.0.self_attn.q.diff_b": torch.zeros(8)}
    with pytest.raises(DualAdapterError, match="full weight differences"):
        lora.load_lora(save_safetensors(bad, tmp_path / "diff.safetensors", {}))
    with pytest.raises(DualAdapterError, match="name no Wan layer"):
        lora.load_lora(save_safetensors({"lora_unet_blocks_0_self_attn_zz.lora_down.weight": torch.zeros(2, 8)},
                                        tmp_path / "k.safetensors", {}))
