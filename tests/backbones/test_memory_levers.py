"""fp8 storage of frozen weights and block swap (dual_adapter.memory) on tiny CogVideoX, Wan and U-Net models."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dual_adapter.errors import DualAdapterError
from dual_adapter.memory import (FP8_DTYPE, BlockSwap, Fp8Linear, fp8_round_trip, memory_levers,
                                 store_fp8)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_cog():
    from dual_adapter.backbone import build_tiny

    return build_tiny("tiny", seed=0).transformer


def _tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=8, attention_head_dim=4).eval()


def _inputs(kind, g=None):
    g = g or torch.Generator().manual_seed(1)
    if kind == "cog":
        return dict(x=torch.randn(1, 3, 4, 8, 12, generator=g), e=torch.randn(1, 16, 32, generator=g),
                    t=torch.tensor([500]))
    if kind == "wan":
        return dict(x=torch.randn(1, 4, 2, 8, 8, generator=g), e=torch.randn(1, 6, 16, generator=g),
                    t=torch.tensor([500]))
    return dict(x=torch.randn(1, 4, 16, 16, generator=g), e=torch.randn(1, 5, 16, generator=g), t=torch.tensor([500]))


def _run(kind, model, inp):
    if kind == "cog":
        from dual_adapter.backbone import transformer_forward

        return transformer_forward(model, inp["x"], inp["e"], inp["t"])
    if kind == "wan":
        return model(inp["x"], inp["t"], inp["e"], return_dict=False)[0]
    return model(inp["x"], inp["t"], inp["e"], return_dict=False)[0]


BUILD = {"cog": _tiny_cog, "wan": _tiny_wan, "unet": _tiny_unet}


def _rounded_copy(model):
    """The model with every Linear that store_fp8 converts holding its fp8 round-trip weight (fp32)."""
    ref = copy.deepcopy(model)
    conv = copy.deepcopy(model)
    store_fp8(conv)
    mods = dict(ref.named_modules())
    n = 0
    with torch.no_grad():
        for name, m in conv.named_modules():
            if isinstance(m, Fp8Linear):
                mods[name].weight.copy_(m.weight.float() * m.weight_scale)
                n += 1
    return ref, conv, n


@pytest.mark.parametrize("kind", ["cog", "wan", "unet"])
def test_fp8_forward_matches_within_fp8_rounding(kind):
    """The fp8-stored model computes exactly the model with fp8-rounded weights (to float rounding), and stays
    within fp8 rounding of the original, in fp32 and under bf16 autocast."""
    model = BUILD[kind]().requires_grad_(False)
    rounded, conv, n = _rounded_copy(model)
    assert n >= 4
    lin = [m for m in conv.modules() if isinstance(m, Fp8Linear)]
    assert all(m.weight.dtype == FP8_DTYPE and isinstance(m, nn.Linear) for m in lin)
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if type(m) is nn.Linear)  # untouched
    inp = _inputs(kind)
    with torch.no_grad():
        base, same, got = _run(kind, model, inp), _run(kind, rounded, inp), _run(kind, conv, inp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base16, got16 = _run(kind, model, inp).float(), _run(kind, conv, inp).float()
    assert torch.allclose(got, same, atol=1e-5, rtol=1e-4), (got - same).abs().max()
    rel = ((got - base).norm() / base.norm()).item()
    assert 0 < rel < 0.05, rel  # e4m3: 3 mantissa bits, <= 2^-4 relative per weight, averaging out
    rel16 = ((got16 - base16).norm() / base16.norm()).item()
    assert rel16 < 0.06, rel16


def test_fp8_round_trip_error_bound():
    w = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scales
    w8, s = fp8_round_trip(w)
    back = w8.float() * s
    assert w8.dtype == FP8_DTYPE and s.shape == (64, 1)
    big = w.abs() > s * 2 ** -6 * 8  # normal fp8 range: relative error <= 2^-4
    assert ((back - w).abs()[big] <= w.abs()[big] * 2 ** -4 + 1e-12).all()


def test_peft_lora_trains_on_fp8_base():
    """One training step of a peft LoRA on an fp8-stored tiny model: the gradient reaches the LoRA (and equals
    the gradient on the fp8-rounded fp32 model), the base weights stay fp8 and unchanged; converting after the
    LoRA was injected gives the same."""
    from dual_adapter.lora import LoraSpec, inject_lora

    base = _tiny_cog().requires_grad_(False)
    rounded, _, _ = _rounded_copy(base)
    inp = _inputs("cog")
    grads = {}
    for order in ("fp8_first", "lora_first", "reference"):
        model = copy.deepcopy(rounded if order == "reference" else base)
        if order == "fp8_first":
            store_fp8(model)
        torch.manual_seed(0)
        params = inject_lora(model, LoraSpec.from_preset("full", rank=4, alpha=4.0, dropout=0.0), "default")
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.05)
        if order == "lora_first":
            store_fp8(model)
        fp8 = [m for m in model.modules() if isinstance(m, Fp8Linear)]
        if order != "reference":
            assert fp8 and all(m.weight.dtype == FP8_DTYPE for m in fp8)
            assert any(".base_layer" in n for n, m in model.named_modules() if isinstance(m, Fp8Linear))
            before = [m.weight.detach().clone() for m in fp8]
        assert all(p.dtype == torch.float32 for p in params)
        opt = torch.optim.AdamW(params, lr=1e-2)
        model.enable_gradient_checkpointing()
        loss = _run("cog", model, inp).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None for p in params) and sum(p.grad.abs().sum() for p in params) > 0
        grads[order] = [p.grad.clone() for p in params]
        opt.step()
        if order != "reference":
            assert all(m.weight.dtype == FP8_DTYPE and not m.weight.requires_grad for m in fp8)
            assert all(torch.equal(m.weight.view(torch.uint8), b.view(torch.uint8)) for m, b in zip(fp8, before))
    for order in ("fp8_first", "lora_first"):
        for a, b in zip(grads[order], grads["reference"]):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), (order, (a - b).abs().max())


def test_fp8_keeps_the_original_model_of_a_shared_copy():
    from dual_adapter.patches import shallow_copy_module

    model = _tiny_cog().requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cp = shallow_copy_module(model)
    assert store_fp8(cp) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())


def _swap_run(kind, swap_n, *, train=True, blocks=None):
    """Output and LoRA gradients of a tiny model with a LoRA, gradient checkpointing on, with ``swap_n``
    blocks swapped (0 = no swap). Returns (out, grads, swap)."""
    from dual_adapter.lora import LoraSpec, inject_lora
    from dual_adapter.patches import shallow_copy_module

    model = shallow_copy_module(BUILD[kind]().requires_grad_(False))
    names = [n for n, _ in model.named_modules() if n.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v"))]
    torch.manual_seed(0)
    params = inject_lora(model, LoraSpec(rank=4, alpha=4.0, dropout=0.0), "default", target_names=names)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    model.enable_gradient_checkpointing()
    seen = []
    with memory_levers(model, block_swap=swap_n, blocks=blocks) as swap:
        if swap is not None:
            blk = swap.blocks[1]
            host = {id(h): h.data_ptr() for _, _, _, h in swap._slots[1]}
            name = next(n for n, p in blk.named_parameters() if not p.requires_grad)

            def spy(m, a):  # while block 1 runs, its frozen weights are a fresh copy, not the host tensor
                seen.append(dict(blk.named_parameters())[name].data_ptr() not in host.values())

            blk.register_forward_pre_hook(spy)  # after the swap's own pre-hook
        out = _run(kind, model, _inputs(kind))
        if swap is not None:  # after the forward every swapped block holds its host tensors again
            assert all(getattr(mod, st)[k] is h for slots in swap._slots.values() for mod, st, k, h in slots)
        if train:
            out.pow(2).mean().backward()
    return out.detach(), [p.grad for p in params], swap, seen


@pytest.mark.parametrize("kind,n", [("cog", 2), ("cog", 4), ("wan", 2)])
def test_block_swap_is_bit_identical(kind, n):
    """Block swap (host = compute = CPU: each swapped block runs on a fresh copy, the next one copied ahead)
    gives bit-identical outputs and LoRA gradients, with gradient checkpointing (blocks recomputed in backward,
    in reverse order)."""
    out0, g0, _, _ = _swap_run(kind, 0)
    out1, g1, swap, seen = _swap_run(kind, n)
    assert torch.equal(out0, out1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert seen and all(seen)
    # forward: each swapped block once; backward recompute: each again
    assert swap.moves >= 2 * len(swap.swapped)
    assert swap.most_resident == 2  # the block running and the one copied ahead


def test_block_swap_with_fp8_and_sampling():
    """Both levers together on Wan under no_grad (sampling): the same output as fp8 alone; the model's weights
    are back in place after the block."""
    model = _tiny_wan().requires_grad_(False)
    store_fp8(model)
    inp = _inputs("wan")
    with torch.no_grad():
        ref = _run("wan", model, inp)
        with BlockSwap(model, 3) as swap:
            got = _run("wan", model, inp)
            got2 = _run("wan", model, inp)
    assert swap.moves == 6 and torch.equal(ref, got) and torch.equal(ref, got2)
    assert all(m.weight.dtype == FP8_DTYPE for m in model.modules() if isinstance(m, Fp8Linear))
    with torch.no_grad():
        assert torch.equal(_run("wan", model, inp), ref)


def test_block_swap_refusals():
    model = _tiny_wan()
    with pytest.raises(DualAdapterError, match="no block list 'transformer_blocks'.*ModuleLists: \\['blocks'\\]"):
        BlockSwap(model, 2, blocks="transformer_blocks")
    with pytest.raises(DualAdapterError, match="block_swap=-1"):
        BlockSwap(model, -1)
    with pytest.raises(DualAdapterError, match="store_fp8"):
        store_fp8("model")


def test_train_lora_cli_levers(tmp_path):
    """``train-lora --block-swap 2`` writes the same LoRA bit for bit as without; ``--fp8-base`` trains (a LoRA
    close to the bf16 one, not equal); both are refused on a U-Net model's trainer; bad values are refused."""
    from dual_adapter import lora
    from dual_adapter.cli import main
    from dual_adapter.media import write_video
    from dual_adapter.training import TrainConfig

    t = torch.linspace(0, 1, 9).view(9, 1, 1, 1)
    x = torch.linspace(0, 1, 96).view(1, 1, 96, 1)
    frames = (0.5 + 0.4 * torch.sin(6.0 * (x - 0.4 * t))).expand(9, 64, 96, 3).contiguous()
    clip = str(write_video(frames, tmp_path / "clip.mp4", fps=8))
    cli = ["train-lora", "--model", "tiny", "--motion", clip, "--prompt", "a wave", "--steps", "2", "--rank", "4",
           "--dropout", "0", "--lr", "1e-2", "--quiet"]
    files = {}
    for name, extra in (("plain", []), ("swap", ["--block-swap", "2"]), ("fp8", ["--fp8-base", "--block-swap", "1"])):
        out = tmp_path / f"{name}.safetensors"
        assert main(cli + extra + ["--out", str(out)]) == 0
        files[name] = lora.load_lora(out).state_dict
    assert files["plain"].keys() == files["swap"].keys() == files["fp8"].keys()
    assert all(torch.equal(files["plain"][k], files["swap"][k]) for k in files["plain"])
    diff = [(files["plain"][k] - files["fp8"][k]).abs().max().item() for k in files["plain"]]
    assert max(diff) > 0 and all(d < 0.05 for d in diff)
    with pytest.raises(DualAdapterError, match="block_swap=-1"):
        TrainConfig(block_swap=-1).validate()


