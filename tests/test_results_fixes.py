"""Wrong-or-silent-result fixes: patch composition, reference handling, CustomTTT merge
reference, finiteness checks, reproducibility, and the DualReal recipe options.

CPU, tiny model, seconds.
"""
from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest
import torch

from dual_adapter.backbones.cogvideox import build_tiny, encode_prompt, transformer_forward
from dual_adapter.dualreal import DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealPatch
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


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


# --------------------------------------------------------------------------------------------
# item 21: reproducibility


def test_mp4_is_byte_reproducible_across_processes(tmp_path):
    """The same frames give the same MP4 bytes in separate processes (x264's macroblock-tree made about
    1 run in 4 differ; the encoder's thread count differs between machines and PyAV versions)."""
    import hashlib
    import subprocess
    import sys

    g = torch.Generator().manual_seed(3)
    frames = torch.rand(9, 64, 96, 3, generator=g) * 0.3 + torch.linspace(0, 0.7, 96).view(1, 1, 96, 1)
    torch.save(frames, tmp_path / "frames.pt")
    root = Path(__file__).resolve().parents[1]
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); torch.set_num_threads(1)\n"
            "from dual_adapter.media import write_video\n"
            "for p in sys.argv[3:]: write_video(torch.load(sys.argv[2]), p)\n")
    outs = []
    for k in range(3):  # 3 processes (the difference came between processes, not within one)
        paths = [str(tmp_path / f"v{k}.mp4")]
        subprocess.run([sys.executable, "-c", code, str(root), str(tmp_path / "frames.pt"), *paths], check=True,
                       timeout=120)
        outs += paths
    digests = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in outs}
    assert len(digests) == 1, f"{len(digests)} different files from the same frames"
    sei = Path(outs[0]).read_bytes()
    if b"x264 - core" in sei:  # the settings x264 records in the stream: the deterministic ones
        assert b" threads=1 " in sei and b" mbtree=0 " in sei


