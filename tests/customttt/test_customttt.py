"""CustomTTT: prompt influence, layer-selective LoRAs, TTT merge (docs/customttt.md), CLI and nodes."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dual_adapter import customttt as C
from dual_adapter.backbones.cogvideox import build_tiny, encode_prompt, transformer_forward
from dual_adapter.errors import DualAdapterError
from dual_adapter.lora import LoraFile, LoraPatch, load_lora, lora_modules
from dual_adapter.patches import patched_copy, shallow_copy_module
from dual_adapter.sampling import make_scheduler, sample

from helpers import random_lora as rand_lora


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def out_of(bundle, patches, x, e, t, model=None):
    with torch.no_grad():
        return transformer_forward(model if model is not None else patched_copy(bundle.transformer, patches), x, e, t)


@pytest.fixture(scope="module")
def probe(tiny):
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 4, 8, 12, generator=g), encode_prompt(tiny, "dog * is turning on a road").expand(2, -1, -1), \
        torch.tensor([300, 800])


# ---------------------------------------------------------------- prompt influence

CONCEPTS = {"appearance": "a photo of a dog * sitting on the grass", "motion": "a car is turning on a road"}


def test_influence_deterministic_all_blocks_is_full_concept(tiny):
    groups = [[0], [1], [2], [3], [0, 1, 2, 3]]
    kw = dict(groups=groups, timesteps=(300, 700), top_k=2)
    r1 = C.prompt_influence(tiny, CONCEPTS, "", seeds=(0,), **kw)
    r2 = C.prompt_influence(tiny, CONCEPTS, "", seeds=(0,), **kw)
    assert r1.scores == r2.scores and r1.closeness == r2.closeness and r1.recommended == r2.recommended
    r3 = C.prompt_influence(tiny, CONCEPTS, "", seeds=(5,), **kw)
    assert r3.scores != r1.scores
    for c in CONCEPTS:
        # the concept at every block is the full-concept prediction
        assert r1.scores[c][4] == pytest.approx(1.0, abs=1e-6) and r1.closeness[c][4] == pytest.approx(1.0, abs=1e-5)
        assert all(math.isfinite(s) for s in r1.scores[c])
        assert r1.concept_shift[c] > 0
        top = r1.ranking(c)[:2]
        assert r1.recommended[c] == sorted({b for g in top for b in groups[g]})
    table = r1.table()
    assert "recommended appearance blocks" in table and "recommended motion blocks" in table
    img = r1.plot()
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and 0 <= float(img.min()) <= float(img.max()) <= 1
    json.dumps(r1.to_dict())


def test_influence_matches_brute_force_injection(tiny):
    """The score of group {1, 2} equals the definition computed with plain hooks (no replay shortcut)."""
    t, seed = 600, 4
    res = C.prompt_influence(tiny, {"c": CONCEPTS["motion"]}, "a photo", groups=[[1, 2], [3]], timesteps=(t,),
                             seeds=(seed,), top_k=1)
    from dual_adapter.training import make_noise_scheduler

    sch = make_noise_scheduler(tiny)
    g = torch.Generator().manual_seed(seed)
    shape = (1, 3, 4, 8, 12)
    x0 = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    tt = torch.tensor([t])
    x_t = sch.add_noise(x0, eps, tt)
    e_n, e_c = encode_prompt(tiny, "a photo"), encode_prompt(tiny, CONCEPTS["motion"])

    def run(e, override=None):
        m = shallow_copy_module(tiny.transformer)
        seen = {}
        hooks = []
        for i, blk in enumerate(m.transformer_blocks):
            def pre(mod, args, kwargs, i=i):
                seen[i] = kwargs["encoder_hidden_states"]
                if override is not None:
                    kwargs = dict(kwargs, encoder_hidden_states=override[i])
                return args, kwargs
            hooks.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
        with torch.no_grad():
            v = transformer_forward(m, x_t, e, tt)
        return sch.get_velocity(v, x_t, tt), seen

    p_n, text_n = run(e_n)
    p_c, text_c = run(e_c)
    p_g, _ = run(e_n, {i: (text_c[i] if i in (1, 2) else text_n[i]) for i in range(4)})
    d_c = (p_c - p_n).double()
    want = float(((p_g - p_n).double() * d_c).sum() / (d_c * d_c).sum())
    assert res.scores["c"][0] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert res.closeness["c"][0] == pytest.approx(1 - float((p_g - p_c).double().norm() / d_c.norm()), abs=1e-5)


def test_influence_errors(tiny):
    with pytest.raises(DualAdapterError, match="same prediction"):
        C.prompt_influence(tiny, {"a": "dog *"}, "dog *", timesteps=(500,), seeds=(0,), top_k=1)
    with pytest.raises(DualAdapterError, match="top_k"):
        C.prompt_influence(tiny, "dog *", top_k=9)
    with pytest.raises(DualAdapterError, match="timestep"):
        C.prompt_influence(tiny, "dog *", timesteps=(1000,), top_k=1)
    with pytest.raises(DualAdapterError, match="out of range"):
        C.prompt_influence(tiny, "dog *", groups=[[0, 7]], top_k=1)
    with pytest.raises(DualAdapterError, match="space"):
        C.prompt_influence(tiny, "dog *", space="eps")
    assert C.make_groups(30, 6)[-1] == [24, 25, 26, 27, 28, 29] and len(C.make_groups(30, 7)) == 5
    assert C.parse_blocks("5-7, 2") == [2, 5, 6, 7] and C.parse_blocks("") is None
    with pytest.raises(DualAdapterError):
        C.parse_blocks("1,x")


# ---------------------------------------------------------------- layer-selective LoRAs


def test_selective_loras_touch_only_their_blocks(tiny):
    cfg = C.selective_train_config("appearance", steps=2, checkpoint_every=0)
    assert cfg.lr == pytest.approx(1e-4) and C.selective_train_config("motion", optimizer="lion").lr == pytest.approx(5e-5)
    photo = torch.rand(64, 96, 3, generator=torch.Generator().manual_seed(0))
    spec = C.selective_spec("appearance", "1,3", rank=4)
    lf, res = C.train_selective_lora(tiny, "appearance", None, prompt="a photo of dog *", photos=[photo], spec=spec,
                                     cfg=cfg)
    assert lf.blocks == [1, 3] and res.steps_done == 2
    assert all(m.split(".")[1] in ("1", "3") for m in lf.modules)
    assert len(lf.modules) == 2 * 4  # full preset: q, k, v, out in each selected block
    clip = torch.rand(9, 64, 96, 3, generator=torch.Generator().manual_seed(1))
    lm, _ = C.train_selective_lora(tiny, "motion", [2], prompt="a car is turning", clips=[clip],
                                   spec=C.selective_spec("motion", [2], rank=4, targets="tap"),
                                   cfg=C.selective_train_config("motion", steps=1, checkpoint_every=0))
    assert lm.blocks == [2] and sorted(lm.targets) == ["attn1.to_k", "attn1.to_q"]
    # a model carrying it has LoRA layers in block 2 only
    m = patched_copy(tiny.transformer, [LoraPatch(lm)])
    assert {n.split(".")[1] for n in lora_modules(m)} == {"2"}
    with pytest.raises(DualAdapterError, match="photos"):
        C.train_selective_lora(tiny, "appearance", [0], prompt="x", clips=[clip])


# ---------------------------------------------------------------- merging and TTT


def test_merge_loras_is_exact_stacking(tiny, probe):
    x, e, t = probe
    a = rand_lora(tiny, [0, 1], ["attn1.to_q", "ff.net.2"], 1, rank=4, alpha=8.0)
    b = rand_lora(tiny, [1, 2], ["attn1.to_q", "attn1.to_v"], 2, rank=3, alpha=1.5)
    merged = C.merge_loras([a, b], strengths=[0.7, -1.3])
    assert merged.ranks["transformer_blocks.1.attn1.to_q"] == 7  # shared module: ranks concatenated
    assert merged.ranks["transformer_blocks.0.ff.net.2"] == 4
    ref = out_of(tiny, [LoraPatch(a, 0.7), LoraPatch(b, -1.3)], x, e, t)
    got = out_of(tiny, [LoraPatch(merged)], x, e, t)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref, out_of(tiny, [], x, e, t), atol=1e-3)


def test_zero_ttt_steps_on_disjoint_blocks_equals_stacking(tiny, probe, tmp_path):
    x, e, t = probe
    a = rand_lora(tiny, [0, 2], ["attn1.to_q", "attn1.to_v"], 5)
    m = rand_lora(tiny, [1, 3], ["attn1.to_k", "ff.net.0.proj"], 6, rank=2, alpha=2.0)
    res = C.ttt_merge(tiny, a, m, appearance_prompt="dog *", motion_prompt="a car is turning", prompt="dog * turning",
                      config=C.TTTConfig(steps=0))
    assert res.references == {} and res.train.steps_done == 0
    assert sorted(res.lora.modules) == sorted(a.modules + m.modules)
    path = res.lora.save(tmp_path / "merged.safetensors")
    back = load_lora(path)
    assert back.metadata["method"] == "CustomTTT" and back.metadata["ttt"]["steps_done"] == 0
    torch.testing.assert_close(out_of(tiny, [LoraPatch(back)], x, e, t),
                               out_of(tiny, [LoraPatch(a), LoraPatch(m)], x, e, t), atol=1e-5, rtol=1e-5)


def test_ttt_lowers_combined_loss_changes_only_lora_and_file_reproduces_student(tiny, probe, tmp_path):
    x, e, t = probe
    # overlapping blocks (block 1: both LoRAs on to_v) and the feed-forward path so that the student can learn
    a = rand_lora(tiny, [0, 1], ["attn1.to_v", "ff.net.2"], 11, rank=4, alpha=8.0, scale=0.05)
    m = rand_lora(tiny, [1, 2], ["attn1.to_v", "ff.net.0.proj"], 12, rank=4, alpha=4.0, scale=0.05)
    base = {k: v.clone() for k, v in tiny.transformer.state_dict().items()}
    seen = []
    cfg = C.TTTConfig(steps=15, lr=3e-3, teacher_steps=2, teacher_schedule=5, eval_draws=6, checkpoint_every=5)
    ckpt = tmp_path / "ckpt.safetensors"
    res = C.ttt_merge(tiny, a, m, appearance_prompt="a photo of dog *", motion_prompt="a car is turning on a road",
                      prompt="dog * is turning on a road", config=cfg, keep_student=True, checkpoint_path=ckpt,
                      callback=lambda k, n, info: seen.append((k, n, info.get("phase"))))
    # progress: 2 f teacher steps then one per TTT step
    assert [s[0] for s in seen] == list(range(1, 2 * 2 + 15 + 1)) and {s[1] for s in seen} == {19}
    assert seen[0][2] == "teacher_appearance" and seen[-1][2] == "ttt"
    assert res.reference_timestep == 0  # default reference: the teachers' x0 predictions at step f
    assert set(res.references) == {"appearance", "motion"} and res.references["motion"].shape == (1, 3, 4, 8, 12)
    assert res.eval["after"]["loss"] < res.eval["before"]["loss"]
    assert len(res.train.losses) == 15 and {"loss_appearance", "loss_motion"} <= set(res.train.losses[0])
    # the loaded model is untouched; the student shares its frozen tensors; every LoRA tensor moved
    for k, v in tiny.transformer.state_dict().items():
        assert torch.equal(v, base[k]), k
    student = res.student
    lora_names = {n for n, p in student.named_parameters() if "lora_" in n}
    for n, p in student.named_parameters():
        if n in lora_names:
            assert p.requires_grad
        else:
            assert not p.requires_grad
            key = n.replace(".base_layer", "")
            assert torch.equal(p, base[key]), n
    for name, lf in (("appearance", a), ("motion", m)):
        layers = lora_modules(student, name)
        assert sorted(layers) == sorted(lf.modules)
        for mod, layer in layers.items():
            assert not torch.equal(layer.lora_B[name].weight.detach().cpu(), lf.state_dict[f"transformer.{mod}.lora_B.weight"])
    # the merged file (rank-concatenated on block 1's to_v) reproduces the student
    assert res.lora.ranks["transformer_blocks.1.attn1.to_v"] == 8
    path = res.lora.save(tmp_path / "merged.safetensors")
    got = out_of(tiny, [LoraPatch(load_lora(path))], x, e, t)
    torch.testing.assert_close(got, out_of(tiny, [], x, e, t, model=student), atol=1e-5, rtol=1e-5)
    assert load_lora(ckpt).metadata["ttt"]["completed"] is True


def test_interrupted_ttt_keeps_its_checkpoint(tiny, tmp_path):
    from dual_adapter.errors import InterruptedByUser

    a = rand_lora(tiny, [0], ["attn1.to_v"], 1)
    m = rand_lora(tiny, [1], ["attn1.to_v"], 2)

    def stop(k, n, info):
        if info.get("phase") == "ttt" and k == 2 + 3:
            raise InterruptedByUser("stop")

    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(InterruptedByUser):
        C.ttt_merge(tiny, a, m, appearance_prompt="dog *", motion_prompt="turning", prompt="dog * turning",
                    config=C.TTTConfig(steps=10, teacher_steps=1, teacher_schedule=2, lr=1e-3), callback=stop,
                    checkpoint_path=ckpt)
    md = load_lora(ckpt).metadata["ttt"]
    assert md["steps_done"] == 3 and md["completed"] is False


def test_teacher_reference(tiny):
    e = encode_prompt(tiny, "dog *")
    neg = encode_prompt(tiny, "")
    z, t_f = C.teacher_reference(tiny, None, e, neg, teacher_steps=5, teacher_schedule=25, cfg=6.0, seed=3,
                                 reference="z_f_as_x0")
    sch = make_scheduler(tiny, "ddim")
    sch.set_timesteps(25)
    assert z.shape == (1, 3, 4, 8, 12) and t_f == int(sch.timesteps[5])
    full, t0 = C.teacher_reference(tiny, None, e, neg, teacher_steps=4, teacher_schedule=4, cfg=6.0, seed=3)
    ref = sample(tiny, e, neg, steps=4, cfg=6.0, seed=3, scheduler="ddim")
    assert t0 == 0 and torch.equal(full, ref)
    x0, tx = C.teacher_reference(tiny, None, e, neg, teacher_steps=1, teacher_schedule=4, seed=3, reference="x0_pred")
    assert tx == 0 and x0.shape == z.shape and torch.isfinite(x0).all()


def test_ttt_config_and_input_errors(tiny):
    a = rand_lora(tiny, [0], ["attn1.to_q"], 1)
    kw = dict(appearance_prompt="dog *", motion_prompt="turning", prompt="dog * turning")
    for bad, match in ((dict(renoise_timesteps=(500, 100)), "renoise"), (dict(teacher_steps=30), "teacher_steps"),
                       (dict(reference="eps"), "reference"), (dict(w_appearance=-1.0), "w_appearance"),
                       (dict(optimizer="sgd"), "optimizer")):
        with pytest.raises(DualAdapterError, match=match):
            C.ttt_merge(tiny, a, a, config=C.TTTConfig(**bad), **kw)
    with pytest.raises(DualAdapterError, match="prompt"):
        C.ttt_merge(tiny, a, a, appearance_prompt="dog *", motion_prompt=" ", prompt="x")
    with pytest.raises(DualAdapterError, match="LoraFile"):
        C.ttt_merge(tiny, a, "motion.safetensors", **kw)
    other = build_tiny("tiny", num_layers=6)
    far = rand_lora(other, [5], ["attn1.to_q"], 2)
    with pytest.raises(DualAdapterError, match="not in this model"):
        C.ttt_merge(tiny, a, far, **kw)
    import importlib.util

    if importlib.util.find_spec("lion_pytorch") is None:
        with pytest.raises(DualAdapterError, match="lion-pytorch"):
            C.ttt_merge(tiny, a, a, config=C.TTTConfig.authors(steps=1, teacher_steps=1, teacher_schedule=1), **kw)


# ---------------------------------------------------------------- CLI and nodes


def test_cli_prompt_influence_and_ttt_merge(tiny, tmp_path, capsys):
    from dual_adapter.cli import main

    js = tmp_path / "influence.json"
    rc = main(["prompt-influence", "--model", "tiny", "--appearance-prompt", "a photo of dog *", "--motion-prompt",
               "a car is turning", "--timesteps", "500", "--seeds", "0", "--group-size", "2", "--top-k", "1",
               "--json", str(js), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "train-lora --blocks" in out
    data = json.loads(js.read_text())
    assert data["groups"] == [[0, 1], [2, 3]] and len(data["recommended"]["motion"]) == 2

    a, m = tmp_path / "a.safetensors", tmp_path / "m.safetensors"
    rand_lora(tiny, [0, 1], ["attn1.to_q"], 1).save(a)
    rand_lora(tiny, [1, 2], ["attn1.to_q", "attn1.to_k"], 2).save(m)
    out_f = tmp_path / "merged.safetensors"
    args = ["ttt-merge", "--model", "tiny", "--appearance", str(a), "--appearance-prompt", "dog *", "--motion", str(m),
            "--motion-prompt", "a car is turning", "--prompt", "dog * is turning", "--steps", "2", "--teacher-steps",
            "1", "--teacher-schedule", "2", "--eval-draws", "1", "--out", str(out_f), "--quiet"]
    assert main(args) == 0
    lf = load_lora(out_f)
    assert lf.metadata["method"] == "CustomTTT" and lf.blocks == [0, 1, 2]
    run = tmp_path / "runs" / "customttt" / "merged_00001_"
    assert (run / "losses.jsonl").is_file() and not (run / "checkpoint.safetensors").exists()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(args[:-3] + ["--renoise-timesteps", "9,3", "--out", str(tmp_path / "x.safetensors")]) == 2


def test_nodes_prompt_influence_and_ttt_merge(tiny, out_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from nodes.customttt_nodes import NODE_CLASS_MAPPINGS as N
    from dual_adapter.patches import PatchedModel

    model = PatchedModel(tiny)
    with torch.inference_mode():
        r = N["DualAdapterPromptInfluence"]().analyse(model, "a photo of dog *", "a car is turning", "", group_size=1,
                                                      top_k=2, timesteps="500", seeds="0")
    table, plot, app_blocks, mot_blocks = r["result"]
    assert "recommended" in table and plot.shape[0] == 1 and plot.shape[-1] == 3
    assert len(C.parse_blocks(app_blocks)) == 2 and len(C.parse_blocks(mot_blocks)) == 2
    a = rand_lora(tiny, [0], ["attn1.to_v", "ff.net.2"], 1)
    m = rand_lora(tiny, [0, 3], ["attn1.to_v"], 2)
    before = {k: v.clone() for k, v in a.state_dict.items()}
    with torch.inference_mode():
        lf, loss_plot = N["DualAdapterTTTMerge"]().merge(model, a, "dog *", m, "a car is turning", "dog * turning",
                                                         steps=2, teacher_steps=1, learning_rate=1e-3,
                                                         teacher_schedule=2)
    assert isinstance(lf, LoraFile) and lf.ranks["transformer_blocks.0.attn1.to_v"] == 8
    assert loss_plot.ndim == 4 and all(torch.equal(v, before[k]) for k, v in a.state_dict.items())
    assert (out_dir / "runs" / "customttt" / "customttt_00001_" / "customttt.safetensors").is_file()
    with pytest.raises(DualAdapterError, match="VIDEO_LORA"):
        N["DualAdapterTTTMerge"]().merge(model, "a.safetensors", "dog *", m, "x", "y", steps=0)


def test_node_train_lora_with_block_selection(out_dir):
    """The block-selection node trains an appearance LoRA on photos only on the chosen blocks."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS["DualAdapterTrainSelectiveLoRA"]
    model = nodes.NODE_CLASS_MAPPINGS["DualAdapterLoadVideoModel"]().load("tiny")[0]
    photos = torch.rand(2, 64, 96, 3)
    with torch.inference_mode():
        lora, plot = cls().train(model, "appearance", "a photo of a dog *", blocks="0,2", rank=4, steps=3,
                                 learning_rate=1e-3, photos=photos)
    blocks = {int(k.split("transformer_blocks.")[1].split(".")[0]) for k in lora.state_dict}
    assert blocks == {0, 2}
    assert plot.shape[0] == 1 and plot.shape[-1] == 3
    with pytest.raises(DualAdapterError, match="needs 'clip'"):
        cls().train(model, "motion", "x", photos=photos)


def test_influence_reference_reads_a_still_webp_as_a_photo_and_an_animated_one_as_a_clip(tiny, tmp_path):
    """`customttt influence --reference`: a WebP can be a photo or a clip (ComfyUI writes both); only an animated
    one is read as a clip, so a still WebP gives the same latent as the same picture saved as PNG."""
    from PIL import Image

    from dual_adapter import media
    from dual_adapter.commands.customttt import _reference_latents

    F0, H, W = tiny.default_size
    photo = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1))
    px = Image.fromarray((photo.numpy() * 255).round().astype("uint8"))
    px.save(tmp_path / "still.webp", format="WEBP", lossless=True)
    px.save(tmp_path / "still.png")
    still = _reference_latents(tiny, str(tmp_path / "still.webp"), None, None, None)
    assert torch.equal(still, _reference_latents(tiny, str(tmp_path / "still.png"), None, None, None))
    clip = media.write_video(torch.rand(F0, H, W, 3, generator=torch.Generator().manual_seed(2)), tmp_path / "anim.webp",
                             fps=8)
    moving = _reference_latents(tiny, str(clip), None, None, None)
    assert moving.shape[1] > still.shape[1] == 1  # [B, F, C, h, w]: the clip's latent frames vs one for a photo
