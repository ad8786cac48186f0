"""DualReal on Wan (docs/wan.md): DA-blocks on Wan's video tokens through the backbone's adapted block forward.
Zero-initialised adapters leave the output bit-identical; the fused DA-block is the adapter formula; the
StageBlender reads the pooled tokens and Wan's timestep features by its formula; the gradient mask keeps the
inactive set bit-identical; joint training runs on the flow-matching objective and the adapters sample."""
from __future__ import annotations

import types

import pytest
import torch

from dual_adapter.dualreal import (DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealOptions, DualRealPatch,
                                   block_groups, find_context, train_dualreal, train_dualreal_on_data)
from dual_adapter.patches import patched_copy
from dual_adapter.training import TrainConfig
from helpers import randomise as _randomise, stageblender_alpha

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-wan")


def _inputs(wan, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, 4, 8, 8, generator=g), wan.encode_prompt(["dog * runs", "a person"]),
            torch.tensor([700.0, 150.0]))


def test_zero_init_adapters_leave_wan_bit_identical_and_keep_module_paths(wan):
    x, e, t = _inputs(wan)
    base = wan.predict(x, t, e)
    mod = DualRealAdapters(DualRealConfig.for_transformer(wan.denoiser, form="zero_init", groups=2))
    for ref in (None, torch.randn(1, 1024)):
        model = patched_copy(wan.denoiser, [DualRealPatch(mod, ref)])
        assert torch.equal(wan.predict(x, t, e, denoiser=model), base)
    own = {k for k in model.state_dict() if ".adapters." not in k and ".controller." not in k}
    assert own == set(wan.denoiser.state_dict())  # blocks.{i}.attn1.to_q ... and scale_shift_table stay where they were
    off = DualRealAdapters(DualRealConfig.for_transformer(wan.denoiser, form="official", groups=2))
    out = wan.predict(x, t, e, denoiser=patched_copy(wan.denoiser, [DualRealPatch(off)]))
    assert (out - base).abs().max() > 1e-4  # the official form adds (w_id + w_mo) n (docs/dualreal.md)


def test_fused_da_block_on_wan_is_the_adapter_formula_on_the_video_tokens(wan):
    x, e, t = _inputs(wan)
    mod = DualRealAdapters(DualRealConfig.for_transformer(wan.denoiser, form="zero_init", groups=2))
    _randomise(mod)
    ref = torch.randn(1, 1024)
    model = patched_copy(wan.denoiser, [DualRealPatch(mod, ref)])
    fused = wan.predict(x, t, e, denoiser=model)
    ctx = find_context(model)

    def reference_forward(self, hs, enc, temb, rotary_emb):
        ad = self.adapters
        sh, sc, g, csh, csc, cg = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        if self.index == 0:
            ctx.run_controller(self.controller, hs, enc, ctx.state["time"])
        w_id, w_mo = ctx.weights(self.group, hs.shape[0], hs.device)
        c = ctx.cond_for(hs.shape[0], hs.device, torch.float32)
        n = self.norm1(hs) * (1 + sc) + sh
        a = self.attn1(n, None, None, rotary_emb) + w_id * ad.id_attn_adapter(n) + w_mo * ad.motion_attn_adapter(n, c)
        hs = hs + a * g
        hs = hs + self.attn2(self.norm2(hs), enc, None, None)
        n = self.norm3(hs) * (1 + csc) + csh
        f = self.ffn(n) + w_id * ad.id_ff_adapter(n) + w_mo * ad.motion_ff_adapter(n, c)
        return hs + f * cg

    for blk in model.blocks:
        blk.forward = types.MethodType(reference_forward, blk)
    slow = wan.predict(x, t, e, denoiser=model)
    assert torch.allclose(fused, slow, atol=1e-5, rtol=1e-4), (fused - slow).abs().max()


