"""The headless runner's CLIPVisionLoader / CLIPVisionEncode stand-ins load a CLIP vision file from
models/clip_vision (transformers key layout, as ComfyUI's clip_vision_h.safetensors) and encode images with it."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.io import save_safetensors
from dual_adapter.reference import ReferenceEncoder


def _tiny_clip(seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=16,
                           image_size=32, patch_size=8, projection_dim=1024, layer_norm_eps=1e-5,
                           hidden_act="gelu")  # as OpenCLIP ViT-H/14 (ComfyUI's clip_vision_h)
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(cfg).eval()


@pytest.fixture()
def clip_file(out_dir, tmp_path):
    model = _tiny_clip()
    folder = tmp_path / "models" / "clip_vision"
    save_safetensors(model.state_dict(), folder / "tiny_clip.safetensors")
    return model, folder / "tiny_clip.safetensors"


def _core():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def test_the_clip_vision_stand_ins_load_and_encode(clip_file):
    model, _ = clip_file
    nodes = _core()
    assert "tiny_clip.safetensors" in nodes["CLIPVisionLoader"].INPUT_TYPES()["required"]["clip_name"][0]
    (clip,) = nodes["CLIPVisionLoader"]().load_clip("tiny_clip.safetensors")
    image = torch.rand(2, 40, 56, 3)
    (out,) = nodes["CLIPVisionEncode"]().encode(clip, image, crop="center")
    want = ReferenceEncoder(model)(image)  # the same weights, built from their own config
    assert out.image_embeds.shape == (2, 1024)
    torch.testing.assert_close(out.image_embeds, want, atol=1e-5, rtol=1e-4)
    (whole,) = nodes["CLIPVisionEncode"]().encode(clip, image, crop="none")
    assert not torch.allclose(whole.image_embeds, out.image_embeds)  # crop "none" squeezes the whole image


def test_a_workflow_with_the_clip_vision_stand_ins_runs(clip_file, tmp_path, capsys):
    from dual_adapter.cli import main
    from PIL import Image

    (tmp_path / "input").mkdir()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "input" / "photo.png")
    wf = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_clip.safetensors"}},
          "2": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
          "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 0], "image": ["2", 0],
                                                             "crop": "center"}},
          "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    assert main(["run", str(tmp_path / "wf.json")]) == 0, capsys.readouterr().err
    assert "image_embeds" in capsys.readouterr().out


def test_files_that_are_not_a_clip_vision_model_are_refused(out_dir, tmp_path):
    folder = tmp_path / "models" / "clip_vision"
    save_safetensors({"visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 3)},
                     folder / "openclip.safetensors")
    save_safetensors({"weight": torch.zeros(3)}, folder / "other.safetensors")
    sd = _tiny_clip().state_dict()
    del sd["vision_model.post_layernorm.weight"]
    save_safetensors(sd, folder / "broken.safetensors")
    loader = _core()["CLIPVisionLoader"]()
    with pytest.raises(DualAdapterError, match="OpenCLIP's layout"):
        loader.load_clip("openclip.safetensors")
    with pytest.raises(DualAdapterError, match="not a CLIP vision model"):
        loader.load_clip("other.safetensors")
    with pytest.raises(DualAdapterError, match="does not match a CLIP vision model.*post_layernorm"):
        loader.load_clip("broken.safetensors")
