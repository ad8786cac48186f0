"""TAP on Wan (docs/wan.md, docs/tap.md): the motion LoRA sits on the self-attention's query and key only and never
changes a value weight; the full-attention preset is there for comparison; training lowers the flow-matching loss
on a fixed batch; the CLI trains and applies it on ``tiny-wan``."""
from __future__ import annotations


import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-wan")


def _clip(n=9, size=64):
    fr = torch.zeros(n, size, size, 3)
    for i in range(n):
        fr[i, 10:30, 4 + 4 * i: 24 + 4 * i] = 1.0
    return fr


def test_tap_targets_self_attention_query_and_key_and_never_value(wan):
    from dual_adapter import lora

    n = len(wan.blocks())
    tap = lora.LoraSpec.from_preset("tap").target_modules(wan.denoiser)
    assert tap == [f"blocks.{i}.attn1.{p}" for p in ("to_q", "to_k") for i in range(n)]
    full = lora.LoraSpec.from_preset("full").target_modules(wan.denoiser)
    assert set(full) == {f"blocks.{i}.attn1.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0") for i in range(n)}
    values = {k: v.clone() for k, v in wan.denoiser.state_dict().items()}
    cfg = lora.lora_train_config(steps=30, lr=3e-3, optimizer="adamw", checkpoint_every=0)
    lf, res = lora.train_lora(wan, clips=[_clip()], prompt="a square moves", spec=lora.LoraSpec(rank=4, alpha=4.0,
                              dropout=0.0), cfg=cfg, fixed_batch=True)
    assert sorted(lf.targets) == ["attn1.to_k", "attn1.to_q"] and lf.metadata["preset"] == "tap"
    assert not any(".to_v." in k or "attn2" in k for k in lf.state_dict)
    # the loaded model is untouched, and applying the LoRA changes no value projection
    assert all(torch.equal(v, values[k]) for k, v in wan.denoiser.state_dict().items())
    from dual_adapter.patches import patched_copy

    model = patched_copy(wan.denoiser, [lora.LoraPatch(lf, 1.0)])
    for i in range(n):
        a = model.blocks[i].attn1
        assert type(a.to_v) is torch.nn.Linear and torch.equal(a.to_v.weight, values[f"blocks.{i}.attn1.to_v.weight"])
    losses = [r["loss"] for r in res.losses]
    assert sum(losses[-5:]) / 5 < 0.97 * sum(losses[:5]) / 5, losses  # q/k only: a slow, steady descent


def test_cli_trains_a_tap_lora_on_tiny_wan_and_generates_with_it(tmp_path, monkeypatch):
    from dual_adapter import media
    from dual_adapter.cli import main
    from dual_adapter.lora import load_lora

    clip = tmp_path / "clip.mp4"
    media.write_video(_clip(), clip, fps=8)
    out = tmp_path / "tap.safetensors"
    assert main(["train-lora", "--model", "tiny-wan", "--motion", str(clip), "--prompt", "a square moves",
                 "--steps", "3", "--rank", "4", "--out", str(out), "--quiet"]) == 0
    lf = load_lora(out)
    assert lf.metadata["base_config"]["num_layers"] == 4 and sorted(lf.targets) == ["attn1.to_k", "attn1.to_q"]
    video = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-wan", "--prompt", "a square moves", "--steps", "2",
                 "--lora", f"{out}:0.5", "--scheduler", "euler", "--out", str(video), "--quiet"]) == 0
    frames = media.load_clip(video)[0]
    assert frames.shape[0] == 9 and frames.shape[1:3] == (64, 64)
