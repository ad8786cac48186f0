"""DualReal's recipe checked against independent computations: the authors' checkpoint names, the StageBlender
formula, one reference for both CFG branches, the gradient mask over phase switches, adapters without a
trained reference, and the authors' defaults (native consecutive frames, a posterior sample per step)."""
from __future__ import annotations

import logging
import types

import pytest
import torch

from dual_adapter.backbones.cogvideox import encode_prompt, transformer_forward
from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy

from helpers import (
    forward_inputs as _inputs,
    fresh_tiny,  # noqa: F401  (the fixture bundle: a tiny model of this module's own)
    randomise as _randomise,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def _fake_data(bundle, refs=True, seed=0):
    from dual_adapter.dualreal import DualRealData

    g = torch.Generator().manual_seed(seed)
    return DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g),
                        encode_prompt(bundle, "dog *"), encode_prompt(bundle, "a person is playing guitar"),
                        torch.randn(1, 1024, generator=g) if refs else None, "dog *", "a person is playing guitar",
                        "test")


def test_reference_is_ignored_for_adapters_without_trained_w_cond(bundle, caplog):
    from dual_adapter.dualreal import DualRealOptions, stageblender_readout, train_dualreal_on_data
    from dual_adapter.training import TrainConfig
    from nodes import dualreal_nodes as N
    from dual_adapter.patches import PatchedModel

    fast = TrainConfig(steps=1, warmup_steps=0, checkpoint_every=0, gradient_checkpointing=False)
    with caplog.at_level(logging.WARNING):
        res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _fake_data(bundle, refs=False),
                                     DualRealOptions(groups=2, motion_batch=1), fast)
    assert "W_cond stays untrained" in caplog.text and "--reference-encoder" in caplog.text
    a = res.adapters
    assert a.meta["w_cond_trained"] is False and a.meta["uses_reference"] is False
    with_ref = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _fake_data(bundle),
                                      DualRealOptions(groups=2, motion_batch=1), fast).adapters
    assert with_ref.meta["w_cond_trained"] is True
    # the node and the plot do what the CLI does: ignore the reference, with a warning
    ref = types.SimpleNamespace(image_embeds=torch.randn(1, 1024))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (m,) = N.DualRealApply().apply(PatchedModel(bundle), a, clip_vision_output=ref)
    assert m.patches[-1].reference is None and "ignored" in caplog.text
    (m2,) = N.DualRealApply().apply(PatchedModel(bundle), with_ref, clip_vision_output=ref)
    assert m2.patches[-1].reference is not None
    kw = dict(steps=2, cfg=6.0, seed=0)
    r_ref = stageblender_readout(bundle, a, "dog *", reference=ref, **kw)
    r_none = stageblender_readout(bundle, a, "dog *", reference=None, **kw)
    assert r_ref == r_none  # the random W_cond never runs


