"""The miniature world: generator, scorers on ground-truth videos, the VAE substitute, the shipped ``mini``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError, InterruptedByUser
from dual_adapter.miniworld import scorers as S
from dual_adapter.miniworld import world as W


# --------------------------------------------------------------------------------------------
# world


def test_render_layout_seeded_and_captioned():
    spec = W.VideoSpec("star", "green", "striped", "small", "right", "black")
    v = W.render(spec, seed=3)
    assert v.shape == (W.FRAMES, W.HEIGHT, W.WIDTH, 3) and v.dtype == torch.float32
    assert 0 <= float(v.min()) and float(v.max()) <= 1
    assert torch.equal(v, W.render(spec, seed=3)) and not torch.equal(v, W.render(spec, seed=4))
    assert W.caption(spec) == "a small green striped star moving right on a black background"
    assert W.parse_prompt(W.caption(spec)) == {"size": "small", "colour": "green", "texture": "striped",
                                               "shape": "star", "motion": "right", "background": "black"}
    with pytest.raises(DualAdapterError, match="shape"):
        W.render(W.VideoSpec(shape="hexagon"))


def test_pretraining_never_sees_held_out_subjects_or_motions():
    it = W.pretrain_sampler(0)
    specs = [next(it) for _ in range(600)]
    combos = {(s.shape, s.texture) for s in specs}
    assert len(W.HELD_OUT_SUBJECTS) >= 3 and len(W.HELD_OUT_MOTIONS) >= 3
    for sub in W.HELD_OUT_SUBJECTS.values():
        assert (sub.shape, sub.texture) not in combos
    assert not {s.motion for s in specs} & set(W.HELD_OUT_MOTIONS)
    assert {s.motion for s in specs} == set(W.HELD_IN_MOTIONS)
    # every held-out motion word is in the tokenizer vocabulary (the base knows the word, never the motion)
    for m in W.HELD_OUT_MOTIONS:
        assert W.MOTION_PHRASES[m] in W.vocabulary()


def test_customization_inputs():
    photos = W.subject_photos("striped_star", n=4, seed=1)
    assert photos.shape == (4, W.HEIGHT, W.WIDTH, 3)
    t = S.track(photos)
    assert bool(t.present.all()) and float(t.area.std()) > 1  # varied sizes
    clips, specs = W.motion_clips("orbit", n=3, seed=0, exclude="striped_star")
    assert len(clips) == 3 and all(c.shape == (W.FRAMES, W.HEIGHT, W.WIDTH, 3) for c in clips)
    star = W.HELD_OUT_SUBJECTS["striped_star"]
    assert all(s.motion == "orbit" and s.shape != star.shape and s.colour != star.colour for s in specs)
    assert W.identity_prompt("striped_star") == "a * star on a gray background"
    assert W.combined_prompt("striped_star", "orbit") == "a * star orbiting on a gray background"
    assert W.motion_prompt("bounce") == "a shape bouncing on a gray background"


# --------------------------------------------------------------------------------------------
# scorers on ground truth


@pytest.mark.parametrize("key", sorted(W.HELD_OUT_SUBJECTS))
def test_identity_right_subject_scores_high_wrong_low(key):
    sub = W.HELD_OUT_SUBJECTS[key]
    photos = W.subject_photos(sub, 4, seed=1)
    right = S.identity_score(W.render(W.VideoSpec(sub.shape, sub.colour, sub.texture, "large", "orbit"), seed=3), photos)
    assert right > 0.5  # measured 0.69-0.81
    # subjects that differ in one attribute: shape, texture or colour
    others = [(x, sub.colour, sub.texture) for x in W.SHAPES if x != sub.shape]
    others += [(sub.shape, sub.colour, x) for x in W.TEXTURES if x != sub.texture]
    others += [(sub.shape, x, sub.texture) for x in W.COLOURS if x != sub.colour]
    wrong = {o: S.identity_score(W.render(W.VideoSpec(*o, "large", "orbit"), seed=3), photos) for o in others}
    # every other subject scores lower, by a margin (measured: the smallest is 0.095, the red checkered triangle
    # against the red dotted one: the texture descriptor puts checks near dots, and the colour, read from the
    # solid interior, is right for both)
    assert max(wrong.values()) < right - 0.08, (right, wrong)
    assert sum(wrong.values()) / len(wrong) < 0.45, wrong


def test_motion_right_scores_high_wrong_low():
    for m in W.MOTIONS:
        v = W.render(W.VideoSpec("square", "blue", "plain", "large", m, "white"), seed=11)
        scores = {r: S.motion_score(v, r) for r in W.MOTIONS}
        assert scores[m] > 0.9, (m, scores)  # measured 0.94-1.0
        assert S.classify_motion(v)[0] == m
        for r in W.MOTIONS:
            # a moving sprite scores <= 0.5 against every other motion (zigzag vs left / right is the closest pair,
            # 0.33-0.41: a zig-zag travels the same way); the open-set tests are in test_miniworld_paths.py
            if r != m:
                assert scores[r] < 0.5, (m, r, scores[r])
    # a clip as the reference: the same motion drawn by another sprite matches; another motion does not
    clip = W.motion_clips("zigzag", 1, seed=2)[0][0]
    v = W.render(W.VideoSpec("circle", "red", "plain", "small", "zigzag", "gray"), seed=5)
    assert S.motion_score(v, clip) > 0.9
    assert S.motion_score(W.render(W.VideoSpec(motion="bounce"), seed=5), clip) < 0.3


def test_text_score_ground_truth_and_wrong_prompt():
    it = W.pretrain_sampler(7, held_in_only=False)
    specs = [next(it) for _ in range(30)]
    parts = [S.text_score(W.render(s, seed=i), W.caption(s), parts=True)[1] for i, s in enumerate(specs)]
    for attr in ("background", "colour", "shape", "size", "texture"):
        acc = sum(p[attr] for p in parts) / len(parts)
        assert acc >= 0.95, (attr, acc)  # texture by analysis-by-synthesis (the descriptor rule got 0.81-0.86)
    v = W.render(W.VideoSpec("circle", "red", "plain", "large", "left", "gray"), seed=0)
    assert S.text_score(v, "a large red circle moving left on a gray background") == 1.0
    assert S.text_score(v, "a small blue striped star moving left on a black background") == 0.0


def test_leakage_high_when_clip_sprite_appears():
    clips, specs = W.motion_clips("bounce", 2, seed=0, exclude="dotted_triangle")
    sub = W.HELD_OUT_SUBJECTS["dotted_triangle"]
    clean = W.render(W.VideoSpec(sub.shape, sub.colour, sub.texture, "large", "bounce"), seed=1)
    leaked = W.render(W.with_motion(specs[0], "bounce"), seed=9)
    assert S.leakage_score(leaked, clips) > 0.6
    assert S.leakage_score(clean, clips) < S.leakage_score(leaked, clips) - 0.3


def test_score_command_on_files(tmp_path, capsys):
    """`miniworld score` reads the WebP / GIF the pack writes and scores them like score_video does on
    tensors: the subject doing the motion scores high, a clip sprite doing another motion scores low."""
    import json

    from dual_adapter.cli import main
    from dual_adapter.media import save_image, write_video

    sub = W.HELD_OUT_SUBJECTS["striped_star"]
    good = W.render(W.VideoSpec(sub.shape, sub.colour, sub.texture, "large", "orbit"), seed=1)
    clips, specs = W.motion_clips("orbit", 2, seed=0, exclude="striped_star")
    bad = W.render(W.with_motion(specs[0], "zigzag"), seed=2)
    photos = W.subject_photos("striped_star", n=3, seed=0)
    (tmp_path / "photos").mkdir()
    (tmp_path / "clips").mkdir()
    for i, im in enumerate(photos):
        save_image(im, tmp_path / "photos" / f"{i}.png")
    for i, c in enumerate(clips):
        write_video(c, tmp_path / "clips" / f"{i}.gif", fps=8)
    gv = write_video(good, tmp_path / "good.webp", fps=8)
    bv = write_video(bad, tmp_path / "bad.webp", fps=8)
    prompt = f"a large {sub.colour} {sub.texture} {sub.shape} orbiting on a gray background"
    r = S.score_files(gv, prompt=prompt, subject=tmp_path / "photos", motion="orbit", clips=[tmp_path / "clips"])
    want = S.score_video(good, prompt=prompt, subject_photos=photos, motion="orbit", motion_clips=clips)
    for k in ("identity", "motion", "text", "leakage"):
        assert r[k] == pytest.approx(want[k], abs=0.02), k  # GIF palettes and 8-bit rounding only
    assert r["identity"] > 0.5 and r["motion"] > 0.9 and r["text"] == 1.0 and r["motion_class"] == "orbit"
    rc = main(["miniworld", "score", str(gv), str(bv), "--subject", str(tmp_path / "photos"), "--motion", "orbit",
               "--clips", str(tmp_path / "clips"), "--prompt", prompt, "--json", str(tmp_path / "s.json")])
    assert rc == 0
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [Path(x["video"]).name for x in rows] == ["good.webp", "bad.webp"]
    assert rows[1]["identity"] < rows[0]["identity"] - 0.3 and rows[1]["motion"] < 0.5
    assert rows[1]["leakage"] > rows[0]["leakage"] + 0.3 and rows[1]["motion_class"] == "zigzag"
    assert "good.webp: frames 9" in capsys.readouterr().out
    with pytest.raises(DualAdapterError, match="world motion"):
        S.score_files(gv, motion="moonwalk")
    with pytest.raises(DualAdapterError, match="holds no clip"):
        S.score_files(gv, clips=[tmp_path / "photos"])


def test_scorers_reject_bad_input():
    with pytest.raises(DualAdapterError, match="frames"):
        S.track(torch.zeros(4, 32, 32))
    with pytest.raises(DualAdapterError, match="motion"):
        S.motion_score(W.render(W.VideoSpec()), "spinning")
    with pytest.raises(DualAdapterError, match="no sprite"):
        S.identity_score(W.render(W.VideoSpec()), torch.full((2, 32, 32, 3), 0.5))


# --------------------------------------------------------------------------------------------
# the model


def test_block_pca_vae_round_trips_world_videos_and_follows_the_frame_rules():
    from dual_adapter import sampling
    from dual_adapter.backbones import cogvideox
    from dual_adapter.miniworld import scorers as S
    from dual_adapter.miniworld.model import SpaceToDepthVAE, build_mini

    b = build_mini(config={"transformer": {"num_layers": 1}})
    x = torch.stack([W.render(W.VideoSpec("star", "blue", "striped", "small", "orbit", "white"), seed=i)
                     for i in range(2)])
    z = sampling.encode_frames(b, x)
    assert z.shape == (2, 5, 12, 16, 16)  # 9 frames -> 5 latent frames, 32 px -> 16, 12 PCA channels
    assert 0.5 < float(z.std()) < 2.0  # whitened: roughly unit variance, as the diffusion schedule assumes
    rec = sampling.decode_latents(b, z)
    assert float((rec - x).abs().mean()) < 0.02  # lossy, but close
    # the pixel scorers read the same attributes and motion from the round trip as from the original
    for v, r in zip(x, rec):
        assert S.classify_attributes(r) == S.classify_attributes(v)
        assert S.classify_motion(r)[0] == "orbit"
    z1 = sampling.encode_frames(b, x[:, :1])  # a photo -> 1 latent frame
    assert z1.shape[1] == 1 and float((sampling.decode_latents(b, z1) - x[:, :1]).abs().mean()) < 0.02
    assert b.default_size == (9, 32, 32)
    cogvideox.check_video_size(b, 9, 32, 32)
    with pytest.raises(DualAdapterError, match="frames=8"):
        cogvideox.check_video_size(b, 8, 32, 32)
    # the exact space-to-depth fold underneath (and the old shipped VAE) is lossless
    s2d = SpaceToDepthVAE(scaling_factor=1.0)
    xv = x.permute(0, 4, 1, 2, 3) * 2 - 1
    assert torch.allclose(s2d.decode(s2d.encode(xv).latent_dist.mode()).sample, xv, atol=1e-6)


def test_pretrain_is_resumable_and_loads(tmp_path):
    from dual_adapter.miniworld.model import load_mini
    from dual_adapter.miniworld.pretrain import PretrainConfig, make_batch, pretrain_mini

    cfg = PretrainConfig(steps=2, batch=2, checkpoint_every=1, threads=0, device="auto")  # auto: cpu, as for mini
    f1, c1, _ = make_batch(1, cfg)
    f2, c2, _ = make_batch(1, cfg)
    assert torch.equal(f1, f2) and c1 == c2  # a resumed run replays the same batches

    def stop(step, total, info):
        if step == 1:
            raise InterruptedByUser("test")

    out = tmp_path / "m"
    with pytest.raises(InterruptedByUser):
        pretrain_mini(out, cfg, callback=stop, command="test")
    assert (tmp_path / "m.run" / "partial.safetensors").exists() and not out.exists()
    with pytest.raises(DualAdapterError, match="--resume"):
        pretrain_mini(out, cfg, command="test")
    pretrain_mini(out, cfg, resume=True, command="test")
    b = load_mini(out)
    assert b.name == "mini" and (out / "loss.png").exists()
    # a pretrained folder is a model path like any other: load_model (every --model, the loader node) takes it
    from dual_adapter.models import load_model

    b2 = load_model(str(out))
    assert b2.name == "mini" and type(b2.vae).__name__ == "BlockPCAVAE" and b2.dtype == torch.float32
    assert all(torch.equal(v, b.transformer.state_dict()[k]) for k, v in b2.transformer.state_dict().items())
    with pytest.raises(DualAdapterError, match="exists"):
        pretrain_mini(out, cfg, command="test")
    import json

    assert json.loads((out / "info.json").read_text())["device"] == "cpu"  # "auto" resolved, not passed to torch
    # --device is checked before any work: a name that is no device, or a GPU this machine does not have
    with pytest.raises(DualAdapterError, match="not a device"):
        PretrainConfig(device="banana").validate()
    if not torch.cuda.is_available():
        with pytest.raises(DualAdapterError, match="no CUDA GPU"):
            pretrain_mini(tmp_path / "gpu", PretrainConfig(steps=1, device="cuda"), command="test")
        assert not (tmp_path / "gpu.run").exists()


def test_pretrain_init_continues_a_trained_mini_with_its_text_encoder(tmp_path):
    """``init`` continues from a trained mini: its transformer is the start, its text encoder / VAE are kept
    (a fresh T5 from ``seed`` would not match what the transformer learned); ``seed`` draws only the batches."""
    from dual_adapter.miniworld.model import build_mini, load_mini
    from dual_adapter.miniworld.pretrain import PretrainConfig, pretrain_mini

    pretrain_mini(tmp_path / "a", PretrainConfig(steps=2, batch=2, checkpoint_every=10, threads=0), command="made a")
    a = load_mini(tmp_path / "a")
    cfg = PretrainConfig(steps=1, batch=2, lr=1e-12, warmup_steps=0, seed=5, threads=0, init=str(tmp_path / "a"))
    pretrain_mini(tmp_path / "b", cfg, command="made b")
    b, fresh = load_mini(tmp_path / "b"), build_mini(seed=5)
    for k, v in a.text_encoder.state_dict().items():
        assert torch.equal(b.text_encoder.state_dict()[k], v)
    sd_a, sd_b, sd_fresh = (m.transformer.state_dict() for m in (a, b, fresh))
    assert all(torch.allclose(sd_b[k], v, atol=1e-6) for k, v in sd_a.items())  # lr ~0: still a's weights
    assert not all(torch.allclose(sd_fresh[k], v, atol=1e-3) for k, v in sd_a.items())  # (not seed 5's)
    info = json.loads((tmp_path / "b" / "info.json").read_text())
    assert info["init"]["model"] == str(tmp_path / "a") and info["init"]["command"] == "made a"
    assert info["init"]["steps_done"] == 2 and info["config"]["init"] == str(tmp_path / "a")
    with pytest.raises(DualAdapterError, match="init="):
        PretrainConfig(init=str(tmp_path / "nowhere")).validate()
    with pytest.raises(DualAdapterError, match="warmup_steps"):
        PretrainConfig(warmup_steps=-1).validate()
    PretrainConfig(init="mini").validate()  # the shipped model


def test_pretrain_workers_draw_the_same_batches_and_resume_restarts_them(tmp_path):
    """``workers`` only moves the drawing of batches into other processes: the same batches, and the same losses as
    without, also when a resumed run asks for the batches from a later step."""
    from dual_adapter.miniworld.pretrain import PretrainConfig, _Batches, make_batch, pretrain_mini

    cfg = PretrainConfig(steps=6, batch=2, checkpoint_every=2, threads=0, workers=2)
    batches = _Batches(cfg)
    for step in (0, 1, 4, 5):  # out of order (4 after 1): the loader restarts at 4
        f, c = batches(step)
        f0, c0, _ = make_batch(step, cfg)
        assert torch.equal(f, f0) and c == c0
    pretrain_mini(tmp_path / "w0", PretrainConfig(steps=3, batch=2, checkpoint_every=1, threads=0), command="t")
    reference = [json.loads(line)["loss"] for line in (tmp_path / "w0.run" / "losses.jsonl").read_text().splitlines()
                 if line.strip()]

    def stop(step, total, info):
        if step == 2:
            raise InterruptedByUser("test")

    cfg = PretrainConfig(steps=3, batch=2, checkpoint_every=1, threads=0, workers=2)
    with pytest.raises(InterruptedByUser):
        pretrain_mini(tmp_path / "r", cfg, callback=stop, command="t")
    pretrain_mini(tmp_path / "r", cfg, resume=True, command="t")
    resumed = [json.loads(line)["loss"] for line in (tmp_path / "r.run" / "losses.jsonl").read_text().splitlines()
               if line.strip()]
    assert len(reference) == 3 and resumed == reference  # workers 2, interrupted and resumed = workers 0
    for bad in (dict(workers=-1), dict(mixed_precision="fp16")):
        with pytest.raises(DualAdapterError, match=next(iter(bad))):
            PretrainConfig(**bad).validate()


# --------------------------------------------------------------------------------------------
# the shipped mini


@pytest.fixture(scope="module")
def mini():
    from dual_adapter.miniworld.model import mini_available

    if not mini_available():
        pytest.fail("the shipped mini model is missing from dual_adapter/models/mini")
    from dual_adapter.models import load_model

    return load_model("mini")


def test_load_model_mini_and_loader_node_lists_it(mini):
    from dual_adapter.backbones import cogvideox

    assert mini.name == "mini" and mini.default_size == (9, 32, 32) and mini.device == "cpu"
    assert "mini" in cogvideox.BUILTIN_MODELS
    from nodes.core_nodes import LoadVideoModel

    assert "mini" in LoadVideoModel.INPUT_TYPES()["required"]["model"][0]
    (m,) = LoadVideoModel().load("mini")
    assert m.bundle.name == "mini"


@pytest.fixture(scope="module")
def mini_quality(mini):
    return S.evaluate_base(mini, n=8, steps=20, seed=1, batch=8)


def test_shipped_mini_shows_the_prompted_motion_and_background(mini_quality):
    # the part of the quality bar (docs/results/miniworld.md) (>= 90% of samples) the shipped mini meets: motion and background
    # (measured with evaluate --n 32 --steps 25: 100% / 100%); 8 samples here: at most one miss
    s = mini_quality["summary"]
    for k in ("background", "motion"):
        assert s[k] >= 7 / 8, (k, s, mini_quality["samples"])


@pytest.mark.xfail(reason="the shipped mini misses the bar on appearance: colour 75%, size 84%, texture 50%, shape "
                          "22% with evaluate --n 32 --steps 25 (docs/results/miniworld.md)", strict=True)
def test_shipped_mini_passes_the_whole_quality_bar_on_held_in_prompts(mini_quality):
    s = mini_quality["summary"]
    for k in ("background", "colour", "shape", "texture", "size", "motion"):
        assert s[k] >= 7 / 8, (k, s, mini_quality["samples"])


def test_mini_reference_encoder_follows_appearance_where_the_tiny_clip_does_not():
    """DualReal's motion adapters need a reference embedding that changes with appearance (docs/dualreal.md, joint
    training). On the star's photos vs the orbit clips' frames: the PixelStatsEncoder ("mini") puts the photos of
    one subject closer to each other than to any clip sprite; the random tiny CLIP does not separate them."""
    from dual_adapter.reference import PixelStatsEncoder, build_tiny_reference_encoder, load_reference_encoder

    photos = W.subject_photos("striped_star", n=4, seed=0)
    clips, _ = W.motion_clips("orbit", n=3, seed=0, exclude="striped_star")
    frames = torch.stack([c[0] for c in clips])

    def cosines(enc):
        e = torch.cat([enc(photos), enc(frames)])
        e = e / e.norm(dim=1, keepdim=True)
        c = e @ e.T
        return c[:4, :4][~torch.eye(4, dtype=torch.bool)].min(), c[:4, 4:].max()

    enc = load_reference_encoder("mini")
    assert isinstance(enc, PixelStatsEncoder) and enc.name == "mini"
    out = enc(photos)
    assert out.shape == (4, 1024) and torch.equal(out, PixelStatsEncoder()(photos)) and torch.isfinite(out).all()
    assert torch.allclose(enc(photos[0]), out[:1], atol=1e-4)  # one [H, W, 3] image
    within, across = cosines(enc)
    assert within > across + 0.03, (within, across)
    within, across = cosines(build_tiny_reference_encoder(0))
    assert within < across  # the random tiny CLIP: a clip sprite is as close as another photo of the subject
    with pytest.raises(DualAdapterError, match="reference image"):
        enc(torch.rand(4, 32, 32))


def test_train_dualreal_on_mini_defaults_to_the_mini_reference_encoder(tmp_path):
    from dual_adapter.cli import main
    from dual_adapter.dualreal import load_adapters

    root = Path(__file__).resolve().parents[2] / "examples" / "mini"
    out = tmp_path / "a.safetensors"
    assert main(["train-dualreal", "--model", "mini", "--subject", str(root / "striped_star"),
                 "--identity-prompt", "a * star on a gray background", "--motion", str(root / "orbit" / "00.gif"),
                 "--motion-prompt", "a shape orbiting on a gray background", "--steps", "2", "--warmup", "0",
                 "--motion-batch", "1", "--no-gradient-checkpointing", "--out", str(out)]) == 0
    meta = load_adapters(out).meta
    assert meta["reference_encoder"] == "mini" and meta["uses_reference"]


def test_builtin_encoder_name_and_the_nodes_use_the_mini_encoder_without_clip_vision(tmp_path, monkeypatch):
    from dual_adapter.models import load_model
    from dual_adapter.patches import PatchedModel
    from dual_adapter.reference import PixelStatsEncoder, builtin_encoder_name
    from nodes import bridge
    from nodes import dualreal_nodes as N

    assert builtin_encoder_name("mini") == "mini" and builtin_encoder_name("tiny") == "tiny"
    assert builtin_encoder_name("tiny-5b") == "tiny" and builtin_encoder_name("/models/CogVideoX-2b") is None
    monkeypatch.setattr(bridge, "output_dir", lambda: tmp_path)
    bundle = load_model("mini")
    assert builtin_encoder_name(bundle.name) == "mini"  # a mini folder loads under the name "mini" too
    photos = W.subject_photos("striped_star", 2, seed=0)
    clip = W.motion_clips("orbit", 1, seed=0, exclude="striped_star")[0][0]
    model = PatchedModel(bundle)
    with torch.inference_mode():
        adapters, _ = N.DualRealTrain().train(model, photos, "a * star on a gray background", clip,
                                              "a shape orbiting on a gray background", steps=2, lr=1e-3,
                                              motion_ratio=0.5, hidden_width=8, groups=2, form="official", seed=0,
                                              name="m", warmup_steps=0, checkpoint_every=0)
    assert adapters.meta["reference_encoder"] == "mini" and adapters.meta["uses_reference"] is True
    (patched,) = N.DualRealApply().apply(model, adapters, reference_image=photos)
    want = PixelStatsEncoder()(photos[:1])
    assert torch.allclose(patched.patches[0].reference.reshape(1, -1), want, atol=1e-5)
