"""DualReal (docs/dualreal.md): DA-blocks, StageBlender, joint training, checkpoints, CLI, nodes.

CPU, tiny model. One joint training run on a dog photo + a guitar clip (module fixture) serves the
loss / sampling / memorisation / save-load / readout tests.
"""
from __future__ import annotations

import json
import logging
import types
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from dual_adapter.backbones.cogvideox import build_tiny, encode_prompt, transformer_forward
from dual_adapter.dualreal import (DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealOptions,
                                   DualRealPatch, StageBlender, block_groups, find_context, group_ranges,
                                   load_adapters, plot_stageblender, prepare_dualreal_data,
                                   run_paths, save_adapters, stageblender_readout, train_dualreal,
                                   train_dualreal_on_data)
from dual_adapter.errors import DualAdapterError, InterruptedByUser
from dual_adapter.patches import patched_copy
from dual_adapter.reference import build_tiny_reference_encoder
from dual_adapter.training import TrainConfig, diffusion_loss, make_noise_scheduler

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DOG = DATA / "identity" / "dog"
GUITAR = DATA / "motion" / "playing_guitar" / "v_PlayingGuitar_g03_c01.avi"
needs_data = pytest.mark.skipif(not GUITAR.exists(), reason="../shared/data is not beside the project")
MOTION_PROMPT = "a person is playing guitar"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


@pytest.fixture(scope="module")
def bundle():
    return build_tiny("tiny", seed=0)


