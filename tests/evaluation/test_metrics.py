"""Metrics: exact values on constructed inputs, and every encoder wrapper with a tiny random model
saved and reloaded offline (no network, CPU)."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.metrics import (
    DEFAULT_NAMES,
    ClipEncoder,
    DinoEncoder,
    EncoderSet,
    FlowInterpolator,
    LinearBlendInterpolator,
    RaftFlow,
    backward_warp,
    batch_csv_text,
    batch_rows,
    clip_t,
    consecutive_similarity,
    cosine_matrix,
    dynamic_degree,
    dynamic_degree_params,
    dynamic_degree_sampling,
    evaluate_video,
    format_batch_table,
    format_table,
    image_alignment,
    is_moving,
    locate,
    motion_smoothness,
    parse_metrics,
    plot_result,
    temporal_consistency,
    temporal_flickering,
    top_flow_magnitude,
    vbench_consistency,
    vbench_consistency_per_frame,
)

torch.set_num_threads(1)  # robust timings on a shared 2-core machine


# --------------------------------------------------------------------------------------
# tiny offline models
# --------------------------------------------------------------------------------------
VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "cat", "surfing", "on", "the", "beach", "photo", "of"]


def _save_tiny_clip(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", model_max_length=16
    )
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


def _save_tiny_dino(path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTModel(cfg, add_pooling_layer=False).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """models/metrics with a tiny CLIP, DINO and a random-init RAFT-large under the default names."""
    from torchvision.models.optical_flow import raft_large

    root = tmp_path_factory.mktemp("models")
    m = root / "metrics"
    m.mkdir()
    _save_tiny_clip(m / DEFAULT_NAMES["clip"])
    _save_tiny_dino(m / DEFAULT_NAMES["dino"])
    torch.manual_seed(2)
    torch.save(raft_large(weights=None).state_dict(), m / DEFAULT_NAMES["raft"])
    return root


@pytest.fixture(scope="session")
def encoders(models_root):
    return EncoderSet(search_dirs=[models_root / "metrics"], device="cpu")


def _rand_frames(n=6, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


# --------------------------------------------------------------------------------------
# embedding definitions
# --------------------------------------------------------------------------------------
def test_identical_embeddings_give_one_and_orthogonal_zero():
    e = torch.tensor([[1.0, 0.0, 0.0]])
    frames = e.repeat(5, 1) * torch.arange(1, 6).float()[:, None]  # same direction, any length
    assert clip_t(frames, e[0]) == pytest.approx(1.0, abs=1e-12)
    assert image_alignment(frames, e.repeat(3, 1)) == pytest.approx(1.0, abs=1e-12)
    assert temporal_consistency(frames) == pytest.approx(1.0, abs=1e-12)
    assert vbench_consistency(frames) == pytest.approx(1.0, abs=1e-12)
    ortho = torch.tensor([[0.0, 2.0, 0.0]])
    assert clip_t(frames, ortho) == pytest.approx(0.0, abs=1e-12)
    assert image_alignment(frames, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])) == pytest.approx(0.0, abs=1e-12)


def test_alignment_is_mean_over_all_frame_photo_pairs():
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    refs = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # cos: f0-r0 1, f0-r1 1/sqrt2, f1-r0 0, f1-r1 1/sqrt2
    assert image_alignment(frames, refs) == pytest.approx((1 + 2 / math.sqrt(2)) / 4)
    assert cosine_matrix(frames, refs).shape == (2, 2)


def test_t_cons_and_vbench_consistency_definitions():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    e = torch.stack([x, x, y])
    assert consecutive_similarity(e).tolist() == pytest.approx([1.0, 0.0])
    assert temporal_consistency(e) == pytest.approx(0.5)
    # VBench: frame1 (1+1)/2, frame2 (0+0)/2
    assert vbench_consistency_per_frame(e).tolist() == pytest.approx([1.0, 0.0])
    # negative cosines are clamped at 0 (VBench max(0, cos))
    assert vbench_consistency(torch.stack([x, -x])) == pytest.approx(0.0)
    assert temporal_consistency(torch.stack([x, -x])) == pytest.approx(-1.0)
    # mixed: f2 = (x+y)/sqrt2: prev cos(f2,f1=y)=1/sqrt2, first cos(f2,x)=1/sqrt2
    e2 = torch.stack([x, y, (x + y)])
    assert vbench_consistency_per_frame(e2).tolist() == pytest.approx([0.0, 1 / math.sqrt(2)])
    with pytest.raises(DualAdapterError):
        temporal_consistency(x[None])


# --------------------------------------------------------------------------------------
# temporal flickering
# --------------------------------------------------------------------------------------
def test_flicker_constant_video_is_one_and_alternating_is_zero():
    assert temporal_flickering(torch.full((6, 8, 8, 3), 0.37)) == 1.0
    alt = torch.zeros(6, 8, 8, 3)
    alt[1::2] = 1.0
    assert temporal_flickering(alt) == 0.0
    alt8 = (alt * 255).to(torch.uint8)
    assert temporal_flickering(alt8) == 0.0
    half = torch.zeros(3, 4, 4, 3, dtype=torch.uint8)
    half[1] = 51  # |diff| 51 twice -> (255-51)/255
    assert temporal_flickering(half) == pytest.approx(204 / 255)
    with pytest.raises(DualAdapterError):
        temporal_flickering(torch.zeros(1, 4, 4, 3))


# --------------------------------------------------------------------------------------
# dynamic degree
# --------------------------------------------------------------------------------------
def test_dynamic_degree_params_and_sampling_follow_vbench():
    assert dynamic_degree_params(480, 720, 49, 8) == (pytest.approx(11.25), 12)
    assert dynamic_degree_params(256, 256, 16, 8) == (pytest.approx(6.0), 4)
    assert dynamic_degree_params(256, 512, 16, 4)[0] == pytest.approx(12.0)  # factor 8/fps below 8 fps
    assert dynamic_degree_params(256, 256, 2, 8)[1] == 0  # Python's round(0.5) == 0, as in VBench
    assert dynamic_degree_sampling(10, 24) == ([0, 3, 6, 9], 3)
    assert dynamic_degree_sampling(5, 8) == ([0, 1, 2, 3, 4], 1)
    assert dynamic_degree_sampling(5, 4) == ([0, 1, 2, 3, 4], 1)


def test_top_flow_magnitude_is_mean_of_top_five_percent():
    flow = torch.zeros(2, 20, 20)  # 400 px -> top 20
    flow[0].view(-1)[:10] = 10.0
    flow[1].view(-1)[10:20] = -20.0
    assert top_flow_magnitude(flow) == pytest.approx(15.0)
    const = torch.zeros(1, 2, 8, 8)
    const[:, 0], const[:, 1] = 3.0, 4.0
    assert top_flow_magnitude(const) == pytest.approx(5.0)


class _StubFlow:
    """Constant flow whose magnitude for the pair (i, j) is mags[i] (frame i is filled with i/255)."""

    def __init__(self, mags):
        self.mags, self.calls = mags, []

    def __call__(self, a, b):
        i = int(round(float(a.mean()) * 255))
        self.calls.append(i)
        f = torch.zeros(a.shape[0], 2, *a.shape[-2:])
        f[:, 0] = self.mags[i]
        return f


def _indexed_frames(n, h, w):
    return torch.arange(n, dtype=torch.float32).div(255).view(n, 1, 1, 1).expand(n, h, w, 3).clone()


def test_dynamic_degree_threshold_and_count_with_stub_flow():
    frames = _indexed_frames(16, 256, 256)  # threshold 6 px, 4 moving pairs needed
    mags = [7.0, 7.0, 7.0, 6.0] + [1.0] * 12  # 6.0 is not above the threshold
    r = dynamic_degree(frames, _StubFlow(mags), fps=8)
    assert (r.threshold, r.count_required, r.count_exceeding, r.moving, r.value) == (6.0, 4, 3, False, 0.0)
    assert r.magnitudes == pytest.approx(mags[:15])
    mags[3] = 6.5
    r = dynamic_degree(frames, _StubFlow(mags), fps=8)
    assert (r.count_exceeding, r.moving, r.value) == (4, True, 1.0)
    # 16 fps: every 2nd frame, 8 frames -> 2 pairs needed, threshold unchanged
    stub = _StubFlow([7.0 if i in (0, 2) else 0.0 for i in range(16)])
    r = dynamic_degree(frames, stub, fps=16)
    assert stub.calls == [0, 2, 4, 6, 8, 10, 12]
    assert (r.count_required, r.count_exceeding, r.moving) == (2, 2, True)
    assert is_moving([], 1.0, 0) is False


# --------------------------------------------------------------------------------------
# motion smoothness
# --------------------------------------------------------------------------------------
def test_motion_smoothness_with_blend_interpolator():
    ramp = torch.arange(7, dtype=torch.float32).mul(2 / 255).view(7, 1, 1, 1).expand(7, 4, 4, 3)
    r = motion_smoothness(ramp, LinearBlendInterpolator())
    assert r.value == 1.0 and len(r.mae_per_frame) == 3
    alt = torch.zeros(6, 4, 4, 3)
    alt[1::2] = 1.0  # even frames black -> blend black; odd frames white
    r = motion_smoothness(alt, LinearBlendInterpolator())
    assert r.value == 0.0 and len(r.mae_per_frame) == 2  # F even: the last odd frame has no partner
    with pytest.raises(DualAdapterError):
        motion_smoothness(alt[:2], LinearBlendInterpolator())


def test_flow_interpolator_recovers_translated_frame():
    w = 24
    x = torch.arange(w, dtype=torch.float32)
    frames = torch.stack([((x - 2 * k) / w).clamp(0, 1).view(1, w, 1).expand(6, w, 3) for k in range(3)])
    img0, img2 = (frames[i].permute(2, 0, 1)[None] for i in (0, 2))

    def flow(a, b):  # content moves +4 px from frame 0 to frame 2
        f = torch.zeros(1, 2, 6, w)
        f[:, 0] = 4.0 if torch.equal(a, img0) else -4.0
        return f

    mid = FlowInterpolator(flow)(img0, img2)[0].permute(1, 2, 0)
    torch.testing.assert_close(mid[:, 6:-6], frames[1][:, 6:-6], atol=1e-5, rtol=0)
    shifted = backward_warp(img0, torch.full((1, 2, 6, w), -2.0) * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    torch.testing.assert_close(shifted[0].permute(1, 2, 0)[:, 6:-6], frames[1][:, 6:-6], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------
# encoders: tiny random models, saved and reloaded offline
# --------------------------------------------------------------------------------------
def test_clip_encoder_matches_transformers(models_root):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    path = models_root / "metrics" / DEFAULT_NAMES["clip"]
    enc = ClipEncoder.from_pretrained(path, device="cpu")
    frames = _rand_frames(3, 32, 40)
    ours = enc.encode_images(frames, batch_size=2)
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    px = CLIPImageProcessor.from_pretrained(path)(images=list(frames.numpy()), do_rescale=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=px)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    assert ours.shape == (3, 16)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    t = tok(["a dog surfing"], return_tensors="pt")
    with torch.no_grad():
        ref_t = model.get_text_features(**t)
    ref_t = ref_t if isinstance(ref_t, torch.Tensor) else ref_t.pooler_output
    torch.testing.assert_close(enc.encode_text("a dog surfing"), ref_t, atol=1e-5, rtol=1e-5)
    assert enc.encode_images_vbench(_rand_frames(2, 48, 64)).shape == (2, 16)
    # a list of photos of different sizes
    assert enc.encode_images([torch.rand(50, 30, 3), torch.rand(20, 20, 3)]).shape == (2, 16)


def test_dino_encoder_is_cls_token(models_root):
    from transformers import ViTModel

    path = models_root / "metrics" / DEFAULT_NAMES["dino"]
    enc = DinoEncoder.from_pretrained(path, device="cpu")
    frames = _rand_frames(2, 32, 32)
    model = ViTModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False).eval()
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)  # ViTImageProcessor defaults
    px = (frames.permute(0, 3, 1, 2) - mean) / mean
    with torch.no_grad():
        ref = model(pixel_values=px).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.encode_images(frames), ref, atol=1e-5, rtol=1e-5)
    assert enc.encode_images(_rand_frames(1, 48, 64)).shape == (1, 32)
    # VBench's transform: short side to 32 without antialiasing, no crop, interpolated position embeddings
    wide = _rand_frames(1, 32, 48)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=(wide.permute(0, 3, 1, 2) - mean) / std, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.encode_images_vbench(wide), ref, atol=1e-5, rtol=1e-5)


def test_raft_wrapper_loads_offline_and_pads(models_root, tmp_path):
    from torchvision.models.optical_flow import raft_small

    path = locate("raft", None, [models_root / "metrics"])
    assert path.name == DEFAULT_NAMES["raft"]
    rf = RaftFlow.from_file(path, device="cpu", iters=2)
    a, b = torch.rand(1, 3, 36, 44), torch.rand(1, 3, 36, 44)
    f = rf(a, b)
    assert f.shape == (1, 2, 36, 44) and torch.isfinite(f).all()
    # a raft_small state dict in safetensors also loads
    from safetensors.torch import save_file

    small = tmp_path / "raft_small.safetensors"
    save_file({k: v.contiguous() for k, v in raft_small(weights=None).state_dict().items()}, str(small))
    assert RaftFlow.from_file(small, device="cpu", iters=1)(a, b).shape == (1, 2, 36, 44)
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(DualAdapterError, match="not a torchvision RAFT state dict"):
        RaftFlow.from_file(bad, device="cpu")


def test_missing_weights_name_the_expected_file(tmp_path):
    with pytest.raises(DualAdapterError) as e:
        locate("raft", None, [tmp_path])
    assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(DualAdapterError, match="dino-vits16"):
        locate("dino", None, [tmp_path])
    (tmp_path / "clip-vit-base-patch32").mkdir()
    with pytest.raises(DualAdapterError, match="config.json"):
        locate("clip", None, [tmp_path])
    frames = _rand_frames(4)
    with pytest.raises(DualAdapterError, match="clip-vit-base-patch32"):
        evaluate_video(frames, prompt="a dog", metrics="clip_t", encoders=EncoderSet(search_dirs=[tmp_path], device="cpu"))
    # 'all' skips what cannot run and still computes the rest
    r = evaluate_video(frames, metrics="all", encoders=EncoderSet(search_dirs=[tmp_path], device="cpu"), interpolator="blend")
    assert set(r["metrics"]) == {"temporal_flickering", "motion_smoothness"}
    assert "no prompt" in r["skipped"]["clip_t"] and "RAFT-large weights not found" in r["skipped"]["dynamic_degree"]


# --------------------------------------------------------------------------------------
# the suite with stub encoders, reports
# --------------------------------------------------------------------------------------
class _StubImageEncoder:
    """Embedding = mean colour of each image (so identical frames give identical embeddings)."""

    def encode_images(self, images, batch_size=16, callback=None):
        out = torch.stack([im.reshape(-1, 3).mean(0) for im in images])
        if callback:
            callback(1, 1, {})
        return out

    def encode_text(self, text):
        return torch.tensor([[1.0, 0.0, 0.0]])


def test_evaluate_video_with_stubs_exact_values():
    red = torch.zeros(4, 8, 8, 3)
    red[..., 0] = 0.8
    photo = torch.zeros(1, 5, 7, 3)
    photo[..., 1] = 1.0  # green: orthogonal to red
    steps = []
    enc = EncoderSet(clip=_StubImageEncoder(), dino=_StubImageEncoder(), raft=lambda a, b: torch.zeros(a.shape[0], 2, *a.shape[-2:]), device="cpu")
    before = red.clone()
    r = evaluate_video(red, prompt="red", references=photo, encoders=enc, fps=8, callback=lambda s, t, i: steps.append((s, t)))
    torch.testing.assert_close(red, before)  # input untouched
    m = r["metrics"]
    assert m["clip_t"] == pytest.approx(1.0) and m["clip_i"] == pytest.approx(0.0) and m["dino_i"] == pytest.approx(0.0)
    assert m["t_cons"] == pytest.approx(1.0) and m["subject_consistency"] == pytest.approx(1.0)
    assert m["background_consistency"] == pytest.approx(1.0)
    assert m["temporal_flickering"] == 1.0 and m["motion_smoothness"] == 1.0 and m["dynamic_degree"] == 0.0
    assert list(m) == list(parse_metrics("all")[0]) and not r["skipped"]
    assert steps[-1][0] == steps[-1][1] and all(s <= t for s, t in steps)
    json.dumps(r)  # serialisable
    table = format_table(r)
    assert "CLIP-T" in table and "1.0000" in table and "AMT-S" in table
    img = plot_result(r, 600, 400)
    assert img.shape == (400, 600, 3) and 0.0 <= img.min() and img.max() <= 1.0


def test_parse_metrics_and_explicit_errors():
    assert parse_metrics("CLIP-T, dino-i, flicker, T-Cons") == (["clip_t", "dino_i", "t_cons", "temporal_flickering"], True)
    assert parse_metrics(None)[1] is False
    with pytest.raises(DualAdapterError, match="unknown metric"):
        parse_metrics("fvd")
    with pytest.raises(DualAdapterError, match="no reference photos"):
        evaluate_video(_rand_frames(3), metrics="clip_i", encoders=EncoderSet(clip=_StubImageEncoder()))


def test_batch_rows_and_csv():
    res = lambda v: {"metrics": {"clip_t": v, "temporal_flickering": 1.0}}  # noqa: E731
    items = [("ours", "a.mp4", res(0.2)), ("ours", "b.mp4", res(0.4)), ("base", "c.mp4", res(0.1))]
    rows = batch_rows(items, per_video=True)
    assert [r["video"] for r in rows] == ["a.mp4", "b.mp4", "mean (2)", "c.mp4", "mean (1)", "mean (3)"]
    assert rows[2]["clip_t"] == pytest.approx(0.3) and rows[-1]["method"] == "all"
    text = batch_csv_text(batch_rows(items))
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["method", "video", "videos", "CLIP-T", "Temporal Flicker."]
    assert table[1][:3] == ["ours", "mean (2)", "2"] and float(table[1][3]) == pytest.approx(0.3)
    assert "CLIP-T" in format_batch_table(rows)


# --------------------------------------------------------------------------------------
# end to end: real wrappers (tiny models), CLI and node
# --------------------------------------------------------------------------------------
def _write_mp4(path, frames, fps=8):
    import av
    import numpy as np

    data = (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    with av.open(str(path), mode="w") as out:
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        st.width, st.height, st.pix_fmt = data.shape[2], data.shape[1], "yuv420p"
        for arr in data:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)


def _moving_square(n=8, size=64, seed=0):
    frames = torch.full((n, size, size, 3), 0.2)
    for k in range(n):
        frames[k, 16:32, 8 + 3 * k : 24 + 3 * k] = torch.tensor([0.9, 0.5, 0.1])
    return frames


def test_evaluate_video_with_real_tiny_encoders(encoders):
    r = evaluate_video(_moving_square(5), prompt="a dog on the beach", references=_rand_frames(2, 40, 30), encoders=encoders, fps=8)
    assert set(r["metrics"]) == set(parse_metrics("all")[0]) and not r["skipped"]
    for k, v in r["metrics"].items():
        assert math.isfinite(v) and -1.0 <= v <= 1.0, k
    assert len(r["details"]["dynamic_degree"]["magnitudes"]) == 4


def test_cli_single_and_batch(models_root, tmp_path, capsys):
    from dual_adapter.cli import main

    video = tmp_path / "out.mp4"
    _write_mp4(video, _moving_square(5))
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 120, 30)).save(photo)
    report, plot = tmp_path / "report.json", tmp_path / "plot.png"
    rc = main([
        "evaluate", "--video", str(video), "--reference", str(photo), "--prompt", "a dog surfing",
        "--models-dir", str(models_root / "metrics"), "--device", "cpu", "--json", str(report), "--plot", str(plot),
    ])
    assert rc == 0
    data = json.loads(report.read_text())
    assert set(data["metrics"]) == set(parse_metrics("all")[0]) and data["info"]["frames"] == 5
    assert plot.stat().st_size > 0 and "DINO-I" in capsys.readouterr().out
    assert main(["evaluate", "--video", str(video), "--json", str(report)]) == 2  # refuses to overwrite

    for method in ("ours", "baseline"):
        (tmp_path / "runs" / method).mkdir(parents=True)
        for i in range(2):
            _write_mp4(tmp_path / "runs" / method / f"v{i}.mp4", _moving_square(5) if method == "ours" else torch.full((5, 32, 32, 3), 0.5))
    (tmp_path / "runs" / "ours" / "v0.txt").write_text("a cat on the beach")
    table = tmp_path / "table.csv"
    rc = main([
        "evaluate", "--batch", str(tmp_path / "runs"), "--metrics", "clip_t,temporal_flickering", "--prompt", "a dog",
        "--models-dir", str(models_root / "metrics"), "--device", "cpu", "--csv", str(table), "--per-video",
    ])
    assert rc == 0
    rows = list(csv.DictReader(table.open()))
    assert [(r["method"], r["video"]) for r in rows] == [
        ("baseline", "baseline/v0.mp4"), ("baseline", "baseline/v1.mp4"), ("baseline", "mean (2)"),
        ("ours", "ours/v0.mp4"), ("ours", "ours/v1.mp4"), ("ours", "mean (2)"), ("all", "mean (4)"),
    ]
    assert float(rows[2]["Temporal Flicker."]) == pytest.approx(1.0)
    assert main(["evaluate", "--video", str(video), "--metrics", "dino_i"]) == 2  # no references: clear error


def test_node_runs_offline_and_leaves_inputs_alone(models_root, monkeypatch):
    monkeypatch.setenv("DUAL_ADAPTER_MODELS", str(models_root))
    from nodes import NODE_CLASS_MAPPINGS
    from nodes.eval_nodes import DualAdapterEvaluateVideo

    assert NODE_CLASS_MAPPINGS["DualAdapterEvaluateVideo"] is DualAdapterEvaluateVideo
    spec = DualAdapterEvaluateVideo.INPUT_TYPES()
    for group in spec.values():
        for name, (_, opts) in group.items():
            assert opts.get("tooltip"), name
    assert DualAdapterEvaluateVideo.CATEGORY == "DualAdapter/Evaluate"
    frames, photos = _moving_square(5), _rand_frames(2, 24, 24)
    f0, p0 = frames.clone(), photos.clone()
    node = DualAdapterEvaluateVideo()
    with torch.inference_mode():
        out = node.evaluate(
            frames, "a dog", "all", 8.0, DEFAULT_NAMES["clip"], DEFAULT_NAMES["dino"], DEFAULT_NAMES["raft"], "flow", photos
        )
    table, plot, report = out["result"]
    assert "CLIP-I" in table and "Dynamic Degree" in table and out["ui"]["text"] == [table]
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    assert set(json.loads(report)["metrics"]) == set(parse_metrics("all")[0])
    torch.testing.assert_close(frames, f0)
    torch.testing.assert_close(photos, p0)
    with pytest.raises(DualAdapterError):
        node.evaluate(frames[:1], "", "all", 8.0, "x", "y", "z", "blend")
