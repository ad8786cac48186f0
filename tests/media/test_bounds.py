"""Hostile sizes from tiny files and arguments are refused up front, by name, without a large allocation.

Each case builds a tiny crafted file (a few bytes to a few KB) that declares something huge (10^8 blocks, a
1 x 1000 photo, a 2 x 1000 video ...) and checks that a clear DualAdapterError naming the input comes back
quickly: the bounds in dual_adapter.limits are checked on the header / config / tensor names before anything is
built or decoded.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from dual_adapter import limits
from dual_adapter.errors import DualAdapterError

#: A refusal must come long before a big allocation could happen (the unbounded cases ran for minutes).
FAST_S = 5.0


@contextmanager
def refused_fast(match: str):
    t0 = time.perf_counter()
    with pytest.raises(DualAdapterError, match=match):
        yield
    assert time.perf_counter() - t0 < FAST_S


# ----------------------------------------------------------------------------- adapter files and model configs
def _adapter_tensors(num_blocks: int, dim: int = 8, hidden: int = 4) -> dict:
    sd = {}
    for i in range(num_blocks):
        for ad in ("id_attn_adapter", "id_ff_adapter", "motion_attn_adapter", "motion_ff_adapter"):
            sd[f"transformer_blocks.{i}.{ad}.down_linear.weight"] = torch.zeros(hidden, dim)
            sd[f"transformer_blocks.{i}.{ad}.down_linear.bias"] = torch.zeros(hidden)
            sd[f"transformer_blocks.{i}.{ad}.up_linear.weight"] = torch.zeros(dim, hidden)
            sd[f"transformer_blocks.{i}.{ad}.up_linear.bias"] = torch.zeros(dim)
    return sd


def test_official_pth_with_a_huge_block_index_is_refused(tmp_path):
    from dual_adapter.dualreal.checkpoint import import_official

    sd = _adapter_tensors(1)
    sd["transformer_blocks.100000000.id_attn_adapter.down_linear.weight"] = torch.zeros(4, 8)
    p = tmp_path / "adapter.pth"
    torch.save(sd, p)
    assert p.stat().st_size < 16_000
    with refused_fast(r"adapter\.pth.*block index 100000000.*at most 256"):
        import_official(p)
    # a gap in the block indices (0 and 3 only) is refused from the names too
    sd = _adapter_tensors(1)
    sd.update({k.replace(".0.", ".3."): v for k, v in _adapter_tensors(1).items()})
    torch.save(sd, tmp_path / "gap.pth")
    with refused_fast(r"gap\.pth.*only 2 blocks"):
        import_official(tmp_path / "gap.pth")


@pytest.mark.parametrize("num_blocks", [100_000_000, 1e8])
def test_adapter_file_whose_config_asks_for_1e8_blocks_is_refused(tmp_path, num_blocks):
    from dual_adapter.dualreal.checkpoint import FORMAT, load_adapters
    from dual_adapter.io import save_safetensors

    cfg = {"num_blocks": num_blocks, "dim": 8, "time_embed_dim": 8, "hidden": 4, "groups": 1, "controller": False}
    p = save_safetensors(_adapter_tensors(1), tmp_path / "a.safetensors", {"format": FORMAT, "version": 1,
                                                                           "config": cfg})
    with refused_fast(r"num_blocks=1.*1 \.\. 256"):
        load_adapters(p)


def test_adapter_config_is_checked_against_its_tensor_names_first(tmp_path):
    from dual_adapter.dualreal.checkpoint import FORMAT, load_adapters
    from dual_adapter.io import save_safetensors

    cfg = {"num_blocks": 2, "dim": 8, "time_embed_dim": 8, "hidden": 4, "groups": 1, "controller": False}
    sd = _adapter_tensors(1)
    sd["transformer_blocks.7.id_attn_adapter.down_linear.weight"] = torch.zeros(4, 8)
    p = save_safetensors(sd, tmp_path / "b.safetensors", {"format": FORMAT, "version": 1, "config": cfg})
    with refused_fast(r"b\.safetensors.*block index 7.*config says 2 blocks"):
        load_adapters(p)


@pytest.mark.parametrize("field,value", [("dim", 10**7), ("hidden", 10**6), ("groups", 10**6)])
def test_every_adapter_config_value_is_bounded(field, value):
    from dual_adapter.dualreal.adapters import DualRealConfig

    cfg = dict(num_blocks=2, dim=8, time_embed_dim=8, hidden=4, groups=1)
    cfg[field] = value
    with refused_fast(field):
        DualRealConfig.from_dict(cfg)


def test_cogvideox_folder_with_1e7_layers_is_refused_before_building(tiny, tmp_path):
    from dual_adapter import models as backbone

    from helpers import fake_model_folder as _fake_folder

    from safetensors.torch import save_file

    root = _fake_folder(tmp_path / "m", tiny, transformer={"num_layers": 10_000_000})
    save_file({"x": torch.zeros(1)}, root / "transformer" / "diffusion_pytorch_model.safetensors")  # a 4-byte "model"
    with refused_fast(r"transformer config.*num_layers=10000000.*bound 256"):
        backbone.load_cogvideox(root, device="cpu", dtype="fp32")
    root = _fake_folder(tmp_path / "w", tiny, transformer={"num_attention_heads": 4096, "attention_head_dim": 4096})
    with refused_fast(r"num_attention_heads x attention_head_dim"):
        backbone.load_cogvideox(root, device="cpu", dtype="fp32")


def test_unet_and_mini_folders_with_huge_configs_are_refused(tmp_path):
    from dual_adapter.backbones import unet3d
    from dual_adapter.miniworld.model import load_mini

    root = tmp_path / "zeroscope"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (root / part).mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel",
                                                           "layers_per_block": 10_000_000}))
    with refused_fast(r"unet.config\.json.*layers_per_block=10000000"):
        unet3d.load(str(root), device="cpu")
    mini = tmp_path / "mini"
    for f in ("transformer/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json",
              "scheduler/scheduler_config.json"):
        (mini / f).parent.mkdir(parents=True, exist_ok=True)
        (mini / f).write_text("{}")
    (mini / "transformer" / "config.json").write_text(json.dumps({"num_layers": 1e7}))
    with refused_fast(r"transformer.config\.json.*num_layers=10000000\.0 must be an integer"):
        load_mini(mini)


# ----------------------------------------------------------------------------- media
def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width x height`` (its pixel data is a stub): a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_huge_image_headers_are_refused_before_decoding(tmp_path):
    from dual_adapter import media

    for w, h in ((12000, 12000), (1, 20000)):
        p = _png_header(tmp_path / f"{w}x{h}.png", w, h)
        with refused_fast(rf"{w}x{h}\.png.*{w} x {h} pixels.*downscale"):
            media.load_image(p)


def test_thin_strips_are_cropped_before_scaling(tmp_path, out_dir):
    """A 1 x 1000 PNG (88 bytes) made Load Photos scale it to 480 x 480000 first; a 1 x 10000 one asked for 62 GB."""
    from PIL import Image

    from dual_adapter import media
    from nodes.core_nodes import LoadPhotos

    inp = tmp_path / "input"
    inp.mkdir()
    Image.new("RGB", (1, 1000), (200, 10, 10)).save(inp / "strip.png")
    t0 = time.perf_counter()
    out, n = LoadPhotos().load("strip.png", 480, 720)
    assert out.shape == (1, 480, 720, 3) and n == 1
    assert torch.allclose(out[0, 240, 360], torch.tensor([200, 10, 10]) / 255.0, atol=0.01)
    wide = media.fit_frames(torch.rand(2, 1, 10000, 3), 480, 720)  # a 1 x 10000 strip, two frames
    assert wide.shape == (2, 480, 720, 3)
    assert time.perf_counter() - t0 < FAST_S


def test_thin_video_is_cropped_before_scaling(tmp_path, out_dir):
    """A 2 x 1000 MP4 (a few KB) asked for 28 GB in Load Clip Frames."""
    from dual_adapter import media
    from nodes.core_nodes import LoadClipFrames

    inp = tmp_path / "input"
    inp.mkdir()
    clip = torch.linspace(0, 1, 9).view(9, 1, 1, 1).expand(9, 1000, 2, 3).contiguous()
    media.write_video(clip, inp / "thin.mp4", fps=8)
    assert (inp / "thin.mp4").stat().st_size < 20_000
    t0 = time.perf_counter()
    x, n, _ = LoadClipFrames().load(path="thin.mp4", frames=9, fps=8.0, height=480, width=720)
    assert x.shape == (9, 480, 720, 3) and n == 9
    assert time.perf_counter() - t0 < FAST_S


def test_clip_reads_are_bounded(tmp_path, monkeypatch):
    from dual_adapter import media

    p = media.write_video(torch.rand(24, 16, 16, 3), tmp_path / "long.mp4", fps=8)
    monkeypatch.setattr(limits, "MAX_CLIP_FRAMES", 10)  # a 10,000-frame clip, in miniature
    with refused_fast(r"long\.mp4.*more than 10 frames"):
        media.load_clip(p)
    assert media.load_clip(p, num_frames=5)[0].shape == (5, 16, 16, 3)
    monkeypatch.setattr(limits, "MAX_DECODED_BYTES", 16 * 16 * 12 * 4)  # room for 4 decoded frames
    with refused_fast(r"long\.mp4'?: 5 frames of 16 x 16 pixels would take 0.0146 MiB"):
        media.load_clip(p, num_frames=5)


def test_evaluate_bounds_a_long_clip_and_reads_the_first_frames(tmp_path, monkeypatch, capsys):
    from dual_adapter import cli, media

    p = media.write_video(torch.rand(24, 16, 16, 3), tmp_path / "long.mp4", fps=8)
    monkeypatch.setattr(limits, "MAX_CLIP_FRAMES", 10)
    assert cli.main(["evaluate", "--video", str(p), "--metrics", "temporal_flickering"]) == 2
    assert "more than 10 frames" in capsys.readouterr().err
    assert cli.main(["evaluate", "--video", str(p), "--metrics", "temporal_flickering", "--frames", "8"]) == 0
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--video", str(p), "--frames", str(limits.MAX_CLIP_FRAMES + 1)])


# ----------------------------------------------------------------------------- command line and library bounds
@pytest.mark.parametrize("argv,flag", [
    (["generate", "--prompt", "x", "--out", "o.mp4", "--height", "160000"], "--height"),
    (["generate", "--prompt", "x", "--out", "o.mp4", "--frames", "100001"], "--frames"),
    (["generate", "--prompt", "x", "--out", "o.mp4", "--steps", "100000"], "--steps"),
    (["generate", "--prompt", "x", "--out", "o.mp4", "--cfg", "-3"], "--cfg"),
    (["train-lora", "--prompt", "x", "--out", "o.safetensors", "--rank", "100000"], "--rank"),
    (["train-dualreal", "--subject", "s", "--identity-prompt", "x", "--motion", "m", "--motion-prompt", "y",
      "--out", "o.safetensors", "--hidden", "1000000"], "--hidden"),
    (["ttt-merge", "--appearance", "a", "--appearance-prompt", "x", "--motion", "m", "--motion-prompt", "y",
      "--prompt", "z", "--out", "o.safetensors", "--teacher-cfg", "0"], "--teacher-cfg"),
])
def test_cli_refuses_what_the_nodes_refuse(argv, flag, capsys):
    from dual_adapter import cli

    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv)  # refused while parsing: nothing is loaded or run
    assert e.value.code == 2 and time.perf_counter() - t0 < FAST_S
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "out of range" in err


def test_nodes_and_cli_share_one_set_of_bounds():
    from dual_adapter import cli
    from nodes.core_nodes import Sampler

    req = Sampler.INPUT_TYPES()["required"]
    assert req["frames"][1]["max"] == limits.MAX_FRAMES and req["height"][1]["max"] == limits.MAX_SIDE
    assert req["steps"][1]["max"] == limits.MAX_SAMPLING_STEPS
    assert (req["cfg"][1]["min"], req["cfg"][1]["max"]) == (limits.MIN_CFG, limits.MAX_CFG)
    gen = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["generate"]._actions
               if "--height" in a.option_strings)
    assert gen.type(str(limits.MAX_SIDE)) == limits.MAX_SIDE
    with pytest.raises(Exception):
        gen.type(str(limits.MAX_SIDE + 1))


def test_library_refuses_a_huge_video_before_allocating(tiny):
    """A single denoising step on 100001 frames ran for 12 minutes without seeing SIGTERM: refused up front."""
    from dual_adapter import sampling

    emb = torch.zeros(1, 16, 32)
    with refused_fast(r"frames=100001: at most 1025"):
        sampling.sample(tiny, emb, num_frames=100001, steps=1, cfg=1.0)
    with refused_fast(r"height=160000: at most 2048"):
        sampling.sample(tiny, emb, height=160000, steps=1, cfg=1.0)
    with refused_fast(r"steps=10000000: must be in 1 \.\. 1000"):
        sampling.sample(tiny, emb, steps=10_000_000, cfg=1.0)


# ----------------------------------------------------------------------------- broken frames
def test_truncated_gif_clip_is_refused_not_looped(tmp_path):
    from dual_adapter import media

    full = media.write_video(torch.rand(9, 32, 48, 3), tmp_path / "full.gif", fps=8)
    data = full.read_bytes()
    for cut in (0.1, 0.5):
        p = tmp_path / f"cut{cut}.gif"
        p.write_bytes(data[: int(len(data) * cut)])
        with refused_fast(rf"cut{cut}\.gif.*(corrupted|truncated)"):
            media.load_clip(p, num_frames=9)
    frames, info = media.load_clip(full, num_frames=9)  # a whole GIF still reads, at its own frame rate
    assert frames.shape == (9, 32, 48, 3) and info["n_read"] == 9 and info["fps_src"] == pytest.approx(8, rel=0.05)


def test_nan_and_0_255_frames_are_refused(tiny, out_dir):
    from dual_adapter import media, sampling
    from nodes.core_nodes import Encode
    from nodes.headless_core import SaveImage

    from dual_adapter.patches import PatchedModel

    good = torch.rand(5, 64, 96, 3)
    nan = good.clone()
    nan[2, 3, 4, 0] = float("nan")
    with pytest.raises(DualAdapterError, match=r"frames: 1 of .* NaN or infinite"):
        Encode().encode(PatchedModel(tiny), nan)
    with pytest.raises(DualAdapterError, match=r"frames: values range .* \.\. 25\d; .*0\.\.255 values: divide by 255"):
        Encode().encode(PatchedModel(tiny), good * 255)
    with pytest.raises(DualAdapterError, match=r"frames to encode: values range -[\d.]+ \.\. .*-1\.\.1"):
        sampling.encode_frames(tiny, good * 2 - 1)
    with pytest.raises(DualAdapterError, match="images: 1 of .* NaN"):
        SaveImage().save_images(nan, "nan")
    assert not list(out_dir.rglob("*.png"))
    with pytest.raises(DualAdapterError, match="frames to write: 1 of .* NaN"):
        media.write_video(nan, out_dir / "nan.mp4")
    assert Encode().encode(PatchedModel(tiny), good)[0]["samples"].isfinite().all()


def test_training_steps_are_bounded(tmp_path, capsys):
    from dual_adapter.cli import main
    from dual_adapter.training import TrainConfig

    with refused_fast(r"steps=200000: at most 100000"):
        TrainConfig(steps=200_000).validate(min_steps=1)
    assert main(["train-dualreal", "--subject", str(tmp_path), "--identity-prompt", "x", "--motion", str(tmp_path),
                 "--motion-prompt", "y", "--out", str(tmp_path / "o.safetensors"), "--steps", "200000"]) == 2
    assert "--steps 200000: at most 100000" in capsys.readouterr().err