def _inputs(bundle, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 4, 8, 12, generator=g)
    e = encode_prompt(bundle, ["dog * is playing guitar", "a person"][:batch] * (batch // 2 or 1))[:batch]
    t = torch.tensor([700, 150][:batch] * (batch // 2 or 1))[:batch]
    return x, e, t


def _randomise(module: torch.nn.Module, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _fast(steps, **kw):
    kw.setdefault("gradient_checkpointing", False)
    return TrainConfig(steps=steps, warmup_steps=kw.pop("warmup_steps", 0), checkpoint_every=kw.pop("checkpoint_every", 0),
                       **kw)


# --------------------------------------------------------------------------------------------
# structure and invariants


def test_groups_cover_all_blocks_contiguously():
    for L in range(1, 50):
        for n in range(1, L + 1):
            g = block_groups(L, n)
            assert len(g) == L and g[0] == 0 and g[-1] == n - 1
            assert all(b - a in (0, 1) for a, b in zip(g, g[1:])), (L, n, g)  # contiguous, in depth order
            sizes = [g.count(k) for k in range(n)]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, (L, n, sizes)
            ranges = group_ranges(L, n)
            assert ranges[0][0] == 0 and ranges[-1][1] == L
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert block_groups(42, 7) == [i // 6 for i in range(42)]  # the paper: 6 blocks per group on 5B
    with pytest.raises(DualAdapterError, match="groups"):
        block_groups(4, 7)


def test_controller_weights_in_range_and_complementary(bundle):
    sb = StageBlender(dim=64, time_dim=32, groups=3)
    pool, temb = torch.randn(5, 64) * 10, torch.randn(5, 32) * 10
    a0 = sb(pool, temb)
    assert a0.shape == (5, 3) and torch.allclose(a0, torch.full_like(a0, 0.1))  # at init w_id = w_mo = 0.1
    _randomise(sb, std=1.0)
    a = sb(pool, temb)
    assert a.min() >= 0 and a.max() <= 0.2 and a.std() > 1e-3
    cfg = DualRealConfig(num_blocks=4, dim=64, time_embed_dim=32, groups=3)
    from dual_adapter.dualreal import DualRealContext

    ctx = DualRealContext(cfg)
    ctx.alpha = a
    for grp in range(3):
        w_id, w_mo = ctx.weights(grp, 5, "cpu")
        assert torch.allclose(w_id + w_mo, torch.full_like(w_id, 0.2))
        assert w_id.min() >= 0 and w_mo.min() >= 0


@pytest.mark.parametrize("variant", ["tiny", "tiny-5b", "tiny-1.5"])
def test_untrained_zero_init_leaves_output_unchanged(variant):
    b = build_tiny(variant, seed=0, num_layers=3)
    x, e, t = _inputs(b)
    if b.config.patch_size_t:
        x = torch.cat([x, x[:, :1]], 1)  # even frame count for patch_size_t = 2
    base = transformer_forward(b.transformer, x, e, t)
    mod = DualRealAdapters(DualRealConfig.for_transformer(b.transformer, form="zero_init", groups=2))
    for ref in (None, torch.randn(1, 1024)):
        out = transformer_forward(patched_copy(b.transformer, [DualRealPatch(mod, ref)]), x, e, t)
        assert torch.allclose(out, base, atol=1e-6), (variant, (out - base).abs().max())
    # the official form adds (w_id + w_mo) * n to each sub-layer: an untrained model differs (documented)
    off = DualRealAdapters(DualRealConfig.for_transformer(b.transformer, form="official", groups=2))
    out = transformer_forward(patched_copy(b.transformer, [DualRealPatch(off)]), x, e, t)
    assert (out - base).abs().max() > 1e-3


def test_fused_da_block_equals_adapter_formula(bundle):
    """The fused DA-block computes attn_out += w_id A_id(n) + w_mo A_mo(n, c) before the gates (docs/dualreal.md)."""
    tr = bundle.transformer
    x, e, t = _inputs(bundle)
    for form in ("official", "zero_init"):
        mod = DualRealAdapters(DualRealConfig.for_transformer(tr, form=form, groups=2))
        _randomise(mod)
        ref = torch.randn(1, 1024)  # batch 1, broadcast to the model batch of 2 (as for CFG)
        model = patched_copy(tr, [DualRealPatch(mod, ref)])
        fused = transformer_forward(model, x, e, t)
        ctx = find_context(model)

        def reference_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                              attention_kwargs=None):
            blk, L, ad = self.block, encoder_hidden_states.size(1), self.adapters
            hs, enc = hidden_states, encoder_hidden_states
            if self.index == 0:
                ctx.run_controller(self.controller, hs, enc, temb)
            w_id, w_mo = ctx.weights(self.group, hs.shape[0], hs.device)
            c = ctx.cond_for(hs.shape[0], hs.device, torch.float32)
            nh, ne, g, eg = blk.norm1(hs, enc, temb)
            ah, ae = blk.attn1(hidden_states=nh, encoder_hidden_states=ne, image_rotary_emb=image_rotary_emb)
            n = torch.cat([ne, nh], 1)
            d = w_id * ad.id_attn_adapter(n) + w_mo * ad.motion_attn_adapter(n, c)
            hs, enc = hs + g * (ah + d[:, L:]), enc + eg * (ae + d[:, :L])
            nh, ne, g, eg = blk.norm2(hs, enc, temb)
            n = torch.cat([ne, nh], 1)
            ff = blk.ff(n) + w_id * ad.id_ff_adapter(n) + w_mo * ad.motion_ff_adapter(n, c)
            return hs + g * ff[:, L:], enc + eg * ff[:, :L]

        for blk in model.transformer_blocks:
            blk.forward = types.MethodType(reference_forward, blk)
        slow = transformer_forward(model, x, e, t)
        assert torch.allclose(fused, slow, atol=1e-5, rtol=1e-4), (form, (fused - slow).abs().max())
        # the reference embedding matters for the motion adapters (W_cond), and the same c is used per sample
        no_ref = transformer_forward(patched_copy(tr, [DualRealPatch(mod, None)]), x, e, t)
        assert (no_ref - fused).abs().max() > 1e-4


def test_any_block_count_and_width():
    from diffusers import CogVideoXTransformer3DModel

    tr = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4,
                                     time_embed_dim=16, text_embed_dim=32, num_layers=5, sample_width=12,
                                     sample_height=8, sample_frames=9, patch_size=2, max_text_seq_length=16).eval()
    tr.requires_grad_(False)
    cfg = DualRealConfig.for_transformer(tr, groups=2, hidden=8)
    assert (cfg.dim, cfg.num_blocks, cfg.time_embed_dim) == (48, 5, 16)
    mod = DualRealAdapters(cfg)
    assert mod.block_group == [0, 0, 0, 1, 1]
    _randomise(mod)
    x, e, t = torch.randn(1, 3, 4, 8, 12), torch.randn(1, 16, 32), torch.tensor([400])
    out = transformer_forward(patched_copy(tr, [DualRealPatch(mod, torch.randn(1024))]), x, e, t)
    assert out.shape == x.shape and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# gradient mask


def _fake_data(bundle, seed=0, refs=True):
    from dual_adapter.dualreal import DualRealData

    g = torch.Generator().manual_seed(seed)
    return DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g),
                        encode_prompt(bundle, "dog *"), encode_prompt(bundle, MOTION_PROMPT),
                        torch.randn(1, 1024, generator=g) if refs else None, "dog *", MOTION_PROMPT, "test")


@pytest.mark.parametrize("phase", ["identity", "motion"])
def test_gradient_mask_freezes_inactive_adapters(bundle, phase):
    cfg = DualRealConfig.for_transformer(bundle.transformer, groups=2)
    start = DualRealAdapterSet.from_module(DualRealAdapters(cfg))
    _randomise_set = DualRealAdapters(cfg)
    _randomise(_randomise_set, std=0.02)  # non-zero up-projections so every adapter gets a gradient
    start = DualRealAdapterSet.from_module(_randomise_set)
    ratio = 1.0 if phase == "motion" else 0.0
    res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _fake_data(bundle),
                                 DualRealOptions(groups=2, motion_ratio=ratio, motion_batch=2, p_image_zero=0.5),
                                 _fast(1, lr=1e-2, gradient_checkpointing=True), adapters=start)
    assert res.losses[0]["phase"] == phase
    before, after = start.state_dict, res.adapters.state_dict
    frozen = "motion_" if phase == "identity" else "id_"
    active = "id_" if phase == "identity" else "motion_"
    for k in before:
        if f".{frozen}" in k:
            assert torch.equal(before[k], after[k]), f"{k} changed in the {phase} phase"
        elif f".{active}" in k and "condition_linear" not in k:
            assert not torch.equal(before[k], after[k]), f"{k} did not train in the {phase} phase"
    ctrl = [k for k in before if k.startswith("controller.")]
    assert ctrl and all(not torch.equal(before[k], after[k]) for k in ctrl)  # the controller trains in both phases
    if phase == "motion":  # W_cond trains with the reference embedding
        assert not torch.equal(before["transformer_blocks.0.motion_attn_adapter.condition_linear.weight"],
                               after["transformer_blocks.0.motion_attn_adapter.condition_linear.weight"])


def test_gradient_checkpointing_keeps_controller_gradients(bundle):
    """Block 0 computes alpha inside a checkpointed region; every block's use of it must reach the controller."""
    tr = bundle.transformer
    mod = DualRealAdapters(DualRealConfig.for_transformer(tr, groups=2))
    _randomise(mod, std=0.02)
    mod.requires_grad_(True)
    ns = make_noise_scheduler(bundle)
    grads = []
    ref = torch.randn(1, 1024)
    for gc in (False, True):
        model = patched_copy(tr, [DualRealPatch(mod, ref)])
        if gc:
            model.enable_gradient_checkpointing()
        mod.zero_grad(set_to_none=True)
        loss = diffusion_loss(model, ns, torch.randn(1, 3, 4, 8, 12, generator=torch.Generator().manual_seed(1)),
                              encode_prompt(bundle, "dog *"), generator=torch.Generator().manual_seed(2))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4), k
    assert grads[0]["controller.head_out.weight"].abs().sum() > 0


