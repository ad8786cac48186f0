"""Tests of dual_adapter.media: images, clips, frame shaping, writing (CPU, no network)."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dual_adapter.errors import DualAdapterError
from dual_adapter.media import (
    fit_frames,
    frames_to_video_tensor,
    load_clip,
    load_image,
    load_images,
    nearest_valid_frames,
    pad_or_trim_frames,
    probe_clip,
    save_image,
    video_tensor_to_frames,
    write_png_frames,
    write_video,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DOG = DATA / "identity" / "dog"
GUITAR = DATA / "motion" / "playing_guitar"
CAR = DATA / "motion" / "car_turn" / "car-turn.mp4"


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"test data {path} not present")
    return path


def _guitar_clip() -> Path:
    _need(GUITAR)
    clips = sorted(GUITAR.glob("*.avi"))
    if not clips:
        pytest.skip(f"no .avi clips in {GUITAR}")
    return clips[0]


def _clip_frames(n=6, h=24, w=32, seed=0) -> torch.Tensor:
    """Smooth synthetic frames with a moving bright square (codec-friendly)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g)
    base = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    frames = base.permute(0, 2, 3, 1).repeat(n, 1, 1, 1).clone()
    for i in range(n):
        x = 2 + 3 * i
        frames[i, 4:12, x : x + 8, :] = 1.0
    return frames.clamp(0, 1)


# ----------------------------------------------------------------------------- images
def test_dog_rgba_photos_load_as_rgb():
    _need(DOG)
    raw = Image.open(sorted(DOG.glob("*.png"))[0])
    assert raw.mode == "RGBA"
    imgs = load_images([DOG])
    assert len(imgs) == len(list(DOG.glob("*.png"))) == 5
    for im in imgs:
        assert im.shape == (480, 720, 3)
        assert im.dtype == torch.float32
        assert 0.0 <= float(im.min()) and float(im.max()) <= 1.0
    # loading a single file gives the same as its place in the folder (sorted order)
    first = load_image(sorted(DOG.glob("*.png"))[0])
    assert torch.equal(first, imgs[0])


def test_rgba_alpha_is_composited_over_background(tmp_path):
    arr = np.zeros((4, 6, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:, :3, 3] = 255  # left half opaque
    arr[:, 3:, 3] = 0  # right half transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, mode="RGBA").save(p)
    white = load_image(p)
    assert white.shape == (4, 6, 3)
    assert torch.allclose(white[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(white[0, 5], torch.tensor([1.0, 1.0, 1.0]))
    black = load_image(p, background="black")
    assert torch.allclose(black[0, 5], torch.tensor([0.0, 0.0, 0.0]))
    custom = load_image(p, background=(0, 128, 255))
    assert torch.allclose(custom[0, 5], torch.tensor([0.0, 128 / 255, 1.0]))


def test_grayscale_and_palette_images(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))  # 5x25
    pg = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(pg)
    im = load_image(pg)
    assert im.shape == (5, 25, 3)
    assert torch.equal(im[..., 0], im[..., 1]) and torch.equal(im[..., 1], im[..., 2])
    assert torch.allclose(im[0, :, 0], torch.from_numpy(gray[0]).float() / 255)

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    p16 = tmp_path / "gray16.png"
    Image.fromarray(g16).save(p16)
    im16 = load_image(p16)
    assert im16.shape == (3, 4, 3)
    assert float(im16.max()) <= 1.0 and float(im16[-1, -1, 0]) == pytest.approx(55000 / 65535, abs=1e-4)

    pal = Image.new("P", (7, 3))
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pp = tmp_path / "pal.gif"
    pal.save(pp)
    imp = load_image(pp)
    assert imp.shape == (3, 7, 3)
    assert torch.allclose(imp[0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_image_errors(tmp_path):
    with pytest.raises(DualAdapterError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    txt = tmp_path / "notes.png"
    txt.write_text("this is not a picture")
    with pytest.raises(DualAdapterError, match="notes.png"):
        load_image(txt)
    # truncated PNG
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 7, dtype=np.uint8)).save(good)
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DualAdapterError, match="cut.png"):
        load_image(bad)


def test_load_images_directory_rules(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DualAdapterError, match="no image files"):
        load_images([empty])
    with pytest.raises(DualAdapterError, match="empty"):
        load_images([])
    with pytest.raises(DualAdapterError, match="does not exist"):
        load_images([tmp_path / "missing"])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, v in ((10, 200), (2, 100)):
        Image.fromarray(np.full((2, 2, 3), v, dtype=np.uint8)).save(mixed / f"img{i}.png")
    (mixed / "notes.txt").write_text("skipped silently")
    imgs = load_images([mixed])
    assert len(imgs) == 2
    assert imgs[0][0, 0, 0] == pytest.approx(100 / 255)  # natural order: img2 before img10


# ----------------------------------------------------------------------------- clips
def test_guitar_avi_fps_and_resampling():
    clip = _guitar_clip()
    meta = probe_clip(clip)
    assert meta["fps"] == pytest.approx(25.0)
    assert (meta["width"], meta["height"]) == (320, 240)
    frames, info = load_clip(clip, num_frames=9, fps=8)
    assert info["fps_src"] == pytest.approx(25.0)
    assert info["n_src"] == 250
    assert info["fps_out"] == 8.0
    assert info["duration_s"] == pytest.approx(10.0, abs=0.1)
    assert frames.shape == (9, 240, 320, 3)
    assert frames.dtype == torch.float32 and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert not info["padded"]
    # frames differ over time (a real motion clip)
    diffs = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))
    assert float(diffs.max()) > 1e-3
    assert float((frames[-1] - frames[0]).abs().mean()) > 1e-3
    # nearest-frame resampling: 8 fps output frame k is source frame round(k * 25 / 8)
    native, _ = load_clip(clip, num_frames=26)
    for k in range(9):
        src = int(round(k * 25 / 8))
        if src < 26:
            assert torch.equal(frames[k], native[src])


