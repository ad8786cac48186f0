"""``prompt-influence`` and ``ttt-merge`` run on AnimateDiff through the one library code (the CLI picks the
backbone through dual_adapter.dispatch), as on CogVideoX and Wan."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter import customttt_unet as CT
from dual_adapter.backbones import load_backbone
from dual_adapter.cli import main
from dual_adapter.dispatch import load_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_names_are_told_apart_by_the_registry():
    from dual_adapter.dispatch import is_unet_name

    assert [is_unet_name(n) for n in ("tiny", "tiny-wan", "tiny-unet3d", "tiny-animatediff")] == \
        [False, False, True, True]


def test_prompt_influence_and_ttt_merge_on_animatediff(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    js = tmp_path / "influence.json"
    assert main(["prompt-influence", "--model", "tiny-animatediff", "--appearance-prompt", "a photo of a sks dog",
                 "--motion-prompt", "a person is playing guitar", "--timesteps", "500", "--seeds", "0",
                 "--frames", "2", "--height", "32", "--width", "32", "--json", str(js), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "customttt-animatediff --appearance-layers" in out and "--motion-layers" in out
    data = json.loads(js.read_text())
    n_layers = len(load_backbone("tiny-animatediff").text_layers())
    assert len(data["groups"]) == n_layers  # one group per U-Net text layer

    ad = load_backbone("tiny-animatediff")
    g = torch.Generator().manual_seed(0)
    cfg = CT.CustomTTTUNetConfig(rank=2, appearance_steps=1, motion_steps=1, optimizer="adamw")
    a, _ = CT.train_appearance_lora(ad, [torch.rand(32, 32, 3, generator=g)], "a photo of a sks dog", cfg)
    m, _ = CT.train_motion_lora(ad, [torch.rand(2, 32, 32, 3, generator=g)], "a guitar", cfg)
    a.save(tmp_path / "a.safetensors")
    m.save(tmp_path / "m.safetensors")
    merged = tmp_path / "merged.safetensors"
    assert main(["ttt-merge", "--model", "tiny-animatediff", "--appearance", "a.safetensors", "--appearance-prompt",
                 "a photo of a sks dog", "--motion", "m.safetensors", "--motion-prompt", "a guitar", "--prompt",
                 "a sks dog playing guitar", "--steps", "1", "--teacher-steps", "1", "--teacher-schedule", "2",
                 "--frames", "2", "--height", "32", "--width", "32", "--out", str(merged), "--quiet"]) == 0
    lf = load_lora(merged)
    assert lf.prefix == "unet" and set(lf.modules) == set(a.modules) | set(m.modules)
    assert lf.metadata["method"] == "CustomTTT"