# --------------------------------------------------------------------------------------------
# joint training on real data (one run, shared)


def _load_guitar(frames=9):
    from dual_adapter.media import load_clip

    return load_clip(GUITAR, num_frames=frames, fps=8, short_policy="loop")[0]


@pytest.fixture(scope="module")
def trained(bundle):
    if not GUITAR.exists():
        pytest.skip("../shared/data is not beside the project")
    from dual_adapter.media import load_images

    photos = load_images([DOG / "00.png"])
    clip = _load_guitar()
    enc = build_tiny_reference_encoder()
    steps = 240
    res = train_dualreal(bundle, photos, "dog *", [clip], MOTION_PROMPT, reference_encoder=enc,
                         # posterior mode: the tiny model's random VAE has a posterior std (~1.15) three times the
                         # latents' spread (~0.37), so a fresh sample per step (the default) is mostly noise there
                         options=DualRealOptions(groups=2, motion_batch=1, motion_ratio=0.5, latent_sampling="mode"),
                         train=_fast(steps, lr=3e-3, warmup_steps=10, seed=0))
    from dual_adapter.media import fit_frames
    from dual_adapter.sampling import encode_frames

    target = encode_frames(bundle, fit_frames(clip, 64, 96))
    return types.SimpleNamespace(res=res, clip=clip, photos=photos, enc=enc, target=target,
                                 ref=enc(photos[0][None]), steps=steps)


