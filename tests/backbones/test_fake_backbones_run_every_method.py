"""The interface criterion (docs/backbones.md, "Adding a backbone"): a fake DiT and a fake U-Net, defined in the tests
(tests/fakes.py) and registered through :func:`dual_adapter.backbones.register_backbone`, run every method through
the :class:`~dual_adapter.backbones.base.VideoBackbone` interface alone: TAP training on the U-Net's temporal
attention, the DualReal patch and its training on the DiT, CustomTTT's prompt influence and TTT merge on both. (LoRA
round trips through every file layout on both fakes: tests/lora/test_lora_one_mechanism.py.)"""
from __future__ import annotations

import pytest
import torch

from fakes import FakeDiTBackbone, FakeUNetBackbone, FakeUNetWithImageMode, registered, time_features
from helpers import randomise as _randomise, stageblender_alpha

from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dit():
    with registered(FakeDiTBackbone) as bb:
        yield bb


@pytest.fixture
def unet():
    with registered(FakeUNetBackbone) as bb:
        yield bb


@pytest.fixture(params=["dit", "unet"])
def fake(request):
    with registered({"dit": FakeDiTBackbone, "unet": FakeUNetBackbone}[request.param]) as bb:
        yield bb


def _moving_clip(frames=3, size=32):
    """A bright square moving right, ``[F, H, W, 3]`` in 0..1."""
    clip = torch.zeros(frames, size, size, 3)
    for i in range(frames):
        clip[i, 8:24, 4 + 6 * i: 16 + 6 * i] = torch.tensor([0.9, 0.5, 0.1])
    return clip


def _fixed_loss(bb, denoiser, latents, text, draws=8, seed=0):
    """The backbone's training objective averaged over fixed draws of ``t`` and the noise."""
    g = torch.Generator().manual_seed(seed)
    sched = bb.noise_scheduler()
    t = torch.randint(0, 1000, (draws,), generator=g)
    eps = torch.randn((draws, *latents.shape[1:]), generator=g)
    with torch.no_grad():
        return float(bb.training_loss(denoiser, sched, latents.expand(draws, *latents.shape[1:]), text, timesteps=t,
                                      noise=eps))


def test_the_entry_points_ask_the_backbone_which_methods_it_has(dit, unet):
    """The one entry per method (:mod:`dual_adapter.dispatch`, used by the nodes) lets a new DiT with block adapters
    run DualReal and CustomTTT without being named there; a U-Net without block adapters is refused DualReal."""
    from dual_adapter import dispatch

    assert dit.has_block_adapters() and not unet.has_block_adapters()
    for method in ("dualreal", "CustomTTT", "motion LoRA"):
        dispatch.check_method(dit, method)
    dispatch.check_method(unet, "motion LoRA")
    with pytest.raises(DualAdapterError, match=r"^model: dualreal is defined on CogVideoX.*'tiny-fakeunet' is Fake U-Net"):
        dispatch.check_method(unet, "dualreal")
    with pytest.raises(DualAdapterError, match=r"appearance highway is defined on ZeroScope"):
        dispatch.check_method(dit, "appearance highway")

# ------------------------------------------------------------------------------ 1. TAP on the U-Net's temporal attention


def test_tap_trains_the_fake_unets_temporal_attention_and_only_lora_weights(unet):
    from dual_adapter import dispatch

    before = {k: v.clone() for k, v in unet.denoiser.state_dict().items()}
    clip, prompt = _moving_clip(), "a square moves right"
    lora, losses = dispatch.train_motion_lora(unet, [clip], prompt, rank=4, dropout=0.0, lr=1e-2, steps=30, seed=0,
                                              gradient_checkpointing=False)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor([r["loss"] for r in losses])))
    temporal = unet.attention_modules("temporal")
    # the published preset (k_out: to_k and to_out.0) of every temporal attention, never a value projection
    assert sorted(lora.modules) == sorted(f"{a}.{p}" for a in temporal for p in ("to_k", "to_out.0"))
    assert lora.prefix == "unet" and not any(m.endswith("to_v") for m in lora.modules)
    assert all(torch.equal(before[k], v) for k, v in unet.denoiser.state_dict().items())  # the base never changes
    # the LoRA, applied through the one entry, lowers the training objective on the clip
    x0, text = unet.encode_frames(clip), unet.encode_prompt(prompt)
    model = patched_copy(unet.denoiser, [dispatch.lora_patch(lora, unet)])
    assert _fixed_loss(unet, model, x0, text) < 0.9 * _fixed_loss(unet, unet.denoiser, x0, text)
    # and a LoRA of the TAP preset (to_q, to_k) changes no value projection's output either
    tap, _ = dispatch.train_motion_lora(unet, [clip], prompt, preset="tap", rank=4, lr=1e-2, steps=2)
    assert sorted(tap.modules) == sorted(f"{a}.{p}" for a in temporal for p in ("to_q", "to_k"))