def test_guitar_start_offset():
    clip = _guitar_clip()
    native, _ = load_clip(clip, num_frames=60)
    later, info = load_clip(clip, num_frames=5, start_s=2.0)
    assert later.shape[0] == 5
    assert torch.equal(later[0], native[50])  # 2.0 s * 25 fps
    with pytest.raises(DualAdapterError, match="past the end"):
        load_clip(clip, num_frames=5, start_s=60.0)


def test_car_clip_loop_hold_error():
    _need(CAR)
    frames, info = load_clip(CAR, num_frames=49)
    assert info["fps_src"] == pytest.approx(8.0)
    assert info["n_src"] == 16
    assert info["n_read"] == 16 and info["padded"]
    assert frames.shape == (49, 480, 480, 3)
    assert torch.equal(frames[16], frames[0])
    assert torch.equal(frames[33], frames[1])
    assert not torch.equal(frames[15], frames[0])
    same_rate, _ = load_clip(CAR, num_frames=49, fps=8)
    assert torch.equal(same_rate, frames)
    held, _ = load_clip(CAR, num_frames=20, short_policy="hold")
    assert torch.equal(held[19], held[15]) and torch.equal(held[16], frames[15])
    with pytest.raises(DualAdapterError, match="car-turn.mp4"):
        load_clip(CAR, num_frames=49, short_policy="error")
    whole, info = load_clip(CAR)
    assert whole.shape[0] == 16 and not info["padded"]
    with pytest.raises(DualAdapterError, match="num_frames"):
        load_clip(CAR, num_frames=0)
    with pytest.raises(DualAdapterError, match="fps"):
        load_clip(CAR, fps=0)
    with pytest.raises(DualAdapterError, match="short_policy"):
        load_clip(CAR, num_frames=4, short_policy="pingpong")


def test_corrupted_and_non_video_files(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DualAdapterError, match="bad.mp4"):
        load_clip(bad, num_frames=4)
    txt = tmp_path / "notes.mp4"
    txt.write_text("just text, renamed")
    with pytest.raises(DualAdapterError, match="notes.mp4"):
        load_clip(txt)
    with pytest.raises(DualAdapterError, match="does not exist"):
        load_clip(tmp_path / "missing.mp4")
    # audio only: no video stream
    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, dtype=np.int16).tobytes())
    with pytest.raises(DualAdapterError, match="no video stream"):
        load_clip(wav)