def test_dualreal_trainer_block_swap_bit_identical(tiny):
    """DualReal's trainer with ``block_swap=2`` (the inactive adapter set frozen per phase stays off the swap)
    gives bit-identical adapters and losses; with ``fp8_base`` it trains."""
    from helpers import random_dualreal_data as _data, randomised_adapters as _randomised

    from dual_adapter.dualreal import DualRealAdapterSet, DualRealConfig, DualRealOptions, train_dualreal_on_data
    from dual_adapter.training import TrainConfig

    cfg = DualRealConfig.for_transformer(tiny.transformer, groups=2)
    start = DualRealAdapterSet.from_module(_randomised(cfg))
    runs = {}
    for name, kw in (("plain", {}), ("swap", {"block_swap": 2}), ("fp8", {"fp8_base": True})):
        tc = TrainConfig(steps=3, lr=1e-2, warmup_steps=0, checkpoint_every=0, optimizer="adamw", **kw)
        runs[name] = train_dualreal_on_data(tiny.transformer, tiny.scheduler_config, _data(tiny),
                                            DualRealOptions(groups=2, motion_ratio=0.5, motion_batch=1), tc,
                                            adapters=start)
    a, b, c = (runs[k].adapters.state_dict for k in ("plain", "swap", "fp8"))
    assert [r["loss"] for r in runs["plain"].losses] == [r["loss"] for r in runs["swap"].losses]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a) and all(torch.isfinite(c[k]).all() for k in c)
    assert all(type(m) is nn.Linear for m in tiny.transformer.modules() if isinstance(m, nn.Linear))