def test_motiondirectors_spatial_path_runs_where_the_backbone_has_an_image_mode(unet):
    from dual_adapter import unet_motion as UM

    clip, prompt = _moving_clip(), "a square moves right"
    cfg = UM.UNetMotionTrainConfig(rank=2, steps=3, spatial_skip_prob=0.0)  # the published default: spatial path on
    with pytest.raises(DualAdapterError, match="spatial_path"):  # the interface's default: no spatial transformers
        UM.train_unet_motion_lora(unet, [clip], prompt, cfg)
    with registered(FakeUNetWithImageMode) as bb:
        motion, spatial, losses = UM.train_unet_motion_lora(bb, [clip], prompt, cfg)
        assert all("loss_spatial" in r for r in losses)
        assert sorted(spatial.modules) == sorted(f"{a}.{p}" for a in bb.attention_modules("spatial")
                                                 for p in ("to_q", "to_k", "to_v", "to_out.0"))
        assert set(motion.modules) == {f"{a}.{p}" for a in bb.attention_modules("temporal") for p in ("to_k", "to_out.0")}


# ------------------------------------------------------------------------------ 2. DualReal on the DiT


def _dit_inputs(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 4, 4, generator=g), bb.encode_prompt(["dog * runs", "a person"]), torch.tensor([700, 150])


def test_zero_initialised_dualreal_adapters_leave_the_fake_dit_bit_identical(dit):
    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig, DualRealPatch

    x, e, t = _dit_inputs(dit)
    base = dit.predict(x, t, e)
    cfg = DualRealConfig.for_transformer(dit.denoiser, form="zero_init", groups=2)
    assert (cfg.dim, cfg.num_blocks, cfg.time_embed_dim) == dit.adapter_dims()
    mod = DualRealAdapters(cfg)
    for ref in (None, torch.randn(1, 1024)):
        model = patched_copy(dit.denoiser, [DualRealPatch(mod, ref)])
        assert torch.equal(dit.predict(x, t, e, denoiser=model), base)
    own = {k for k in model.state_dict() if ".adapters." not in k and ".controller." not in k}
    assert own == set(dit.denoiser.state_dict())  # the blocks' weights keep their module paths
    _randomise(mod, 0.05)
    assert not torch.allclose(dit.predict(x, t, e, denoiser=model), base)  # trained adapters do act


def test_stageblender_weights_on_the_fake_dit_follow_its_formula(dit):
    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig, DualRealPatch, find_context

    x, e, t = _dit_inputs(dit)
    mod = DualRealAdapters(DualRealConfig.for_transformer(dit.denoiser, groups=2))
    _randomise(mod, 0.2)
    rec = []
    model = patched_copy(dit.denoiser, [DualRealPatch(mod, recorder=rec)])
    dit.predict(x, t, e, denoiser=model)
    d = dit.denoiser  # block 0's inputs, as the fake's forward makes them
    tokens = d.patch_embed(x.permute(0, 1, 3, 4, 2).reshape(2, -1, 4))
    pool = torch.maximum(d.text_proj(e).amax(1), tokens.amax(1))
    alpha = stageblender_alpha(mod.controller, pool, d.time_embed(time_features(t)))
    assert len(rec) == 1 and torch.allclose(rec[0], alpha.detach(), atol=1e-6)
    assert not torch.allclose(rec[0][0], rec[0][1])  # per sample
    ctx = find_context(model)
    for i, g in enumerate(mod.block_group):  # block i: w_id = alpha[g(i)], w_mo = 0.2 - alpha[g(i)]
        w_id, w_mo = ctx.weights(g, 2, "cpu")
        assert torch.allclose(w_id.flatten(), alpha[:, g].detach(), atol=1e-6)
        assert torch.allclose(w_mo.flatten(), 0.2 - alpha[:, g].detach(), atol=1e-6)