def test_cli_train_dualreal_without_encoder_warns_loudly(tmp_path, capsys):
    from dual_adapter.cli import main
    from dual_adapter.media import write_video
    from PIL import Image

    Image.fromarray((torch.rand(64, 96, 3) * 255).byte().numpy()).save(tmp_path / "p.png")
    write_video(torch.rand(9, 64, 96, 3), tmp_path / "c.mp4")
    rc = main(["train-dualreal", "--model", "tiny", "--subject", str(tmp_path / "p.png"), "--identity-prompt", "dog *",
               "--motion", str(tmp_path / "c.mp4"), "--motion-prompt", "a person", "--steps", "1", "--warmup", "0",
               "--groups", "2", "--motion-batch", "1", "--reference-encoder", "none",
               "--out", str(tmp_path / "a.safetensors")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "WARNING" in err and "W_cond stays untrained" in err and "--reference-encoder FOLDER" in err


def _stageblender_by_hand(P: dict, pool, temb, scale=0.2):
    """docs/dualreal.md, StageBlender, written from the text with the authors' tensor names."""
    import torch.nn.functional as F

    lin = lambda x, n: x @ P[f"{n}.weight"].float().T + P[f"{n}.bias"].float()  # noqa: E731
    c = lin(pool, "channel_encoder.0")                                   # Linear(D -> T)
    shift, sc, gate = lin(F.silu(temb), "timestep_encoder.1").chunk(3, -1)  # Linear(T -> 3T)(SiLU(temb))
    ln = F.layer_norm(c, (c.shape[-1],), P["norm.weight"].float(), P["norm.bias"].float(), eps=1e-5)
    f = ln * (1 + sc) + shift
    f = lin(F.gelu(lin(f, "fuse_proj"), approximate="tanh"), "fuse_proj_down") + gate * c
    z = torch.sigmoid(lin(torch.relu(lin(torch.relu(f), "fusion_net.1")), "fusion_net.3"))
    return scale * z


def _authors_adapter_pth(D=64, T=32, n=2, L=4, h=64, seed=0) -> dict:
    """An adapter.pth as the authors' code saves it: every trainable tensor under its own name, bf16
    nn.Parameters (names written out from docs/dualreal.md, not derived from this package's map)."""
    g = torch.Generator().manual_seed(seed)
    P = lambda *s: torch.nn.Parameter((torch.randn(*s, generator=g) * 0.05).to(torch.bfloat16))  # noqa: E731
    sd = {}
    for i in range(L):
        for ad in ("id_attn_adapter", "id_ff_adapter", "motion_attn_adapter", "motion_ff_adapter"):
            sd[f"transformer_blocks.{i}.{ad}.down_linear.weight"] = P(h, D)
            sd[f"transformer_blocks.{i}.{ad}.down_linear.bias"] = P(h)
            sd[f"transformer_blocks.{i}.{ad}.up_linear.weight"] = P(D, h)
            sd[f"transformer_blocks.{i}.{ad}.up_linear.bias"] = P(D)
            if ad.startswith("motion_"):
                sd[f"transformer_blocks.{i}.{ad}.condition_linear.weight"] = P(D, 1024)
                sd[f"transformer_blocks.{i}.{ad}.condition_linear.bias"] = P(D)
    ctrl = {"controller.channel_encoder.0": (T, D), "controller.timestep_encoder.1": (3 * T, T),
            "controller.norm": None, "controller.fuse_proj": (4 * T, T), "controller.fuse_proj_down": (T, 4 * T),
            "controller.fusion_net.1": (128, T), "controller.fusion_net.3": (n, 128)}
    for name, shape in ctrl.items():
        if shape is None:  # LayerNorm(T)
            sd[f"{name}.weight"] = torch.nn.Parameter((1 + torch.randn(T, generator=g) * 0.1).to(torch.bfloat16))
            sd[f"{name}.bias"] = P(T)
        else:
            sd[f"{name}.weight"] = P(*shape)
            sd[f"{name}.bias"] = P(shape[0])
    return sd


def test_import_authors_adapter_pth_literal_names(tmp_path, bundle):
    from dual_adapter.dualreal import import_official

    sd = _authors_adapter_pth()
    assert len([k for k in sd if k.startswith("controller.")]) == 14  # 7 controller tensors x (weight, bias)
    path = tmp_path / "adapter.pth"
    torch.save(sd, path)
    imp = import_official(path)
    assert imp.config.form == "official" and (imp.config.num_blocks, imp.config.dim, imp.config.groups,
                                              imp.config.time_embed_dim, imp.config.hidden) == (4, 64, 2, 32, 64)
    # adapters: the same names, values as saved (bf16 -> float exactly)
    for k, v in sd.items():
        if k.startswith("transformer_blocks."):
            assert torch.equal(imp.state_dict[k], v.detach().float()), k
    # controller: the imported StageBlender computes the docs/dualreal.md formula on the authors' tensors
    mod = imp.to_module()
    g = torch.Generator().manual_seed(1)
    pool, temb = torch.randn(3, 64, generator=g), torch.randn(3, 32, generator=g)
    authors_ctrl = {k[len("controller."):]: v.detach() for k, v in sd.items() if k.startswith("controller.")}
    want = _stageblender_by_hand(authors_ctrl, pool, temb)
    with torch.no_grad():
        got = mod.controller(pool, temb)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert (want - 0.1).abs().max() > 1e-3  # non-trivial weights: a swapped tensor would show
    # and the imported set runs on the model (W_cond with a reference)
    x, e, t = _inputs(bundle)
    out = transformer_forward(patched_copy(bundle.transformer, [DualRealPatch(imp, torch.randn(1, 1024))]), x, e, t)
    assert torch.isfinite(out).all()
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DualAdapterError, match="no DualReal adapter tensors"):
        import_official(tmp_path / "bad.pth")


def test_stageblender_formula_matches_an_independent_computation():
    from dual_adapter.dualreal import StageBlender

    sb = StageBlender(48, 24, groups=3)
    _randomise(sb, std=0.3, seed=2)
    with torch.no_grad():
        sb.norm.weight.add_(1.0)
    names = {"pool_proj": "channel_encoder.0", "time_mod": "timestep_encoder.1", "norm": "norm",
             "mlp_in": "fuse_proj", "mlp_out": "fuse_proj_down", "head_hidden": "fusion_net.1",
             "head_out": "fusion_net.3"}
    P = {}
    for k, v in sb.state_dict().items():
        mod, _, wb = k.rpartition(".")
        P[f"{names[mod]}.{wb}"] = v
    g = torch.Generator().manual_seed(5)
    pool, temb = torch.randn(4, 48, generator=g), torch.randn(4, 24, generator=g)
    with torch.no_grad():
        got = sb(pool, temb)
    want = _stageblender_by_hand(P, pool, temb)
    assert got.shape == (4, 3) and torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert want.std() > 1e-2  # weights differ across samples and groups


def test_one_reference_serves_both_cfg_branches(bundle):
    """The CFG batch is [negative; positive]: each branch must see exactly the reference of its own sample.
    Compared with separate batch-1 forwards (a broadcast that drops, zeroes or interleaves c fails)."""

    tr = bundle.transformer
    mod = DualRealAdapters(DualRealConfig.for_transformer(tr, groups=2))
    _randomise(mod, std=0.05)
    g = torch.Generator().manual_seed(7)
    c1, c2 = torch.randn(1, 1024, generator=g), torch.randn(1, 1024, generator=g)
    x = torch.randn(1, 3, 4, 8, 12, generator=g)
    neg, pos = encode_prompt(bundle, ""), encode_prompt(bundle, "dog * is playing guitar")
    t = torch.tensor([600])

    def fwd(ref, xs, es, ts):
        return transformer_forward(patched_copy(tr, [DualRealPatch(mod, ref)]), xs, es, ts)

    both = fwd(c1, torch.cat([x, x]), torch.cat([neg, pos]), t.repeat(2))
    sep = torch.cat([fwd(c1, x, neg, t), fwd(c1, x, pos, t)])
    assert torch.allclose(both, sep, atol=1e-5), (both - sep).abs().max()
    other = torch.cat([fwd(c2, x, neg, t), fwd(c2, x, pos, t)])
    assert (both - other).abs().max() > 1e-3  # the reference matters in both branches
    mixed = torch.cat([fwd(None, x, neg, t), fwd(c1, x, pos, t)])
    assert (both[:1] - mixed[:1]).abs().max() > 1e-3  # the negative branch is not run without c
    # batch 2 with CFG: [neg_1, neg_2, pos_1, pos_2] must use [c1, c2, c1, c2]
    x2 = torch.randn(2, 3, 4, 8, 12, generator=g)
    four = fwd(torch.cat([c1, c2]), torch.cat([x2, x2]), torch.cat([neg, neg, pos, pos]), t.repeat(4))
    want = torch.cat([fwd(c, x2[i: i + 1], e, t) for e in (neg, pos) for i, c in enumerate((c1, c2))])
    assert torch.allclose(four, want, atol=1e-5), (four - want).abs().max()


def test_gradient_mask_over_steps_with_phase_switches(bundle):
    """Paper eqs. 4-6 over several steps: after a motion step the motion adapters carry AdamW momentum,
    so if the next (identity) step gave them a zero gradient instead of none, momentum and weight decay
    would still move them. Every step must leave the inactive phase's adapters bit-identical."""
    from dual_adapter.dualreal import DualRealOptions, train_dualreal_on_data
    from dual_adapter.training import TrainConfig

    cfg = DualRealConfig.for_transformer(bundle.transformer, groups=2)
    m = DualRealAdapters(cfg)
    _randomise(m, std=0.02)
    start = DualRealAdapterSet.from_module(m)
    data = _fake_data(bundle)
    opts = DualRealOptions(groups=2, motion_ratio=0.5, motion_batch=1)
    N = 6
    states, phases = [start.state_dict], None
    for k in range(1, N + 1):  # constant LR: the first k steps of any run are the same steps
        tc = TrainConfig(steps=k, lr=1e-2, weight_decay=0.1, optimizer="adamw", lr_schedule="constant",
                         warmup_steps=0, checkpoint_every=0, gradient_checkpointing=False, seed=0)
        res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data, opts, tc, adapters=start)
        states.append(res.adapters.state_dict)
        phases = [r["phase"] for r in res.losses]
    switches = sum(a != b for a, b in zip(phases, phases[1:]))
    assert switches >= 3 and phases[:2] == ["motion", "identity"], phases  # seed 0: M I I M I M
    for k, phase in enumerate(phases, 1):
        before, after = states[k - 1], states[k]
        frozen = ".motion_" if phase == "identity" else ".id_"
        active = ".id_" if phase == "identity" else ".motion_"
        for key in before:
            if frozen in key:
                assert torch.equal(before[key], after[key]), f"step {k} ({phase}): {key} changed"
            elif active in key and "condition_linear" not in key:
                assert not torch.equal(before[key], after[key]), f"step {k} ({phase}): {key} did not train"
            elif key.startswith("controller."):
                assert not torch.equal(before[key], after[key]), f"step {k}: the controller did not train"


