"""TAP motion LoRA: presets, training on the shared loop, diffusers-format files, loaders, patches, CLI, nodes.

CPU, tiny model. The motion clip is a real UCF101 guitar clip from ../shared/data (skipped if absent).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dual_adapter import lora, patches, sampling
from dual_adapter.backbones import cogvideox
from dual_adapter.errors import DualAdapterError, InterruptedByUser
from dual_adapter.io import save_safetensors

PROMPT = "a person is playing guitar"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run fastest on one thread (and do not fight other processes for the two cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def guitar(data_dir):
    from dual_adapter.media import fit_frames, load_clip

    clips = sorted((data_dir / "motion" / "playing_guitar").glob("*.avi"))
    if not clips:
        pytest.skip("no guitar clips in ../shared/data")
    frames, _ = load_clip(clips[0], num_frames=9, fps=8.0)
    return fit_frames(frames, 64, 96)  # [9, 64, 96, 3]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tiny, guitar):
    """TAP LoRA, rank 8, alpha 16 (so saving folds a scale of 2), 100 steps on random timesteps/noise."""
    before = _snapshot(tiny.transformer)
    spec = lora.LoraSpec(rank=8, alpha=16.0, dropout=0.0)
    cfg = lora.lora_train_config(steps=100, lr=1e-2, gradient_checkpointing=False, checkpoint_every=0)
    lf, res = lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=spec, cfg=cfg)
    return lf, res, before


def _fwd(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 4, 8, 12, generator=g)
    e = torch.randn(1, 16, 32, generator=g)
    with torch.no_grad():
        return cogvideox.transformer_forward(model, x, e, torch.tensor([700]))


# ------------------------------------------------------------------------------------------ spec


def test_presets_and_spec(tiny):
    assert lora.PRESETS == {"tap": ["attn1.to_q", "attn1.to_k"], "k_out": ["attn1.to_k", "attn1.to_out.0"],
                            "full": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"]}
    s = lora.LoraSpec()
    assert (s.rank, s.alpha, s.dropout, s.targets, s.blocks) == (32, 32.0, 0.1, ["attn1.to_q", "attn1.to_k"], None)
    assert len(s.target_modules(tiny.transformer)) == 2 * 4
    names = lora.LoraSpec.from_preset("k_out", blocks=[1, 3]).target_modules(tiny.transformer)
    assert names == ["transformer_blocks.1.attn1.to_k", "transformer_blocks.3.attn1.to_k",
                     "transformer_blocks.1.attn1.to_out.0", "transformer_blocks.3.attn1.to_out.0"]
    assert lora.LoraSpec(targets=["ff.net.2", "proj_out"]).target_modules(tiny.transformer)[-1] == "proj_out"
    with pytest.raises(DualAdapterError, match="attn1.to_q"):  # lists what a block offers
        lora.LoraSpec(targets=["attn1.to_query"]).target_modules(tiny.transformer)
    with pytest.raises(DualAdapterError, match="out of range"):
        lora.LoraSpec(blocks=[7]).target_modules(tiny.transformer)
    with pytest.raises(DualAdapterError, match="rank"):
        lora.LoraSpec(rank=0).validate()


def test_inject_on_copy_only_lora_trainable(tiny):
    copy_ = patches.shallow_copy_module(tiny.transformer)
    params = lora.inject_lora(copy_, lora.LoraSpec(rank=4, blocks=[0, 2]))
    assert len(params) == 2 * 2 * 2 and all(p.requires_grad for p in params)
    trainable = [n for n, p in copy_.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert all(".to_q." in n or ".to_k." in n for n in trainable)
    assert sorted(lora.lora_modules(copy_)) == ["transformer_blocks.0.attn1.to_k", "transformer_blocks.0.attn1.to_q",
                                               "transformer_blocks.2.attn1.to_k", "transformer_blocks.2.attn1.to_q"]
    # the loaded model is untouched: no LoRA layer, frozen, and the copy shares its weights
    assert not lora.lora_modules(tiny.transformer)
    assert not any(p.requires_grad for p in tiny.transformer.parameters())
    assert copy_.transformer_blocks[0].attn1.to_v.weight is tiny.transformer.transformer_blocks[0].attn1.to_v.weight
    assert torch.equal(_fwd(copy_), _fwd(tiny.transformer))  # lora_B starts at zero
    with pytest.raises(DualAdapterError, match="already used"):
        lora.inject_lora(copy_, lora.LoraSpec(rank=4))


# ------------------------------------------------------------------------------------------ training


def test_tap_training_changes_only_query_key_lora(trained, tiny):
    lf, res, before = trained
    assert res.completed and res.steps_done == 100
    after = _snapshot(tiny.transformer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    keys = list(lf.state_dict)
    assert len(keys) == 4 * 2 * 2
    assert all(".attn1.to_q.lora_" in k or ".attn1.to_k.lora_" in k for k in keys)
    assert not any("to_v" in k or "to_out" in k for k in keys)
    assert all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert all(lf.state_dict[k].abs().max() > 0 for k in keys if "lora_B" in k)  # every B moved off zero
    # the patched model differs only through q / k: to_v / to_out are plain Linear layers, not wrapped
    m = patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf)])
    for blk in m.transformer_blocks:
        assert type(blk.attn1.to_v) is nn.Linear and type(blk.attn1.to_out[0]) is nn.Linear
        assert type(blk.attn1.to_q) is not nn.Linear


def test_loss_falls_on_fixed_batch(tiny, guitar):
    """TAP on a random base barely learns on random draws (docs/results/tiny_learning.md); on one fixed draw it must fit."""
    cfg = lora.lora_train_config(steps=30, lr=1e-2, gradient_checkpointing=False, checkpoint_every=0)
    _, res = lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=lora.LoraSpec(rank=8, alpha=8, dropout=0.0),
                             cfg=cfg, fixed_batch=True)
    losses = [r["loss"] for r in res.losses]
    assert sum(losses[-5:]) / 5 < 0.93 * losses[0], losses
    assert all(b <= a * 1.01 for a, b in zip(losses, losses[1:])), "loss on a fixed batch should not go up"


def test_training_lowers_loss_and_sampling_moves_toward_clip(trained, tiny, guitar):
    lf, res, _ = trained
    losses = [r["loss"] for r in res.losses]
    assert sum(losses[-25:]) / 25 < 0.9 * sum(losses[:25]) / 25
    target = sampling.encode_frames(tiny, guitar)
    emb = cogvideox.encode_prompt(tiny, PROMPT)
    for seed in (0, 1):
        kw = dict(num_frames=9, height=64, width=96, steps=10, cfg=1.0, seed=seed, scheduler="ddim")
        base = sampling.sample(tiny, emb, **kw)
        with_lora = sampling.sample(tiny, emb, patches=[lora.LoraPatch(lf)], **kw)
        mse_base = ((base - target) ** 2).mean().item()
        mse_lora = ((with_lora - target) ** 2).mean().item()
        assert mse_lora < mse_base - 0.03, (seed, mse_lora, mse_base)


def test_spatial_path_and_debiased_loss_run_and_output_motion_lora_only(tiny, guitar, tmp_path):
    cfg = lora.lora_train_config(steps=4, lr=1e-3, gradient_checkpointing=True, checkpoint_every=2)
    ck = tmp_path / "ck.safetensors"
    lf, res = lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=lora.LoraSpec(rank=4), cfg=cfg,
                              spatial_path=True, debiased_loss=True, checkpoint_path=ck)
    assert all("loss_spatial" in r for r in res.losses)
    assert lf.targets == ["attn1.to_q", "attn1.to_k"] and len(lf.modules) == 8
    sp = lora.load_lora(lora.spatial_checkpoint_path(ck))  # the spatial path is kept in the checkpoint only
    assert sorted(sp.targets) == sorted(lora.PRESETS["full"])
    assert lf.metadata["train"]["spatial_path"] and lf.metadata["train"]["debiased_loss"]


def test_debiased_loss_equals_explicit_formula(tiny):
    """diffusion_loss with debiased_error == L + mean(w * (phi(x0_pred) - phi(x0))^2), phi = sqrt2 y - y_a."""
    from dual_adapter.training import diffusion_loss, make_noise_scheduler

    sched = make_noise_scheduler(tiny)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 3, 4, 8, 12, generator=g)
    eps = torch.randn(1, 3, 4, 8, 12, generator=g)
    emb = torch.randn(1, 16, 32, generator=g)
    t = torch.tensor([420])
    a = 2
    phi = lambda y: 2 ** 0.5 * y - y[:, a:a + 1]  # noqa: E731
    with torch.no_grad():
        got = diffusion_loss(tiny.transformer, sched, x0, emb, timesteps=t, noise=eps,
                             error_fn=lora.debiased_error(a))
        xt = sched.add_noise(x0, eps, t)
        v = cogvideox.transformer_forward(tiny.transformer, xt, emb, t)
        x0p = sched.get_velocity(v, xt, t)
        w = 1 / (1 - sched.alphas_cumprod[t])
        want = ((w * (x0p - x0) ** 2).mean() + (w * (phi(x0p) - phi(x0)) ** 2).mean()).float()
    assert torch.allclose(got, want, rtol=1e-5), (got, want)


def test_interrupt_keeps_checkpoint_and_resume_matches_uninterrupted(tiny, guitar, tmp_path):
    spec = lora.LoraSpec(rank=4, alpha=4, dropout=0.0)
    cfg = lora.lora_train_config(steps=8, lr=5e-3, gradient_checkpointing=False, checkpoint_every=3)
    full, _ = lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=spec, cfg=cfg)
    ck = tmp_path / "run.safetensors"

    def stop_at_5(step, total, info):
        if step == 5:
            raise InterruptedByUser("stop")

    with pytest.raises(InterruptedByUser):
        lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=spec, cfg=cfg, callback=stop_at_5,
                        checkpoint_path=ck)
    kept = lora.load_lora(ck)
    assert kept.metadata["train"]["steps_done"] == 5 and not kept.metadata["train"]["completed"]
    resumed, res = lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=spec, cfg=cfg, checkpoint_path=ck,
                                   resume=True)
    assert res.steps_done == 8 and [r["step"] for r in res.losses] == list(range(1, 9))
    for k, v in full.state_dict.items():
        assert torch.allclose(resumed.state_dict[k], v, atol=1e-6), k
    with pytest.raises(DualAdapterError, match="resume"):
        lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, spec=spec, cfg=cfg, checkpoint_path=tmp_path / "no.safetensors",
                        resume=True)


def test_bad_training_input(tiny, guitar):
    with pytest.raises(DualAdapterError, match="at least one"):
        lora.train_lora(tiny, prompt=PROMPT)
    with pytest.raises(DualAdapterError, match=r"clip 0"):
        lora.train_lora(tiny, clips=[guitar[0]], prompt=PROMPT)
    with pytest.raises(DualAdapterError, match="fewer than num_frames"):
        lora.train_lora(tiny, clips=[guitar[:5]], prompt=PROMPT, num_frames=9)
    with pytest.raises(DualAdapterError, match="height"):
        lora.train_lora(tiny, clips=[guitar], prompt=PROMPT, height=70)


# ------------------------------------------------------------------------------------------ files


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    lf = trained[0]
    return lf.save(tmp_path_factory.mktemp("lora") / "tap.safetensors")


def test_saved_file_format_and_round_trip(trained, saved, tiny):
    from dual_adapter.io import load_safetensors

    lf = trained[0]
    tensors, md = load_safetensors(saved)
    assert set(tensors) == set(lf.state_dict)
    assert "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight" in tensors
    assert tensors["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"].shape == (8, 64)
    assert tensors["transformer.transformer_blocks.0.attn1.to_q.lora_B.weight"].shape == (64, 8)
    assert md["rank"] == 8 and md["alpha"] == 8 and md["trained_alpha"] == 16  # scale 2 folded into lora_B
    assert md["targets"] == ["attn1.to_q", "attn1.to_k"] and md["blocks"] == [0, 1, 2, 3] and md["preset"] == "tap"
    assert md["base_config"]["num_layers"] == 4 and md["base_fingerprint"] == cogvideox.config_fingerprint(tiny.transformer)
    dm = md["lora_adapter_metadata"]
    assert dm["transformer.r"] == 8 and dm["transformer.lora_alpha"] == 8.0
    back = lora.load_lora(saved)
    assert back.source_format == "dual_adapter" and (back.rank, back.alpha) == (8, 8.0)
    assert torch.allclose(_fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(back)])),
                          _fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf)])), atol=1e-6)
    with pytest.raises(DualAdapterError, match="already exists"):
        lf.save(saved)


def test_diffusers_pipeline_loads_our_file_and_matches(saved, tiny):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    tr = copy.deepcopy(tiny.transformer)
    pipe = CogVideoXPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=tiny.vae, transformer=tr,
                             scheduler=CogVideoXDDIMScheduler.from_config(tiny.scheduler_config))
    pipe.load_lora_weights(str(saved), adapter_name="tap")
    ours = lora.load_lora(saved)
    want = _fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(ours)]))
    assert (want - _fwd(tiny.transformer)).abs().max() > 1e-3  # the LoRA does something
    assert torch.allclose(_fwd(pipe.transformer), want, atol=1e-5)
    pipe.set_adapters(["tap"], adapter_weights=[0.5])
    assert torch.allclose(_fwd(pipe.transformer), _fwd(patches.patched_copy(tiny.transformer,
                                                                             [lora.LoraPatch(ours, 0.5)])), atol=1e-5)
    assert not lora.lora_modules(tiny.transformer)


def test_strength_zero_is_base_and_loras_stack(trained, tiny):
    lf = trained[0]
    base = _fwd(tiny.transformer)
    assert torch.equal(_fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf, 0.0)])), base)
    one = _fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf, 1.0)]))
    two_halves = patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf, 0.5), lora.LoraPatch(lf, 0.5)])
    assert len(lora._adapter_names(two_halves)) == 2
    assert torch.allclose(_fwd(two_halves), one, atol=1e-5)
    # a second, different LoRA stacks with the first (k_out on other modules)
    other = lora.LoraFile.from_state_dict({f"transformer.transformer_blocks.1.attn1.to_out.0.lora_{h}.weight":
                                           torch.full((2, 64) if h == "A" else (64, 2), 0.05) for h in "AB"})
    both = _fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf), lora.LoraPatch(other)]))
    only_other = _fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(other)]))
    assert not torch.allclose(both, one) and not torch.allclose(both, only_other)
    assert torch.equal(_fwd(tiny.transformer), base)


def _peft_and_kohya(lf: lora.LoraFile, folder: Path):
    """The trained LoRA written the way other trainers write it (peft folder, kohya file)."""
    peft_dir = folder / "peft"
    peft_dir.mkdir()
    sd = {}
    for k, v in lf.state_dict.items():
        mod = k[len("transformer."):].rsplit(".lora_", 1)[0]
        half = "lora_A" if ".lora_A." in k else "lora_B"
        # alpha 4 at rank 8 halves the scale: store B doubled so that the update is the same
        sd[f"base_model.model.{mod}.{half}.weight"] = v * (2.0 if half == "lora_B" else 1.0)
    save_safetensors(sd, peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 4}))
    ko = {}
    for k, v in lf.state_dict.items():
        mod = k[len("transformer."):].rsplit(".lora_", 1)[0]
        name = "lora_unet_" + mod.replace(".", "_")
        if ".lora_A." in k:
            ko[f"{name}.lora_down.weight"] = v
            ko[f"{name}.alpha"] = torch.tensor(2.0)
        else:
            ko[f"{name}.lora_up.weight"] = v * 4.0
    ko["lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight"] = torch.zeros(8, 32)
    ko["lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight"] = torch.zeros(32, 8)
    save_safetensors(ko, folder / "kohya.safetensors")
    return peft_dir / "adapter_model.safetensors", folder / "kohya.safetensors"


def test_peft_and_kohya_files_load_and_match(trained, tiny, tmp_path):
    lf = trained[0]
    want = _fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(lf)]))
    peft_file, kohya_file = _peft_and_kohya(lf, tmp_path)
    p = lora.load_lora(peft_file)
    assert p.source_format == "peft" and p.rank == 8 and p.alpha == 4.0
    assert torch.allclose(_fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(p)])), want, atol=1e-5)
    k = lora.load_lora(kohya_file)
    assert k.source_format == "kohya" and k.alpha == 2.0 and len(k.skipped) == 2
    assert "transformer.transformer_blocks.3.attn1.to_k.lora_A.weight" in k.state_dict
    assert torch.allclose(_fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(k)])), want, atol=1e-5)
    # re-saved in our format, a kohya LoRA becomes a diffusers LoRA with the same effect
    again = lora.load_lora(k.save(tmp_path / "converted.safetensors"))
    assert torch.allclose(_fwd(patches.patched_copy(tiny.transformer, [lora.LoraPatch(again)])), want, atol=1e-5)


def test_kohya_names_cover_every_linear_layer():
    for variant in cogvideox.TINY_VARIANTS:
        t = cogvideox.build_tiny(variant, num_layers=2).transformer
        for name, m in t.named_modules():
            if isinstance(m, nn.Linear):
                assert lora.formats.kohya_module("lora_unet_" + name.replace(".", "_")) == name, (variant, name)


# ------------------------------------------------------------------------------------------ bad files


def test_lora_for_other_width_or_architecture_is_refused(tiny, tmp_path):
    wide = {f"transformer.transformer_blocks.{i}.attn1.to_q.lora_{h}.weight":
            torch.zeros((4, 3072) if h == "A" else (3072, 4)) for i in range(2) for h in "AB"}
    save_safetensors(wide, tmp_path / "wide.safetensors")
    lf = lora.load_lora(tmp_path / "wide.safetensors")
    with pytest.raises(DualAdapterError, match=r"transformer\.transformer_blocks\.0\.attn1\.to_q.*3072.*64 -> 64"):
        lora.check_compatible(lf, tiny.transformer)
    deep = {f"transformer.transformer_blocks.{i}.attn1.to_q.lora_{h}.weight": torch.zeros((4, 64) if h == "A" else (64, 4))
            for i in (0, 41) for h in "AB"}
    with pytest.raises(DualAdapterError, match=r"not in this model: transformer_blocks\.41\.attn1\.to_q"):
        lora.check_compatible(lora.LoraFile.from_state_dict(deep), tiny.transformer)
    # never a partial load: applying fails before any layer is added
    m = patches.shallow_copy_module(tiny.transformer)
    with pytest.raises(DualAdapterError, match="does not fit"):
        lora.LoraPatch(lf).apply(m)
    assert not lora.lora_modules(m)
    # an SD-UNet kohya LoRA names layers CogVideoX does not have
    save_safetensors({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)},
                     tmp_path / "sd.safetensors")
    with pytest.raises(DualAdapterError, match="lora_unet_down_blocks_0_attentions_0_proj_in"):
        lora.load_lora(tmp_path / "sd.safetensors")
    save_safetensors({"transformer.transformer_blocks.0.attn1.to_q.weight": torch.zeros(64, 64)},
                     tmp_path / "full.safetensors")
    with pytest.raises(DualAdapterError, match="not LoRA weights"):
        lora.load_lora(tmp_path / "full.safetensors")
    save_safetensors({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64)},
                     tmp_path / "half.safetensors")
    with pytest.raises(DualAdapterError, match="only lora_A"):
        lora.load_lora(tmp_path / "half.safetensors")


def test_empty_or_corrupted_file_names_the_file(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(DualAdapterError, match="empty.safetensors"):
        lora.load_lora(empty)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x93NUMPY not a safetensors file at all" * 10)
    with pytest.raises(DualAdapterError, match="garbage.safetensors"):
        lora.load_lora(bad)
    with pytest.raises(DualAdapterError, match="missing.safetensors"):
        lora.load_lora(tmp_path / "missing.safetensors")
    save_safetensors({}, tmp_path / "none.safetensors")
    with pytest.raises(DualAdapterError, match="none.safetensors"):
        lora.load_lora(tmp_path / "none.safetensors")
    pt = tmp_path / "x.pt"
    pt.write_bytes(b"x")
    with pytest.raises(DualAdapterError, match="x.pt"):
        lora.load_lora(pt)


def test_parse_lora_arg():
    assert lora.parse_lora_arg("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert lora.parse_lora_arg("a/b.safetensors:0.7") == ("a/b.safetensors", 0.7)
    assert lora.parse_lora_arg("C:\\loras\\b.safetensors") == ("C:\\loras\\b.safetensors", 1.0)
    assert lora.parse_lora_arg("C:\\loras\\b.safetensors:-1") == ("C:\\loras\\b.safetensors", -1.0)


# ------------------------------------------------------------------------------------------ CLI and nodes


def test_cli_train_lora_then_generate_with_two_loras(data_dir, tmp_path, capsys):
    from dual_adapter.cli import main

    clip = sorted((data_dir / "motion" / "playing_guitar").glob("*.avi"))[0]
    out = tmp_path / "motion_lora.safetensors"
    rc = main(["train-lora", "--model", "tiny", "--preset", "tap", "--motion", str(clip), "--prompt", PROMPT,
               "--steps", "4", "--rank", "4", "--no-gradient-checkpointing", "--checkpoint-every", "2", "--quiet",
               "--out", str(out)])
    assert rc == 0
    run = tmp_path / "runs" / "lora" / "motion_lora_00001_"
    lines = (run / "losses.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    lf = lora.load_lora(out)
    assert lf.targets == ["attn1.to_q", "attn1.to_k"] and lf.rank == 4 and lf.metadata["prompt"] == PROMPT
    assert not (run / "checkpoint.safetensors").exists()  # the checkpoint goes once the file is written
    assert main(["train-lora", "--model", "tiny", "--motion", str(clip), "--prompt", PROMPT, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    video = tmp_path / "v.mp4"
    rc = main(["generate", "--model", "tiny", "--prompt", PROMPT, "--steps", "2", "--quiet", "--lora", f"{out}:0.5",
               "--lora", str(out), "--out", str(video)])
    assert rc == 0 and video.stat().st_size > 0
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert main(["generate", "--model", "tiny", "--prompt", PROMPT, "--steps", "1", "--lora", str(bad),
                 "--out", str(tmp_path / "w.mp4")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_nodes_train_save_load_apply(guitar, out_dir, tmp_path):
    from dual_adapter.commands.run import load_node_classes

    c = load_node_classes()
    with torch.inference_mode():
        (model,) = c["DualAdapterLoadVideoModel"]().load("tiny")
        clip = guitar.clone()
        lf, plot = c["DualAdapterTrainMotionLoRA"]().train(model, clip, PROMPT, preset="tap", rank=4, alpha=4.0,
                                                          dropout=0.0, learning_rate=1e-3, steps=3, seed=0,
                                                          gradient_checkpointing=False)
        assert torch.equal(clip, guitar) and plot.ndim == 4 and plot.shape[-1] == 3
        assert isinstance(lf, lora.LoraFile) and lf.targets == ["attn1.to_q", "attn1.to_k"]
        saved = c["DualAdapterSaveLoRA"]().save(lf, "tap/guitar", "models/loras", "fp32")
        path = Path(saved["result"][0])
        assert path.is_file() and path.parent.name == "tap"
        names = c["DualAdapterLoadLoRA"].INPUT_TYPES()["required"]["lora_name"][0]
        assert str(Path("tap") / path.name) in names
        (loaded,) = c["DualAdapterLoadLoRA"]().load(str(Path("tap") / path.name))
        (m1,) = c["DualAdapterApplyLoRA"]().apply(model, loaded, 1.0)
        (m2,) = c["DualAdapterApplyLoRA"]().apply(m1, loaded, -1.0)
        assert model.patches == () and len(m2.patches) == 2
        assert torch.allclose(_fwd(m2.build()), _fwd(model.build()), atol=1e-5)  # +1 and -1 cancel
        (emb,) = c["DualAdapterTextEncode"]().encode(m1, PROMPT, "")
        (lat,) = c["DualAdapterSampler"]().run(m1, emb, steps=2, seed=0)
        assert lat["samples"].shape == (1, 4, 3, 8, 12)
        wide = lora.LoraFile.from_state_dict({f"transformer.transformer_blocks.0.attn1.to_q.lora_{h}.weight":
                                              torch.zeros((4, 3072) if h == "A" else (3072, 4)) for h in "AB"})
        with pytest.raises(DualAdapterError, match="does not fit"):
            c["DualAdapterApplyLoRA"]().apply(model, wide, 1.0)