def _dualreal_data(bb):
    from dual_adapter.dualreal import DualRealData

    photo = torch.zeros(1, 32, 32, 3)
    photo[0, 8:24, 8:24] = torch.tensor([0.2, 0.4, 0.9])
    g = torch.Generator().manual_seed(0)
    return DualRealData(bb.encode_frames(photo), bb.encode_frames(_moving_clip()), bb.encode_prompt("dog *"),
                        bb.encode_prompt("a square moves right"), torch.randn(1, 1024, generator=g), "dog *",
                        "a square moves right", "test")


def test_dualreal_training_on_the_fake_dit_masks_the_inactive_set_and_lowers_the_loss(dit):
    from dual_adapter.dualreal import (DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealOptions,
                                       DualRealPatch, train_dualreal_on_data)
    from dual_adapter.training import TrainConfig

    mod = DualRealAdapters(DualRealConfig.for_transformer(dit.denoiser, groups=2))
    _randomise(mod, 0.02)
    start = DualRealAdapterSet.from_module(mod)
    data = _dualreal_data(dit)
    opts = DualRealOptions(groups=2, motion_ratio=0.5, motion_batch=1)

    def run(steps):  # constant lr: the first k steps of any run are the same steps
        tc = TrainConfig(steps=steps, lr=1e-2, weight_decay=0.1, optimizer="adamw", lr_schedule="constant",
                         warmup_steps=0, checkpoint_every=0, gradient_checkpointing=False, seed=0)
        return train_dualreal_on_data(dit.denoiser, dit.scheduler_config, data, opts, tc, adapters=start)

    states = [start.state_dict]
    for k in range(1, 5):
        res = run(k)
        states.append(res.adapters.state_dict)
    phases = [r["phase"] for r in res.losses]
    # the set trained at step 1 carries AdamW momentum into step 2, where it is the inactive one
    assert phases[0] != phases[1] and {"identity", "motion"} == set(phases), phases
    for k, phase in enumerate(phases, 1):  # paper eqs. 4-6: the inactive set is bit-identical after every step
        frozen, active = (".motion_", ".id_") if phase == "identity" else (".id_", ".motion_")
        for key, v in states[k - 1].items():
            if frozen in key:
                assert torch.equal(v, states[k][key]), f"step {k} ({phase}): {key} changed"
            elif active in key and "condition_linear" not in key:
                assert not torch.equal(v, states[k][key]), f"step {k} ({phase}): {key} did not train"
    assert res.adapters.meta["base_fingerprint"] == dit.fingerprint()

    # a few more steps of each phase lower the objective on both data sets
    trained = run(30).adapters
    ref = data.clip_references[:1].unsqueeze(1)
    for x0, text, c in ((data.photo_latents, data.identity_embeds, None), (data.clip_latents, data.motion_embeds, ref)):
        was = _fixed_loss(dit, patched_copy(dit.denoiser, [DualRealPatch(start, c)]), x0, text)
        now = _fixed_loss(dit, patched_copy(dit.denoiser, [DualRealPatch(trained, c)]), x0, text)
        assert now < 0.95 * was, (was, now)


# ------------------------------------------------------------------------------ 3. CustomTTT on both