def test_motion_clips_default_to_consecutive_native_frames(tmp_path):
    from dual_adapter.cli import build_parser
    from dual_adapter.dualreal import DualRealOptions, load_motion_clips
    from dual_adapter.media import write_video

    assert DualRealOptions().clip_sampling == "native" and DualRealOptions().latent_sampling == "sample"
    ns = build_parser().parse_args(["train-dualreal", "--subject", "a.png", "--identity-prompt", "dog *", "--motion",
                                    "c.mp4", "--motion-prompt", "m", "--out", "o.safetensors"])
    assert ns.clip_sampling == "native" and ns.latent_sampling == "sample"
    n = 40  # a 25 fps clip whose frame k has brightness k / n
    frames = torch.arange(n).float().div(n).view(n, 1, 1, 1).expand(n, 32, 48, 3).contiguous()
    write_video(frames, tmp_path / "ramp.mp4", fps=25, crf=0)
    native = load_motion_clips([tmp_path / "ramp.mp4"], 9)[0]
    resampled = load_motion_clips([tmp_path / "ramp.mp4"], 9, "fps", 8.0)[0]
    level = lambda x: (x.mean((1, 2, 3)) * n).round().long().tolist()  # noqa: E731 - source frame index
    assert level(native) == list(range(9))  # consecutive source frames
    assert level(resampled) == [round(k * 25 / 8) for k in range(9)]  # 1/8 s apart
    with pytest.raises(DualAdapterError, match="clip_sampling"):
        load_motion_clips([tmp_path / "ramp.mp4"], 9, "every-other")


