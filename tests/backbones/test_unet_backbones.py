"""U-Net backbones (ZeroScope/ModelScope UNet3D, AnimateDiff): interface, AH, TAP, LoRA files, CustomTTT, workflows."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


@pytest.fixture(scope="module")
def u3d():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-unet3d")


@pytest.fixture(scope="module")
def ad():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-animatediff")


def _inputs(bb, frames=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, 16, 16, generator=g)
    return x, torch.tensor([500]), bb.encode_prompt("a dog is playing guitar")


# ------------------------------------------------------------------------------ interface


def test_backbone_registry_roles_and_folder_errors(u3d, ad, tiny, tmp_path):
    from dual_adapter import backbones as B

    assert set(B.backbone_modules()) == {"cogvideox", "unet3d", "animatediff", "wan", "wan_a14b"}
    assert B.kind_of("tiny-unet3d") == "unet3d" and B.kind_of("tiny-animatediff") == "animatediff"
    assert B.kind_of("tiny") == "cogvideox"
    for bb in (u3d, ad):
        assert bb.attention_modules("joint") == {}
        cross, spatial, temporal = (bb.attention_modules(r) for r in ("cross", "spatial", "temporal"))
        assert cross and spatial and temporal
        assert all(m.is_cross_attention for m in cross.values())
        assert not set(cross) & set(spatial) and not set(temporal) & (set(cross) | set(spatial))
        assert [b.name for b in bb.text_layers()] == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                                       "up_blocks.1", "up_blocks.2", "up_blocks.3"]
        assert set(bb.text_entry_points()) == set(cross)
    cog = B.as_backbone(tiny)
    assert set(cog.attention_modules("joint")) == {f"transformer_blocks.{i}.attn1" for i in range(4)}
    assert cog.attention_modules("temporal") == {} and cog.prediction_type == "v_prediction"
    # a folder is named by the backbone it holds
    cv = tmp_path / "cog"
    (cv / "transformer").mkdir(parents=True)
    (cv / "transformer" / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel"}))
    zs = tmp_path / "zs"
    (zs / "unet").mkdir(parents=True)
    (zs / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    assert B.identify_folder(cv) == "cogvideox" and B.identify_folder(zs) == "unet3d"
    with pytest.raises(DualAdapterError, match="CogVideoX"):
        B.load_backbone(str(cv), kind="unet3d")
    with pytest.raises(DualAdapterError, match="missing sub-folders"):
        B.load_backbone(str(zs))
    with pytest.raises(DualAdapterError, match="ZeroScope"):
        B.load_backbone("tiny-unet3d", kind="animatediff")
    with pytest.raises(DualAdapterError, match="multiple of 16"):
        u3d.check_video_size(4, 40, 32)


# ------------------------------------------------------------------------------ AH


def test_ah_off_is_the_plain_model_bit_for_bit(u3d):
    from dual_adapter.patches import patched_copy
    from dual_adapter.unet_motion import AppearanceHighway

    x, t, e = _inputs(u3d)
    with torch.no_grad():
        ref = u3d.predict(x, t, e)
        off = u3d.predict(x, t, e, denoiser=patched_copy(u3d.denoiser, [AppearanceHighway(enabled=False)]))
        m = patched_copy(u3d.denoiser, [AppearanceHighway()])
        on = u3d.predict(x, t, e, denoiser=m)
        AppearanceHighway.remove(m)
        removed = u3d.predict(x, t, e, denoiser=m)
        again = u3d.predict(x, t, e)
    assert torch.equal(off, ref) and torch.equal(removed, ref) and torch.equal(again, ref)
    assert not torch.allclose(on, ref)


def _record_up_inputs(unet):
    rec, hs = {}, []
    for i, blk in enumerate(unet.up_blocks):
        def pre(mod, args, kwargs, i=i):
            rec[f"up{i}"] = (kwargs["hidden_states"].clone(), tuple(r.clone() for r in kwargs["res_hidden_states_tuple"]))
        hs.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
    for j, attn in enumerate(unet.down_blocks[2].attentions):
        hs.append(attn.register_forward_hook(lambda m, a, o, j=j: rec.__setitem__(f"spatial{j}", o[0].clone())))
    for j, r in enumerate(unet.up_blocks[2].resnets):
        hs.append(r.register_forward_pre_hook(lambda m, a, j=j: rec.__setitem__(f"up2res{j}", a[0].clone())))
    return rec


def test_ah_changes_only_the_skips_it_moves(u3d):
    """Authors' AH: up block 1's skips from down block 1's downsampler + down block 2's spatial-attention outputs."""
    from dual_adapter.patches import patched_copy, shallow_copy_module
    from dual_adapter.unet_motion import AppearanceHighway

    x, t, e = _inputs(u3d)
    plain = shallow_copy_module(u3d.denoiser)
    ah = patched_copy(u3d.denoiser, [AppearanceHighway(freeu=None)])
    ahf = patched_copy(u3d.denoiser, [AppearanceHighway()])  # + the authors' FreeU-style scaling (s1 = 1.1)
    recs = []
    with torch.no_grad():
        for m in (plain, ah, ahf):
            r = _record_up_inputs(m)  # registered after AH's hooks: sees what the blocks really get
            u3d.predict(x, t, e, denoiser=m)
            recs.append(r)
    p, a, f = recs
    # up block 0 and everything before it: untouched
    assert torch.equal(p["up0"][0], a["up0"][0]) and all(torch.equal(u, v) for u, v in zip(p["up0"][1], a["up0"][1]))
    # up block 1: same input; first skip (down block 1's downsampler output) kept; the others moved
    assert torch.equal(p["up1"][0], a["up1"][0])
    assert torch.equal(p["up1"][1][0], a["up1"][1][0])
    n = len(u3d.denoiser.down_blocks[2].attentions)
    for j in range(n):
        assert torch.equal(a["up1"][1][1 + j], p[f"spatial{j}"])  # the spatial-attention output of down block 2
        assert not torch.equal(a["up1"][1][1 + j], p["up1"][1][1 + j])  # not the temporal-attention output
    # the skips of up blocks 2 and 3 are the plain ones
    for i in (2, 3):
        assert all(torch.equal(u, v) for u, v in zip(p[f"up{i}"][1], a[f"up{i}"][1]))
    # FreeU-style scaling: up block 2's first resnet gets its skip x 1.1 (h has block_out_channels[2] channels),
    # its second resnet (h has block_out_channels[1] channels, s2 = 1) is not scaled
    c_skip0 = p["up2"][1][-1].shape[1]
    c_h = f["up2res0"].shape[1] - c_skip0
    assert c_h == u3d.denoiser.config.block_out_channels[2]
    assert torch.allclose(f["up2res0"][:, c_h:], 1.1 * f["up2"][1][-1])
    c_skip1 = p["up2"][1][-2].shape[1]
    assert torch.equal(f["up2res1"][:, -c_skip1:], f["up2"][1][-2])


def test_ah_is_refused_where_there_are_no_unet_skips(tiny, ad):
    from dual_adapter.patches import shallow_copy_module
    from dual_adapter.unet_motion import AppearanceHighway

    with pytest.raises(DualAdapterError, match="AH"):
        AppearanceHighway().apply(shallow_copy_module(tiny.transformer))
    from dual_adapter.commands.unet import generate_patches

    class A:
        ah = True

    with pytest.raises(DualAdapterError, match="CogVideoX"):
        generate_patches(A(), tiny)


# ------------------------------------------------------------------------------ TAP


def test_tap_never_touches_a_value_projection_on_any_backbone(u3d, ad, tiny):
    from dual_adapter import lora as L
    from dual_adapter.unet_motion import PRESETS, motion_lora_targets

    for bb in (u3d, ad):
        n_temporal = len(bb.attention_modules("temporal"))
        for preset in ("tap", "k_out"):
            names = motion_lora_targets(bb, preset)
            assert len(names) == 2 * n_temporal
            assert not [n for n in names if n.endswith("to_v")]
            assert all(any(n.startswith(a + ".") for a in bb.attention_modules("temporal")) for n in names)
        assert sum(n.endswith("to_v") for n in motion_lora_targets(bb, "full")) == n_temporal
    assert PRESETS["k_out"] == ("to_k", "to_out.0")  # the authors' code (utils/lora.py l.359)
    for preset in ("tap", "k_out"):
        names = L.LoraSpec.from_preset(preset).target_modules(tiny.transformer)
        assert names and not [n for n in names if "to_v" in n]


def test_unet_motion_lora_trains_saves_loads_back_and_applies(u3d, ad, tmp_path, tiny):
    from dual_adapter import unet_motion as UM
    from dual_adapter.patches import patched_copy

    clip = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    v_before = {n: m.to_v.weight.clone() for n, m in u3d.attention_modules("temporal").items()}
    cfg = UM.UNetMotionTrainConfig(preset="tap", rank=4, steps=2, lr=1e-2, spatial_path=True, debiased_loss=True,
                                   spatial_skip_prob=0.0)
    motion, spatial, losses = UM.train_unet_motion_lora(u3d, [clip], "a person is playing guitar", cfg)
    assert len(losses) == 2 and "loss_spatial" in losses[0] and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    assert not [m for m in motion.modules if "to_v" in m or "attentions" in m.split(".")]  # temporal q/k only
    assert spatial is not None and all(".attentions." in m for m in spatial.modules)
    assert all(torch.equal(m.to_v.weight, v_before[n]) for n, m in u3d.attention_modules("temporal").items())
    path = UM.save_unet_lora(motion, tmp_path / "m.safetensors")
    with pytest.raises(DualAdapterError, match="exists"):
        UM.save_unet_lora(motion, path)
    back = UM.load_unet_lora(path, u3d)
    assert back.modules == motion.modules and back.backbone == "unet3d"
    assert all(torch.equal(back.state_dict[k], motion.state_dict[k]) for k in motion.state_dict)
    x, t, e = _inputs(u3d)
    with torch.no_grad():
        ref = u3d.predict(x, t, e)
        on = u3d.predict(x, t, e, denoiser=patched_copy(u3d.denoiser, [UM.UNetLoraPatch(back, 1.0, backbone=u3d)]))
        zero = u3d.predict(x, t, e, denoiser=patched_copy(u3d.denoiser, [UM.UNetLoraPatch(back, 0.0)]))
    assert not torch.allclose(on, ref) and torch.equal(zero, ref)
    # a LoRA of another backbone is refused with its name
    with pytest.raises(DualAdapterError, match="ZeroScope"):
        UM.load_unet_lora(path, ad)
    from dual_adapter.io import save_safetensors

    cog = save_safetensors({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 64)},
                           tmp_path / "cog.safetensors")
    with pytest.raises(DualAdapterError, match="CogVideoX LoRA"):
        UM.load_unet_lora(cog)


# ------------------------------------------------------------------------------ CustomTTT on AnimateDiff


def test_customttt_on_tiny_animatediff_end_to_end(ad):
    from dual_adapter import customttt_unet as CT
    from dual_adapter import unet_motion as UM
    from dual_adapter import unet_sampling

    assert CT.layer_names(ad, [2, 6]) == ["down_blocks.2", "up_blocks.3"]
    assert CT.layer_names(ad, [2, 5]) == ["down_blocks.2", "up_blocks.2"]
    with pytest.raises(DualAdapterError, match="out of range"):
        CT.layer_names(ad, [7])
    # bypassing the motion modules makes frames independent: a 1-frame run equals frame 0 of a 2-frame run
    x, t, e = _inputs(ad, frames=2)
    with torch.no_grad(), CT.without_motion_modules(ad, ad.denoiser):
        two = ad.predict(x, t, e)
        one = ad.predict(x[:, :, :1], t, e)
    assert torch.allclose(two[:, :, :1], one, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    photos = [torch.rand(32, 32, 3, generator=g) for _ in range(2)]
    clip = torch.rand(2, 32, 32, 3, generator=g)
    cfg = CT.CustomTTTUNetConfig(rank=4, appearance_steps=1, motion_steps=1, ttt_steps=1, sampler_steps=2,
                                 teacher_steps=1, num_frames=2, appearance_lr=1e-2, motion_lr=1e-2, ttt_lr=1e-2)
    res = CT.run_customttt(ad, photos, [clip], appearance_prompt="a photo of a sks dog",
                           motion_prompt="a person is playing guitar", prompt="a sks dog is playing guitar", config=cfg)
    assert all(m.split(".attentions.")[0] in ("down_blocks.2", "up_blocks.3") for m in res.appearance.modules)
    assert all(".motion_modules." in m and m.split(".motion_modules.")[0] in ("down_blocks.2", "up_blocks.2")
               for m in res.motion.modules)
    assert set(res.merged.modules) == set(res.appearance.modules) | set(res.motion.modules)
    changed = [k for k in res.merged.state_dict if not torch.equal(res.merged.state_dict[k],
               {**res.appearance.state_dict, **res.motion.state_dict}[k])]
    assert changed  # TTT moved the weights of the merged LoRA set
    assert res.optimizer in ("lion", "adamw") and len(res.losses["ttt"]) == 1
    lat = unet_sampling.sample(ad, ad.encode_prompt("a sks dog is playing guitar"), None, num_frames=2, steps=1,
                               patches=[UM.UNetLoraPatch(res.merged)])
    assert lat.shape == (1, 4, 2, 16, 16) and torch.isfinite(lat).all()


# ------------------------------------------------------------------------------ workflows, CLI


def test_the_loader_lists_the_models_of_every_folder(out_dir, tmp_path):
    from dual_adapter.commands.run import load_node_classes

    models = tmp_path / "models"
    for sub, cfg in (("diffusers/cog/transformer", "CogVideoXTransformer3DModel"), ("CogVideo/zs/unet", "UNet3DConditionModel")):
        (models / sub).mkdir(parents=True)
        (models / sub / "config.json").write_text(json.dumps({"_class_name": cfg}))
    classes = load_node_classes()
    loader = classes["DualAdapterLoadVideoModel"]  # one loader: the folder's contents decide the backbone
    choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert {"tiny-unet3d", "tiny-animatediff", "cog", "zs"} <= set(choices)
    assert choices == classes["DualAdapterUNetVideoLoader"].INPUT_TYPES()["required"]["model"][0]
    with pytest.raises(DualAdapterError, match="cog"):  # a CogVideoX folder without its parts
        loader().load("cog")


@pytest.mark.parametrize("name", ["zeroscope_tap_ah", "animatediff_customttt"])
def test_unet_workflows_run_headless(name, out_dir):
    from dual_adapter.commands.run import load_node_classes
    from dual_adapter.graph import load_workflow, run_workflow

    out = run_workflow(load_workflow(ROOT / "workflows" / "api" / f"{name}.json"), load_node_classes())
    saved = [e for k, v in out.items() if k.startswith("ui:") for e in v.get("images", [])]
    assert saved and (out_dir / saved[0]["subfolder"] / saved[0]["filename"]).stat().st_size > 0
    assert list((out_dir / "loras").glob("*.safetensors"))


def test_cli_generate_with_ah_and_lora_on_tiny_unet3d(tmp_path, capsys):
    from dual_adapter.cli import main

    clip = tmp_path / "c.gif"
    from dual_adapter import media

    media.write_video(torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)), clip, fps=8)
    lo = tmp_path / "m.safetensors"
    assert main(["train-lora", "--model", "tiny-unet3d", "--motion", str(clip), "--prompt", "a car turns",
                 "--frames", "2", "--rank", "2", "--steps", "1", "--out", str(lo), "--quiet"]) == 0
    assert lo.is_file() and (tmp_path / "runs" / "unet" / "m_00001_" / "losses.jsonl").is_file()
    out = tmp_path / "v.gif"
    assert main(["generate", "--model", "tiny-unet3d", "--prompt", "a dog", "--frames", "2", "--steps", "1",
                 "--lora", str(lo), "--ah", "--out", str(out), "--quiet"]) == 0
    assert out.stat().st_size > 0 and "AH" in capsys.readouterr().out
    assert main(["generate", "--model", "tiny", "--prompt", "a dog", "--ah", "--steps", "1",
                 "--out", str(tmp_path / "x.gif"), "--quiet"]) == 2


def test_unet_train_lora_follows_the_run_rules_of_the_cogvideox_trainers(u3d, tmp_path, capsys):
    """Lock, never replacing a run's files, --resume needs a state file, and the state file resumes the run
    (it used to skip all of these: a leftover checkpoint was overwritten, --resume was ignored)."""
    from dual_adapter import media
    from dual_adapter import unet_motion as UM
    from dual_adapter.cli import main
    from dual_adapter.errors import InterruptedByUser
    from dual_adapter.io import lock_path

    clip = tmp_path / "c.gif"
    media.write_video(torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)), clip, fps=8)
    args = ["train-lora", "--model", "tiny-unet3d", "--motion", str(clip), "--prompt", "a car turns",
            "--frames", "2", "--rank", "2", "--steps", "1", "--quiet"]
    lo = tmp_path / "m.safetensors"
    assert main(args + ["--out", str(lo), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not lo.exists()
    kept = tmp_path / "runs" / "unet" / "m_00001_"
    kept.mkdir(parents=True)
    (kept / "checkpoint.safetensors").write_bytes(b"kept")
    (kept / "state.safetensors").write_bytes(b"state")
    assert main(args + ["--out", str(lo)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and "--resume" in err and "another --out" in err
    assert (kept / "checkpoint.safetensors").read_bytes() == b"kept" and not lo.exists()
    lock_path(tmp_path / "n.safetensors").write_text(json.dumps({"pid": __import__("os").getpid(),
                                                                 "host": __import__("socket").gethostname()}))
    assert main(args + ["--out", str(tmp_path / "n.safetensors")]) == 2
    assert "lock" in capsys.readouterr().err.lower()

    # the state file holds the weights: an interrupted run resumed equals the uninterrupted one
    x = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    cfg = UM.UNetMotionTrainConfig(rank=2, steps=3, lr=1e-2, dropout=0.0, checkpoint_every=1)
    state = tmp_path / "r.state.safetensors"

    def stop(step, total, rec):
        if step == 2:
            raise InterruptedByUser("stop")

    with torch.random.fork_rng():  # the LoRA's random init draws from the global generator
        torch.manual_seed(0)
        full, _, _ = UM.train_unet_motion_lora(u3d, [x], "a car turns", cfg)
        torch.manual_seed(0)
        with pytest.raises(InterruptedByUser):
            UM.train_unet_motion_lora(u3d, [x], "a car turns", cfg, callback=stop, state_path=state)
    assert state.is_file()
    resumed, _, losses = UM.train_unet_motion_lora(u3d, [x], "a car turns", cfg, state_path=state, resume=True)
    assert [r["step"] for r in losses] == [1, 2, 3]
    assert all(torch.equal(resumed.state_dict[k], full.state_dict[k]) for k in full.state_dict)


def test_customttt_optimizer_is_lion_when_installed_else_adamw_with_a_message(monkeypatch, caplog):
    import importlib.util

    from dual_adapter import customttt_unet as CT

    real = importlib.util.find_spec
    monkeypatch.setattr(CT, "_WARNED_NO_LION", False)
    monkeypatch.setattr(CT.importlib.util, "find_spec", lambda n, *a: None if n == "lion_pytorch" else real(n, *a))
    with caplog.at_level("WARNING"):
        assert CT.pick_optimizer("auto") == "adamw"
    assert "lion-pytorch is not installed" in caplog.text
    with pytest.raises(DualAdapterError, match="lion-pytorch"):
        CT.pick_optimizer("lion")
    monkeypatch.setattr(CT.importlib.util, "find_spec", lambda n, *a: object() if n == "lion_pytorch" else real(n, *a))
    assert CT.pick_optimizer("auto") == "lion" and CT.pick_optimizer("adamw") == "adamw"


def test_tiny_clip_tokenizer_ids_are_the_same_in_every_process():
    # a trained BPE broke frequency ties differently per process (hash seed): tiny U-Net samples then
    # differed between runs of the same seed
    import subprocess
    import sys

    code = ("from dual_adapter.backbones._unet import build_tiny_clip_tokenizer as b; "
            "print(b()('a Teddy bear, playing guitar *').input_ids)")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout.strip() for h in (1, 2, 3)}
    assert len(outs) == 1, outs
    from dual_adapter.backbones._unet import build_tiny_clip_tokenizer

    tok = build_tiny_clip_tokenizer()
    ids = tok("a dog").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == "a dog"