def test_prompt_influence_scores_every_text_entry_block_of_both_fakes(fake):
    from dual_adapter.customttt import prompt_influence, text_blocks

    n = len(text_blocks(fake))
    assert n == len([b for b in fake.blocks() if b.has_text]) and n >= 3
    kw = dict(timesteps=(300, 700), seeds=(0,), num_frames=3, height=32, width=32)
    res = prompt_influence(fake, {"appearance": "dog *", "motion": "a square moves right"}, "a photo", **kw)
    assert res.groups == [[i] for i in range(n)]  # one score per block text enters
    for c in ("appearance", "motion"):
        assert len(res.scores[c]) == n and all(torch.isfinite(torch.tensor(res.scores[c])))
        assert any(abs(s) > 1e-3 for s in res.scores[c]) and len(res.recommended[c]) == 2
    # the concept injected at every text block at once is the concept run: score 1, closeness 1
    every = prompt_influence(fake, "dog *", "a photo", groups=[list(range(n))], top_k=1, **kw)
    assert every.scores["concept"][0] == pytest.approx(1.0, abs=1e-5)
    assert every.closeness["concept"][0] == pytest.approx(1.0, abs=1e-3)


def _random_lora(bb, modules, seed, rank=2):
    from dual_adapter.lora import LoraFile

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in modules:
        lin = bb.denoiser.get_submodule(m)
        sd[f"{bb.lora_prefix}.{m}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.3
        sd[f"{bb.lora_prefix}.{m}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * 0.3
    return LoraFile.from_state_dict(sd, {"backbone": bb.kind}, alphas={m: float(rank) for m in modules})


def _two_loras(bb):
    """An appearance LoRA on the first text blocks' attentions, a motion LoRA on the motion attention (TAP's
    projections); they share the modules of one block where both reach it."""
    text = [b.name for b in bb.blocks() if b.has_text]
    cross = [n for n in bb.attention_modules("cross") if n.startswith(tuple(text[:2]))]
    motion = list(bb.attention_modules(bb.motion_role))
    appearance = [f"{a}.{p}" for a in cross for p in ("to_q", "to_k", "to_v")] + [f"{motion[0]}.to_q"]
    return _random_lora(bb, appearance, 1), _random_lora(bb, [f"{a}.{p}" for a in motion for p in ("to_q", "to_k")], 2)


def test_ttt_merge_on_both_fakes_lowers_its_objective_and_changes_only_lora_weights(fake):
    from dual_adapter.customttt import TTTConfig, merge_loras, ttt_merge

    app, mot = _two_loras(fake)
    base = {k: v.clone() for k, v in fake.denoiser.state_dict().items()}
    inputs = {id(lf): {k: v.clone() for k, v in lf.state_dict.items()} for lf in (app, mot)}
    cfg = TTTConfig(steps=12, teacher_steps=2, teacher_schedule=4, teacher_cfg=2.0, lr=1e-2, weight_decay=0.0,
                    eval_draws=6, gradient_checkpointing=False, num_frames=3, height=32, width=32)
    res = ttt_merge(fake, app, mot, appearance_prompt="dog *", motion_prompt="a square moves right",
                    prompt="dog * moves right", config=cfg)
    assert res.train.completed and res.eval["after"]["loss"] < res.eval["before"]["loss"], res.eval
    assert set(res.references) == {"appearance", "motion"}
    assert all(r.shape == tuple(fake.latent_shape(1, 3, 32, 32)) for r in res.references.values())
    # only LoRA weights changed: the base and the input LoRAs are as they were, the merged LoRA is not their sum
    assert all(torch.equal(base[k], v) for k, v in fake.denoiser.state_dict().items())
    assert all(torch.equal(inputs[id(lf)][k], v) for lf in (app, mot) for k, v in lf.state_dict.items())
    exact = merge_loras([app, mot])
    lf = res.lora
    assert lf.prefix == fake.lora_prefix and sorted(lf.modules) == sorted(exact.modules)
    assert any(not torch.equal(lf.state_dict[k], exact.state_dict[k]) for k in exact.state_dict)
    # with no TTT step the result is the exact merge of the two inputs
    none = ttt_merge(fake, app, mot, appearance_prompt="dog *", motion_prompt="a square moves right",
                     prompt="dog * moves right", config=TTTConfig(steps=0, num_frames=3, height=32, width=32)).lora
    assert all(torch.allclose(none.state_dict[k], v, atol=1e-6) for k, v in exact.state_dict.items())