def test_stageblender_follows_its_formula_from_pooled_tokens_and_timestep_features(wan):
    x, e, t = _inputs(wan)
    mod = DualRealAdapters(DualRealConfig.for_transformer(wan.denoiser, groups=2))
    _randomise(mod, std=0.2)
    rec = []
    wan.predict(x, t, e, denoiser=patched_copy(wan.denoiser, [DualRealPatch(mod, recorder=rec)]))
    d = wan.denoiser
    tokens = d.patch_embedding(x.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2)  # block 0's video tokens
    text = d.condition_embedder.text_embedder(e)                                      # its (projected) text tokens
    pool = torch.maximum(text.amax(1), tokens.amax(1))
    time = d.condition_embedder.timesteps_proj(t)                                     # sinusoidal, freq_dim wide
    alpha = stageblender_alpha(mod.controller, pool, time)
    assert len(rec) == 1 and torch.allclose(rec[0], alpha.detach(), atol=1e-6)
    assert not torch.allclose(rec[0][0], rec[0][1])  # per sample (its own timestep and tokens)


def test_block_groups_for_wan_sizes():
    from dual_adapter.dualreal.controller import group_ranges

    for blocks, sizes in ((30, {4, 5}), (40, {5, 6})):
        g = block_groups(blocks, 7)
        assert len(g) == blocks and g == sorted(g) and set(g) == set(range(7))
        assert {b - a for a, b in group_ranges(blocks, 7)} == sizes


def _fake_data(wan, refs=True):
    from dual_adapter.dualreal import DualRealData

    g = torch.Generator().manual_seed(0)
    return DualRealData(torch.randn(2, 1, 4, 8, 8, generator=g), torch.randn(1, 3, 4, 8, 8, generator=g),
                        wan.encode_prompt("dog *"), wan.encode_prompt("a dog runs"),
                        torch.randn(1, 1024, generator=g) if refs else None, "dog *", "a dog runs", "test")


@pytest.mark.parametrize("phase", ["identity", "motion"])
def test_gradient_mask_keeps_the_inactive_set_bit_identical_on_wan(wan, phase):
    cfg = DualRealConfig.for_transformer(wan.denoiser, groups=2)
    mod = DualRealAdapters(cfg)
    _randomise(mod, std=0.02)
    start = DualRealAdapterSet.from_module(mod)
    res = train_dualreal_on_data(wan.denoiser, wan.scheduler_config, _fake_data(wan),
                                 DualRealOptions(groups=2, motion_ratio=1.0 if phase == "motion" else 0.0,
                                                 motion_batch=1),
                                 TrainConfig(steps=2, lr=1e-2, warmup_steps=0, checkpoint_every=0,
                                             gradient_checkpointing=True), adapters=start)
    assert [r["phase"] for r in res.losses] == [phase, phase]
    before, after = start.state_dict, res.adapters.state_dict
    frozen, active = ("motion_", "id_") if phase == "identity" else ("id_", "motion_")
    for k in before:
        if f".{frozen}" in k:
            assert torch.equal(before[k], after[k]), f"{k} changed in the {phase} phase"
        elif f".{active}" in k and "condition_linear" not in k:
            assert not torch.equal(before[k], after[k]), f"{k} did not train in the {phase} phase"
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("controller."))


def test_joint_training_on_wan_lowers_the_loss_and_the_adapters_sample(wan):
    from dual_adapter import sampling
    from dual_adapter.reference import build_tiny_reference_encoder

    photo = torch.zeros(64, 64, 3)
    photo[16:48, 16:48] = torch.tensor([0.9, 0.5, 0.1])
    clip = torch.zeros(9, 64, 64, 3)
    for i in range(9):
        clip[i, 20:44, 4 + 4 * i: 28 + 4 * i] = torch.tensor([0.9, 0.5, 0.1])
    res = train_dualreal(wan, [photo], "dog *", [clip], "dog * runs", reference_encoder=build_tiny_reference_encoder(),
                         options=DualRealOptions(groups=2, latent_sampling="mode"),
                         train=TrainConfig(steps=40, lr=3e-3, warmup_steps=0, checkpoint_every=0,
                                           gradient_checkpointing=False, seed=0))
    assert res.adapters.config.num_blocks == 4 and res.adapters.meta["base_fingerprint"] == wan.fingerprint()
    losses = [r["loss"] for r in res.losses]
    assert all(torch.isfinite(torch.tensor(losses)))
    k = len(losses) // 4
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses
    lat = sampling.sample(wan, wan.encode_prompt("dog * runs"), None, steps=2, cfg=5.0, seed=0,
                          patches=[DualRealPatch(res.adapters)])
    assert lat.shape == (1, 3, 4, 8, 8) and torch.isfinite(lat).all()