@needs_data
def test_joint_training_lowers_loss(trained):
    res = trained.res
    assert res.completed and res.steps_done == trained.steps and len(res.losses) == trained.steps
    phases = {r["phase"] for r in res.losses}
    assert phases == {"identity", "motion"}
    losses = [r["loss"] for r in res.losses]
    first, last = sum(losses[:40]) / 40, sum(losses[-40:]) / 40
    assert last < 0.7 * first, (first, last)
    meta = res.adapters.meta
    assert meta["identity_prompt"] == "dog *" and meta["motion_prompt"] == MOTION_PROMPT
    assert meta["uses_reference"] and meta["steps"] == trained.steps


@needs_data
def test_training_leaves_loaded_model_unchanged(bundle, trained):
    fresh = build_tiny("tiny", seed=0)
    sd, ref = bundle.transformer.state_dict(), fresh.transformer.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert not any(p.requires_grad for p in bundle.transformer.parameters())
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    assert all(type(b) is CogVideoXBlock for b in bundle.transformer.transformer_blocks)


@needs_data
def test_sampling_with_adapters_differs_and_memorises_the_clip(bundle, trained):
    from dual_adapter.sampling import sample

    emb = encode_prompt(bundle, MOTION_PROMPT)
    kw = dict(steps=25, cfg=1.0, seed=1, scheduler="ddim")
    without = sample(bundle, emb, **kw)
    with_ad = sample(bundle, emb, patches=[DualRealPatch(trained.res.adapters, trained.ref)], **kw)
    assert (with_ad - without).abs().mean() > 0.05
    mse_with = ((with_ad - trained.target) ** 2).mean().item()
    mse_without = ((without - trained.target) ** 2).mean().item()
    assert mse_with < 0.8 * mse_without, (mse_with, mse_without)
    # (one reference per CFG branch: test_results_fixes.test_one_reference_serves_both_cfg_branches)
    # overrides: identity/motion scale 0 = base model in the zero_init sense is not expected for 'official',
    # but fixed weights must change the output relative to the controller's
    fixed = sample(bundle, emb, patches=[DualRealPatch(trained.res.adapters, trained.ref, fixed_weights=(0.0, 0.2))],
                   **kw)
    assert (fixed - with_ad).abs().mean() > 1e-4


@needs_data
def test_save_load_bit_exact(tmp_path, trained):
    a = trained.res.adapters
    p = save_adapters(a, tmp_path / "a.safetensors")
    b = load_adapters(p)
    assert b.config == a.config and b.state_dict.keys() == a.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    for k in ("base_fingerprint", "steps", "identity_prompt", "motion_prompt", "uses_reference"):
        assert b.meta[k] == a.meta[k], k
    with pytest.raises(DualAdapterError, match="exists"):
        save_adapters(a, p)


@needs_data
def test_stageblender_readout_and_plot(bundle, trained):
    r = stageblender_readout(bundle, trained.res.adapters, "dog * is playing guitar", reference=trained.ref,
                             steps=5, cfg=6.0, seed=0)
    W = torch.tensor(r["identity_weight"])
    assert W.shape == (5, 2) and len(r["timesteps"]) == 5
    assert W.min() >= 0 and W.max() <= 0.2
    assert torch.allclose(W + torch.tensor(r["motion_weight"]), torch.full_like(W, 0.2))
    assert r["group_blocks"] == [(0, 2), (2, 4)]
    assert W.std() > 0  # trained controller: weights move with the step / group
    img = plot_stageblender(r)
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and 0 <= img.min() and img.max() <= 1


# --------------------------------------------------------------------------------------------
# checkpoints: import, interrupt, resume