def test_truncated_files(tmp_path):
    _need(CAR)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(CAR.read_bytes()[: CAR.stat().st_size // 2])
    with pytest.raises(DualAdapterError, match="cut.mp4"):
        load_clip(cut)
    clip = _guitar_clip()
    cut_avi = tmp_path / "cut.avi"
    cut_avi.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(DualAdapterError, match="truncated"):
        load_clip(cut_avi, num_frames=200)


# ----------------------------------------------------------------------------- shaping
def test_fit_frames_cover_and_centre_crop():
    frames = torch.rand(3, 240, 320, 3)  # 4:3
    out = fit_frames(frames, 480, 720)
    assert out.shape == (3, 480, 720, 3) and out.dtype == torch.float32
    small = fit_frames(frames, 64, 96)
    assert small.shape == (3, 64, 96, 3)
    # centre crop: a vertical stripe pattern keeps its centre column; rows are cropped equally
    rows = torch.linspace(0, 1, 240).view(1, 240, 1, 1).expand(1, 240, 320, 3).contiguous()
    fitted = fit_frames(rows, 64, 96)  # scale 0.3 -> 72x96, crop 4 rows top and bottom
    col = fitted[0, :, 48, 0]
    assert float(col[0]) > 0.03 and float(col[-1]) < 0.97
    assert float(col[32]) == pytest.approx(0.5, abs=0.02)
    assert float(fitted.min()) >= 0.0 and float(fitted.max()) <= 1.0
    same = fit_frames(frames, 240, 320)
    assert torch.allclose(same, frames)
    with pytest.raises(DualAdapterError):
        fit_frames(torch.rand(240, 320, 3), 64, 96)


def test_fit_real_guitar_clip():
    clip = _guitar_clip()
    frames, _ = load_clip(clip, num_frames=5, fps=8)
    assert fit_frames(frames, 480, 720).shape == (5, 480, 720, 3)
    assert fit_frames(frames, 64, 96).shape == (5, 64, 96, 3)


def test_pad_or_trim_and_valid_counts():
    f = torch.arange(3).float().view(3, 1, 1, 1)
    assert pad_or_trim_frames(f, 7, "loop").flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert pad_or_trim_frames(f, 5, "hold").flatten().tolist() == [0, 1, 2, 2, 2]
    assert pad_or_trim_frames(f, 2, "error").flatten().tolist() == [0, 1]
    with pytest.raises(DualAdapterError):
        pad_or_trim_frames(f, 4, "error")
    with pytest.raises(DualAdapterError):
        pad_or_trim_frames(f, 0, "loop")
    assert [nearest_valid_frames(n) for n in (1, 2, 3, 4, 5, 16, 48, 49, 50)] == [1, 1, 5, 5, 5, 17, 49, 49, 49]
    assert nearest_valid_frames(16, mode="down") == 13 and nearest_valid_frames(14, mode="up") == 17
    with pytest.raises(DualAdapterError):
        nearest_valid_frames(0)


def test_video_tensor_layout_roundtrip():
    frames = torch.rand(5, 8, 12, 3)
    v = frames_to_video_tensor(frames)
    assert v.shape == (1, 3, 5, 8, 12)
    assert float(v.min()) >= -1.0 and float(v.max()) <= 1.0
    assert torch.allclose(v[0, :, 2, 3, 4], frames[2, 3, 4] * 2 - 1)
    back = video_tensor_to_frames(v)
    assert back.shape == frames.shape and torch.allclose(back, frames, atol=1e-6)
    with pytest.raises(DualAdapterError):
        video_tensor_to_frames(torch.zeros(2, 3, 5, 8, 12))


# ----------------------------------------------------------------------------- writing
def test_write_video_roundtrip_and_no_overwrite(tmp_path):
    frames = _clip_frames(n=9, h=48, w=64)
    out = write_video(frames, tmp_path / "clip.mp4", fps=8)
    assert out.exists() and out.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temp file left
    back, info = load_clip(out)
    assert back.shape == frames.shape
    assert info["fps_src"] == pytest.approx(8.0)
    assert float((back - frames).abs().mean()) < 0.03
    with pytest.raises(DualAdapterError, match="already exists"):
        write_video(frames, out, fps=8)


def test_write_video_odd_size_and_other_formats(tmp_path):
    frames = _clip_frames(n=4, h=23, w=31)
    out = write_video(frames, tmp_path / "odd.mp4", fps=12)
    back, info = load_clip(out)
    assert back.shape == (4, 24, 32, 3)
    assert info["fps_src"] == pytest.approx(12.0)
    gif = write_video(frames, tmp_path / "anim.gif", fps=8)
    with Image.open(gif) as im:
        assert im.n_frames == 4
    webp = write_video(frames, tmp_path / "anim.webp", fps=8)
    with Image.open(webp) as im:
        assert im.n_frames == 4
    with pytest.raises(DualAdapterError, match="extension"):
        write_video(frames, tmp_path / "clip.avi")


def test_animated_webp_loads_as_a_clip(tmp_path):
    """FFmpeg (PyAV) cannot decode animated WebP, which ComfyUI's SaveAnimatedWEBP and write_video(.webp)
    write; load_clip / probe_clip read it with Pillow, with the same resampling and errors as other clips."""
    frames = torch.rand(9, 20, 28, 3, generator=torch.Generator().manual_seed(0))
    webp = write_video(frames, tmp_path / "anim.webp", fps=8)  # lossless
    meta = probe_clip(webp)
    assert (meta["n_frames"], meta["width"], meta["height"], meta["codec"]) == (9, 28, 20, "webp")
    assert meta["fps"] == pytest.approx(8.0)
    back, info = load_clip(webp)
    assert back.shape == frames.shape
    assert torch.allclose(back, (frames * 255).round() / 255, atol=1e-6)
    assert info["fps_src"] == pytest.approx(8.0) and info["n_src"] == 9 and info["duration_s"] == pytest.approx(1.125)
    # resampling to 4 fps takes every other frame; 'hold' pads a short clip with its last frame
    half, info = load_clip(webp, num_frames=5, fps=4)
    assert torch.equal(half, back[::2]) and info["fps_out"] == 4.0
    held, info = load_clip(webp, num_frames=11, short_policy="hold")
    assert info["padded"] and torch.equal(held[9], back[8]) and torch.equal(held[10], back[8])
    later, _ = load_clip(webp, num_frames=3, start_s=0.5)
    assert torch.equal(later, back[4:7])
    # a ComfyUI-style lossy WebP whose name has no extension is recognised by its header
    pil = [Image.fromarray((f.numpy() * 255).astype(np.uint8)) for f in frames]
    noext = tmp_path / "ComfyUI_00001_"
    pil[0].save(noext, format="WEBP", save_all=True, append_images=pil[1:], duration=125, lossless=False, quality=80)
    assert load_clip(noext)[0].shape == frames.shape
    # errors: a truncated file, and a still where motion is required
    cut = tmp_path / "cut.webp"
    cut.write_bytes(webp.read_bytes()[: webp.stat().st_size // 2])
    with pytest.raises(DualAdapterError, match="cut.webp"):
        load_clip(cut)
    still = write_video(frames[:1], tmp_path / "still.webp", fps=8)
    with pytest.raises(DualAdapterError, match="still"):
        load_clip(still, num_frames=9, require_motion=True)


def test_save_image_and_png_frames(tmp_path):
    img = torch.rand(10, 14, 3)
    p = save_image(img, tmp_path / "one.png")
    again = load_image(p)
    assert torch.allclose(again, img, atol=1 / 255 + 1e-6)
    with pytest.raises(DualAdapterError, match="already exists"):
        save_image(img, p)
    frames = torch.rand(3, 6, 8, 3)
    paths = write_png_frames(frames, tmp_path / "seq")
    assert [q.name for q in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    loaded = load_images([tmp_path / "seq"])
    assert len(loaded) == 3 and torch.allclose(loaded[2], frames[2], atol=1 / 255 + 1e-6)
    with pytest.raises(DualAdapterError, match="already exists"):
        write_png_frames(frames, tmp_path / "seq")