def test_tap_training_is_bit_identical_whatever_the_global_rng(bundle):
    """peft's LoRA dropout draws from the global RNG: two identical runs started from different global RNG
    states (two processes) must still give the same weights (step 1 hides it: lora_B starts at zero)."""
    from dual_adapter import lora

    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(1, 3, 4, 8, 12, generator=g)]
    emb = encode_prompt(bundle, "a person is playing guitar")
    runs = []
    for r in range(2):
        torch.manual_seed(1000 + r)
        lf, res = lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat,
                                             prompt_embeds=emb, spec=lora.LoraSpec.from_preset("tap", rank=4),
                                             cfg=lora.lora_train_config(steps=4, lr=1e-2, gradient_checkpointing=False))
        runs.append((lf.state_dict, [x["loss"] for x in res.losses]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    state = torch.get_rng_state()
    torch.manual_seed(5)
    expect = torch.rand(3)
    torch.manual_seed(5)
    lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat, prompt_embeds=emb,
                               spec=lora.LoraSpec.from_preset("tap", rank=4),
                               cfg=lora.lora_train_config(steps=2, gradient_checkpointing=False))
    assert torch.equal(torch.rand(3), expect)  # the caller's global RNG stream is left as it was
    torch.set_rng_state(state)


# --------------------------------------------------------------------------------------------
# item 14: non-finite inputs and outputs


def test_non_finite_inputs_and_outputs_are_refused(bundle, tmp_path):
    from dual_adapter.cli import main
    from dual_adapter.lora import LoraPatch
    from dual_adapter.sampling import decode_latents, sample

    emb = encode_prompt(bundle, "a dog")
    kw = dict(steps=2, seed=0, num_frames=5, height=32, width=48)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(DualAdapterError, match="cfg"):
            sample(bundle, emb, cfg=bad, **kw)
    with pytest.raises(DualAdapterError, match="prompt embeddings.*non-finite"):
        sample(bundle, emb * float("nan"), cfg=1.0, **kw)
    mod = DualRealAdapters(DualRealConfig.for_transformer(bundle.transformer, groups=2))
    nan_ref = torch.full((1, 1024), float("nan"))
    with pytest.raises(DualAdapterError, match="reference embedding.*NaN"):
        DualRealPatch(mod, nan_ref)
    with pytest.raises(DualAdapterError, match="identity_scale"):
        DualRealPatch(mod, identity_scale=float("nan"))
    # diverged weights: refused when the patch is made, naming a tensor
    lf = _lora(bundle)
    sd = dict(lf.state_dict)
    k = next(iter(sd))
    sd[k] = sd[k].clone()
    sd[k][0, 0] = float("nan")
    from dual_adapter.lora import LoraFile

    with pytest.raises(DualAdapterError, match="diverged"):
        LoraPatch(LoraFile.from_state_dict(sd))
    broken = DualRealAdapters(DualRealConfig.for_transformer(bundle.transformer, groups=2))
    with torch.no_grad():
        broken.transformer_blocks[1].id_ff_adapter.up_linear.weight.fill_(float("inf"))
    with pytest.raises(DualAdapterError, match="diverged.*|transformer_blocks.1"):
        DualRealPatch(DualRealAdapterSet.from_module(broken))

    class NaNPatch:  # a patch whose output turns non-finite: caught at the step, never decoded to black
        def apply(self, tr):
            tr.proj_out.register_forward_hook(lambda m, i, o: o * float("nan"))

    with pytest.raises(DualAdapterError, match="non-finite.*step 1/2"):
        sample(bundle, emb, cfg=1.0, patches=[NaNPatch()], **kw)
    with pytest.raises(DualAdapterError, match="NaN"):
        decode_latents(bundle, torch.full((1, 2, 4, 4, 6), float("nan")))
    # the CLI: a clear error and a non-zero exit, no video
    out = tmp_path / "v.mp4"
    with pytest.raises(SystemExit) as e:  # refused while parsing (the guidance bounds of docs/limits.md)
        main(["generate", "--prompt", "a dog", "--cfg", "nan", "--steps", "1", "--out", str(out), "--quiet"])
    assert e.value.code == 2
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# item 12: adapters trained without a reference embedding


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


# --------------------------------------------------------------------------------------------
# item 13: CustomTTT's merge reference


def test_customttt_default_reference_is_the_teachers_x0_prediction(bundle):
    from dual_adapter import customttt as C

    assert C.TTTConfig().reference == "x0_pred" and C.REFERENCES[0] == "x0_pred"
    a, m = _lora(bundle, 1), _lora(bundle, 2)
    kw = dict(appearance_prompt="dog *", motion_prompt="a car is turning", prompt="dog * turning")
    cfg = dict(steps=1, teacher_steps=1, teacher_schedule=5, lr=1e-4, gradient_checkpointing=False)
    res = C.ttt_merge(bundle, a, m, config=C.TTTConfig(**cfg), **kw)
    e_a, neg = encode_prompt(bundle, "dog *"), encode_prompt(bundle, "")
    want, t0 = C.teacher_reference(bundle, a, e_a, neg, teacher_steps=1, teacher_schedule=5, reference="x0_pred")
    assert t0 == 0 and res.reference_timestep == 0
    torch.testing.assert_close(res.references["appearance"], want)
    z_f, t_f = C.teacher_reference(bundle, a, e_a, neg, teacher_steps=1, teacher_schedule=5, reference="z_f_as_x0")
    assert t_f > 700 and (z_f - want).abs().max() > 0.1  # z_f is the still-noisy latent, not the prediction
    # the older behaviour and the re-noised reading stay available by name ("z_f" = the old name)
    for name, t_expected in (("z_f", t_f), ("z_f_as_x0", t_f), ("z_f_renoised", t_f)):
        r = C.ttt_merge(bundle, a, m, config=C.TTTConfig(reference=name, **cfg), **kw)
        assert r.reference_timestep == t_expected and torch.isfinite(torch.tensor(r.train.losses[0]["loss"]))
        torch.testing.assert_close(r.references["appearance"], z_f)
    with pytest.raises(DualAdapterError, match="no timestep above"):
        C.ttt_merge(bundle, a, m, config=C.TTTConfig(reference="z_f_renoised", renoise_timesteps=(0, 500), **cfg), **kw)


def test_z_f_renoised_loss_matches_a_ddim_step(bundle):
    """z_f_renoised: x_t ~ q(x_t | x_{t_f}), and the student's deterministic DDIM step t -> t_f is compared
    with z_f. Independent computation: diffusers' DDIMScheduler.step (eta 0) from t = 999 to t_f = 799."""
    from diffusers import CogVideoXDDIMScheduler

    from dual_adapter.customttt import _renoised_loss
    from dual_adapter.training import make_noise_scheduler

    sched = make_noise_scheduler(bundle)
    g = torch.Generator().manual_seed(4)
    z_f, eps = torch.randn(1, 3, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g)
    e = encode_prompt(bundle, "dog * turning")
    t, t_f = 999, 799
    model = bundle.transformer
    got = _renoised_loss(model, sched, z_f, t_f, e, torch.tensor([t]), eps)
    ac = sched.alphas_cumprod
    x_t = (ac[t] / ac[t_f]).sqrt() * z_f + (1 - ac[t] / ac[t_f]).sqrt() * eps
    # its marginal is that of q(x_t | x_0) when z_f ~ q(x_tf | x_0): variances add up to 1 - abar_t
    assert torch.isclose(ac[t] / ac[t_f] * (1 - ac[t_f]) + (1 - ac[t] / ac[t_f]), 1 - ac[t])
    ddim = CogVideoXDDIMScheduler.from_config(bundle.scheduler_config)
    ddim.set_timesteps(5)  # step() goes from t to t - 1000 // 5 = t_f
    assert torch.equal(ddim.alphas_cumprod, ac)
    with torch.no_grad():
        v = transformer_forward(model, x_t, e, torch.tensor([t])).float()
        prev = ddim.step(v, t, x_t, eta=0.0).prev_sample
    assert torch.allclose(got, ((prev - z_f) ** 2).mean().view(1), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# tests that must be able to fail: authors' checkpoint names, StageBlender formula, CFG broadcast,
# gradient mask over many steps, MotionDirector's spatial path


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


def test_motiondirector_spatial_path_learns_from_frames_only_and_is_dropped(bundle, tmp_path):
    """The spatial LoRA learns from its single-frame loss only (the clip loss never reaches it), the motion
    LoRA from the clip loss; the output (what inference applies) holds the motion LoRA only."""
    from dual_adapter import lora

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(5, 1, 4, 8, 12, generator=g)  # [F, 1, C, h, w]: single-frame latents
    clip_a, clip_b = torch.randn(1, 3, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g)
    emb = encode_prompt(bundle, "a person is playing guitar")
    spec = lora.LoraSpec.from_preset("tap", rank=4, dropout=0.0)
    out = {}
    for name, clip, fr in (("a", clip_a, frames), ("b", clip_b, frames), ("c", clip_a, frames * 0.5)):
        ck = tmp_path / f"{name}.safetensors"
        lf, res = lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=[clip],
                                             prompt_embeds=emb, frame_latents=[fr], spec=spec, spatial_path=True,
                                             cfg=lora.lora_train_config(steps=3, lr=1e-2, gradient_checkpointing=False),
                                             checkpoint_path=ck)
        out[name] = (lf, lora.load_lora(lora.spatial_checkpoint_path(ck)))
    (ma, sa), (mb, sb), (_, sc) = out["a"], out["b"], out["c"]
    assert sorted(sa.targets) == sorted(lora.PRESETS["full"])
    # another clip, same frames: the spatial LoRA is bit-identical, the motion LoRA is not
    assert all(torch.equal(sa.state_dict[k], sb.state_dict[k]) for k in sa.state_dict)
    assert any(not torch.equal(ma.state_dict[k], mb.state_dict[k]) for k in ma.state_dict)
    # other frames: the spatial LoRA differs (it does learn from them) and it did move from its init
    assert any(not torch.equal(sa.state_dict[k], sc.state_dict[k]) for k in sa.state_dict)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in sa.state_dict.items())
    # inference drops it: the output holds the motion targets only, and applying the spatial path would differ
    assert sorted(ma.targets) == ["attn1.to_k", "attn1.to_q"] and not any("to_v" in k or "to_out" in k
                                                                         for k in ma.state_dict)
    x, e, t = _inputs(bundle)
    m_only = transformer_forward(patched_copy(bundle.transformer, [lora.LoraPatch(ma)]), x, e, t)
    with_sp = transformer_forward(patched_copy(bundle.transformer, [lora.LoraPatch(ma), lora.LoraPatch(sa)]), x, e, t)
    assert (m_only - with_sp).abs().max() > 1e-5


# --------------------------------------------------------------------------------------------
# the authors' DualReal recipe as the default: native consecutive frames, a posterior sample per step


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
    from dual_adapter import training as TR  # the trainer's loss goes through training.batch_diffusion_loss

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