def test_interrupt_leaves_loadable_checkpoint_and_resume_matches(tmp_path, bundle):
    data = _fake_data(bundle)
    opts = DualRealOptions(groups=2, motion_batch=1)
    full = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data, opts,
                                  _fast(8, lr=1e-2, warmup_steps=2, checkpoint_every=2), out=tmp_path / "full.safetensors")
    out = tmp_path / "run.safetensors"

    def stop_at_5(step, total, info):
        if step == 5:
            raise InterruptedByUser("stop")

    with pytest.raises(InterruptedByUser):
        train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data, opts,
                               _fast(8, lr=1e-2, warmup_steps=2, checkpoint_every=2), out=out, callback=stop_at_5)
    files = run_paths(out)
    part = load_adapters(files["partial"])
    assert part.meta["steps"] == 5 and part.meta["completed"] is False
    assert files["state"].exists()
    assert len(files["losses"].read_text().splitlines()) == 5
    res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data, opts,
                                 _fast(8, lr=1e-2, warmup_steps=2, checkpoint_every=2), out=out, resume=True)
    assert res.completed and res.steps_done == 8 and len(res.losses) == 8
    for k, v in full.adapters.state_dict.items():
        assert torch.allclose(v, res.adapters.state_dict[k], atol=1e-6), k
    assert [r["phase"] for r in res.losses] == [r["phase"] for r in full.losses]


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(bundle):
    photo, clip = torch.rand(40, 60, 3), torch.rand(5, 30, 50, 3)
    with pytest.raises(DualAdapterError, match="needs both.*no subject photo"):
        train_dualreal(bundle, [], "dog *", [clip], MOTION_PROMPT, train=_fast(1))
    with pytest.raises(DualAdapterError, match="needs both.*no motion clip"):
        train_dualreal(bundle, [photo], "dog *", [], MOTION_PROMPT, train=_fast(1))
    other = DualRealAdapterSet.from_module(DualRealAdapters(DualRealConfig(num_blocks=3, dim=48, time_embed_dim=32,
                                                                           groups=1)))
    with pytest.raises(DualAdapterError, match=r"width 48 \(model: 64\).*3 blocks \(model: 4\)"):
        patched_copy(bundle.transformer, [DualRealPatch(other)])
    mod = DualRealAdapters(DualRealConfig.for_transformer(bundle.transformer, groups=2))
    with pytest.raises(DualAdapterError, match="768-d"):
        DualRealPatch(mod, torch.randn(1, 768))
    with pytest.raises(DualAdapterError, match="768-d"):
        DualRealPatch(mod, types.SimpleNamespace(image_embeds=torch.randn(1, 768)))
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from dual_adapter.reference import ReferenceEncoder

    small = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                           num_attention_heads=2, image_size=16, patch_size=8,
                                                           projection_dim=768))
    with pytest.raises(DualAdapterError, match="768-d"):
        ReferenceEncoder(small)
    with pytest.raises(DualAdapterError, match="768-d"):  # a foreign encoder that returns 768-d embeddings
        prepare_dualreal_data(bundle, [photo], "dog *", [clip], MOTION_PROMPT,
                              reference_encoder=lambda im: torch.randn(im.shape[0], 768))
    with pytest.raises(DualAdapterError, match="motion_ratio"):
        train_dualreal(bundle, [photo], "dog *", [clip], MOTION_PROMPT, options=DualRealOptions(motion_ratio=1.5))


def test_photos_and_clips_of_other_sizes_are_resized(bundle):
    photos = [torch.rand(40, 60, 3), torch.rand(100, 30, 3), torch.rand(1, 64, 96, 3)]
    clips = [torch.rand(5, 30, 50, 3), torch.rand(13, 120, 80, 3)]
    d = prepare_dualreal_data(bundle, photos, "dog *", clips, MOTION_PROMPT,
                              reference_encoder=build_tiny_reference_encoder())
    assert d.photo_latents.shape == (3, 1, 4, 8, 12)
    assert d.clip_latents.shape == (2, 3, 4, 8, 12)  # 9 frames (looped / trimmed) -> 3 latent frames
    assert d.clip_references.shape == (2, 1024)


def test_more_groups_than_blocks_are_capped(bundle):
    res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _fake_data(bundle),
                                 DualRealOptions(groups=7, motion_batch=1), _fast(1))
    assert res.adapters.config.groups == 4  # the paper's 7 groups need >= 7 blocks; tiny has 4
    with pytest.raises(DualAdapterError, match="groups"):
        DualRealConfig(num_blocks=4, dim=64, time_embed_dim=32, groups=7).validate()