def test_latents_are_a_fresh_posterior_sample_each_step(bundle, monkeypatch):
    from dual_adapter.dualreal import DualRealOptions, prepare_dualreal_data, train_dualreal_on_data
    from dual_adapter.sampling import encode_frames
    from dual_adapter.training import TrainConfig

    g = torch.Generator().manual_seed(0)
    photo, clip = torch.rand(64, 96, 3, generator=g), torch.rand(9, 64, 96, 3, generator=g)
    data = prepare_dualreal_data(bundle, [photo], "dog *", [clip], "a person")
    # the mean is the posterior mode used before; the std is the VAE's, scaled like the latents
    mode = encode_frames(bundle, clip)
    assert torch.equal(data.clip_latents, mode) and data.clip_latent_std.shape == mode.shape
    with torch.no_grad():
        dist = bundle.vae.encode(clip[None].permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist
    sf = bundle.vae.config.scaling_factor
    torch.testing.assert_close(data.clip_latent_std, (dist.std * sf).permute(0, 2, 1, 3, 4))
    seen = []
    from dual_adapter.training import objective as TR  # the trainer's loss goes through batch_diffusion_loss

    real = TR.diffusion_loss

    def spy(model, sched, x0, emb, **kw):
        seen.append(x0.detach().clone())
        return real(model, sched, x0, emb, **kw)

    monkeypatch.setattr(TR, "diffusion_loss", spy)
    fast = TrainConfig(steps=6, warmup_steps=0, checkpoint_every=0, gradient_checkpointing=False, seed=0)
    res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data,
                                 DualRealOptions(groups=2, motion_batch=1, motion_ratio=1.0), fast)
    assert res.adapters.meta["latent_sampling_used"] == "sample"
    z = torch.stack([(x - data.clip_latents[0]) / data.clip_latent_std[0] for x in seen])  # [steps, ...] eps
    assert not torch.equal(seen[0], seen[1])  # a new sample every step
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05  # mean + std * N(0, 1)
    seen.clear()
    train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data,
                           DualRealOptions(groups=2, motion_batch=1, motion_ratio=1.0, latent_sampling="mode"), fast)
    assert all(torch.equal(x, data.clip_latents[:1]) for x in seen)  # the old behaviour, by name