def test_no_reference_encoder_trains_without_w_cond(bundle):
    """Without an encoder the motion adapters' W_cond term is skipped: W_cond gets no gradient and stays put."""
    data = _fake_data(bundle, refs=False)
    cfg = DualRealConfig.for_transformer(bundle.transformer, groups=2)
    m = DualRealAdapters(cfg)
    _randomise(m, std=0.02)
    start = DualRealAdapterSet.from_module(m)
    res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data,
                                 DualRealOptions(groups=2, motion_ratio=1.0, motion_batch=1),
                                 _fast(2, lr=1e-2, weight_decay=0.0), adapters=start)
    k = "transformer_blocks.0.motion_attn_adapter.condition_linear.weight"
    assert torch.equal(start.state_dict[k], res.adapters.state_dict[k])
    assert not torch.equal(start.state_dict[k.replace("condition", "down")],
                           res.adapters.state_dict[k.replace("condition", "down")])
    assert res.adapters.meta["uses_reference"] is False


# --------------------------------------------------------------------------------------------
# CLI and nodes


@needs_data
def test_cli_train_dualreal_and_generate_hooks(tmp_path, bundle, capsys, caplog):
    from dual_adapter.cli import main
    from dual_adapter.commands import dualreal as cmd

    out = tmp_path / "adapters.safetensors"
    rc = main(["train-dualreal", "--model", "tiny", "--subject", str(DOG / "00.png"), str(DOG / "01.png"),
               "--identity-prompt", "dog *", "--motion", str(GUITAR), "--motion-prompt", MOTION_PROMPT,
               "--steps", "4", "--warmup", "0", "--groups", "2", "--motion-batch", "1", "--checkpoint-every", "2",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    a = load_adapters(out)
    assert a.meta["steps"] == 4 and a.meta["reference_encoder"] == "tiny"
    run = tmp_path / "runs" / "dualreal" / "adapters_00001_"
    lines = (run / "losses.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "loss" in json.loads(lines[0])
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "loss.png", "losses.jsonl"]
    assert main(["train-dualreal", "--subject", str(DOG), "--identity-prompt", "dog *", "--motion", str(GUITAR),
                 "--motion-prompt", "m", "--steps", "1", "--out", str(out)]) == 2  # refuses to overwrite
    args = Namespace(dualreal=str(out), reference_image=str(DOG / "00.png"), reference_embedding=None,
                     dualreal_reference_encoder=None, dualreal_identity_scale=1.0, dualreal_motion_scale=1.0,
                     dualreal_fixed_weights=None)
    patches = cmd.generate_patches(args, bundle)
    assert len(patches) == 1 and patches[0].reference.shape == (1, 1, 1024)
    # another encoder than the one W_cond was trained on (tiny) is used as asked, with a warning
    with caplog.at_level(logging.WARNING, logger="dual_adapter"):
        other = cmd.generate_patches(Namespace(**dict(vars(args), dualreal_reference_encoder="mini")), bundle)
    assert "built-in 'tiny' reference encoder" in caplog.text
    assert not torch.allclose(other[0].reference, patches[0].reference)
    # adapters trained with a CLIP_VISION in ComfyUI record no folder: --reference-image needs --reference-encoder
    a = load_adapters(out)
    comfy = tmp_path / "comfy.safetensors"
    save_adapters(DualRealAdapterSet(a.config, a.state_dict, dict(a.meta, reference_encoder="comfy:clip_vision")),
                  comfy)
    with pytest.raises(DualAdapterError, match="--reference-encoder"):
        cmd.generate_patches(Namespace(**dict(vars(args), dualreal=str(comfy))), bundle)
    assert cmd.generate_patches(Namespace(dualreal=None, reference_image=None, reference_embedding=None), bundle) == []
    # generate's parser accepts the options
    from dual_adapter.cli import build_parser

    ns = build_parser().parse_args(["generate", "--prompt", "p", "--out", "x.mp4", "--dualreal", str(out),
                                    "--reference-image", "p.png", "--dualreal-fixed-weights", "0.1", "0.1"])
    assert ns.dualreal == str(out) and ns.dualreal_fixed_weights == [0.1, 0.1]


@needs_data
def test_nodes_train_apply_save_load_plot(bundle, trained, out_dir, monkeypatch, caplog):
    from dual_adapter.patches import PatchedModel
    from nodes import dualreal_nodes as N

    model = PatchedModel(bundle)
    subject = torch.stack([trained.photos[0]])
    motion = trained.clip.clone()
    with torch.inference_mode():  # as ComfyUI runs nodes
        adapters, curve = N.DualRealTrain().train(model, subject, "dog *", motion, MOTION_PROMPT, steps=3, lr=1e-3,
                                                  motion_ratio=0.5, hidden_width=16, groups=2, form="zero_init",
                                                  seed=0, name="t", warmup_steps=0, checkpoint_every=2)
    assert isinstance(adapters, DualRealAdapterSet) and adapters.config.hidden == 16 and adapters.meta["steps"] == 3
    # no clip_vision: reference_encoder "auto" takes the tiny model's built-in encoder (the random tiny CLIP)
    assert adapters.meta["reference_encoder"] == "tiny" and adapters.meta["uses_reference"] is True
    with torch.inference_mode():
        no_enc, _ = N.DualRealTrain().train(model, subject, "dog *", motion, MOTION_PROMPT, steps=1, lr=1e-3,
                                            motion_ratio=0.5, hidden_width=16, groups=2, form="zero_init", seed=0,
                                            name="t_none", warmup_steps=0, reference_encoder="none")
    assert no_enc.meta["uses_reference"] is False  # W_cond left untrained, as asked
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    run = out_dir / "runs" / "dualreal" / "t_00001_"
    assert (run / "t.safetensors").exists()  # the finished run's file; no checkpoint or state left
    assert not (run / "checkpoint.safetensors").exists() and not (run / "state.safetensors").exists()
    assert torch.equal(motion, trained.clip)  # inputs not mutated

    class FakeClipVision:  # ComfyUI's CLIP_VISION: encode_image(image) -> CLIP_VISION_OUTPUT
        def encode_image(self, image, crop=True):
            return types.SimpleNamespace(image_embeds=trained.enc(image))

    a = trained.res.adapters
    with caplog.at_level(logging.WARNING, logger="dual_adapter"):
        (m1,) = N.DualRealApply().apply(model, a, reference_image=subject, clip_vision=FakeClipVision())
    # used as given, but warned: these adapters' W_cond learned from the built-in "tiny" encoder
    assert "built-in 'tiny' reference encoder" in caplog.text
    (m2,) = N.DualRealApply().apply(model, a, clip_vision_output=types.SimpleNamespace(image_embeds=trained.ref))
    assert model.patches == () and len(m1.patches) == 1
    assert torch.allclose(m1.patches[0].reference, m2.patches[0].reference)
    # without clip_vision the built-in encoder the adapters record ("tiny") encodes the photo: the same embedding
    assert a.meta["reference_encoder"] == "tiny"
    (m3,) = N.DualRealApply().apply(model, a, reference_image=subject)
    assert torch.allclose(m3.patches[0].reference, m1.patches[0].reference)
    clip_trained = DualRealAdapterSet(a.config, a.state_dict, dict(a.meta, reference_encoder="/models/clip_vision_h"))
    with pytest.raises(DualAdapterError, match="clip_vision"):  # a real CLIP encoder is not built in
        N.DualRealApply().apply(model, clip_trained, reference_image=subject)
    no_ref = DualRealAdapterSet(a.config, a.state_dict, dict(a.meta, uses_reference=False))
    (m4,) = N.DualRealApply().apply(model, no_ref, reference_image=subject)  # warned, not used
    assert m4.patches[0].reference is None
    res = N.DualRealSave().save(a, "dualreal/dog_guitar")
    saved = Path(res["ui"]["text"][0])
    assert saved.exists() and saved.parent == out_dir / "dualreal"
    models = Path(str(out_dir)).parent / "models" / "dualreal"
    models.mkdir(parents=True)
    saved_copy = models / "dog.safetensors"
    saved_copy.write_bytes(saved.read_bytes())
    assert "dog.safetensors" in N.DualRealLoad.INPUT_TYPES()["required"]["adapters_name"][0]
    (loaded,) = N.DualRealLoad().load("dog.safetensors")
    assert all(torch.equal(loaded.state_dict[k], a.state_dict[k]) for k in a.state_dict)
    img, js = N.DualRealStageBlenderPlot().plot(model, a, "dog * is playing guitar", seed=0, steps=3, cfg=6.0)
    assert img.shape[0] == 1 and len(json.loads(js)["identity_weight"]) == 3
