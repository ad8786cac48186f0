"""Wan in the pack's nodes (docs/wan.md, "In ComfyUI"): Load CogVideoX lists and loads ``tiny-wan`` and Wan folders
in models/Wan/, and the Encode / Sample / Decode, Train Motion LoRA / Apply LoRA and Train / Apply DualReal nodes run
on it in headless graphs."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP = {"class_type": "DualAdapterLoadClip", "inputs": {"path": "examples/guitar.mp4", "frames": 9, "fps": 8.0,
                                                         "height": 64, "width": 64}}


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _graph(extra: dict, model_for_sampler: str = "1", scheduler: str = "dpm") -> dict:
    """load tiny-wan (1) -> encode (2) -> sample (3, on ``model_for_sampler``) -> decode (4) -> save (5)."""
    wf = {
        "1": {"class_type": "DualAdapterLoadVideoModel", "inputs": {"model": "tiny-wan"}},
        "2": {"class_type": "DualAdapterTextEncode", "inputs": {"model": ["1", 0], "prompt": "a dog * is running",
                                                                 "negative_prompt": ""}},
        "3": {"class_type": "DualAdapterSampler", "inputs": {"model": [model_for_sampler, 0], "embeds": ["2", 0],
                                                              "steps": 3, "cfg": 3.0, "seed": 7,
                                                              "scheduler": scheduler}},
        "4": {"class_type": "DualAdapterVAEDecode", "inputs": {"model": ["1", 0], "latent": ["3", 0]}},
        "5": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["4", 0], "filename_prefix": "wan/test",
                                                            "fps": 8.0}},
    }
    wf.update(extra)
    return wf


def _run(wf, classes):
    from dual_adapter.graph import run_workflow

    return run_workflow(wf, classes)


def _base_latent(classes, scheduler="dpm"):
    return _run(_graph({}, scheduler=scheduler), classes)["3"][0]["samples"]


def test_load_encode_sample_decode_on_tiny_wan(classes, out_dir):
    loader = classes["DualAdapterLoadVideoModel"]
    assert "tiny-wan" in loader.INPUT_TYPES()["required"]["model"][0]
    out = _run(_graph({}), classes)
    bb = out["1"][0].bundle
    assert bb.kind == "wan" and bb.name == "tiny-wan"
    emb = out["2"][0]
    assert emb["positive"].shape == (1, 16, 32) and emb["negative"].shape == (1, 16, 32)  # UMT5 tokens x width
    lat = out["3"][0]["samples"]
    assert lat.shape == (1, 4, 3, 8, 8)  # [B, C, F_lat, h, w] for 9 x 64 x 64 px
    frames = out["4"][0]
    assert frames.shape == (9, 64, 64, 3) and 0 <= frames.min() and frames.max() <= 1
    assert list(out_dir.rglob("*.webp"))
    # Wan's own scheduler names sample; on CogVideoX they are refused by name
    euler = _run(_graph({}, scheduler="euler"), classes)["3"][0]["samples"]
    assert euler.shape == lat.shape and not torch.equal(euler, lat)
    from dual_adapter.patches import PatchedModel
    from dual_adapter.backbones.cogvideox import build_tiny

    cog = PatchedModel(build_tiny("tiny"))
    emb = classes["DualAdapterTextEncode"]().encode(cog, "a dog")[0]
    with pytest.raises(DualAdapterError, match="scheduler: 'unipc' is a Wan scheduler"):
        classes["DualAdapterSampler"]().run(cog, emb, steps=1, scheduler="unipc")


def test_train_motion_lora_apply_lora_sample_on_tiny_wan(classes, out_dir):
    base = _base_latent(classes)
    wf = _graph({
        "10": CLIP,
        "11": {"class_type": "DualAdapterTrainMotionLoRA", "inputs": {
            "model": ["1", 0], "clip": ["10", 0], "prompt": "a dog is running", "preset": "tap", "rank": 4,
            "alpha": 4.0, "dropout": 0.0, "learning_rate": 1e-2, "steps": 2, "seed": 0, "name": "wan_tap",
            "gradient_checkpointing": False, "preview_every": 0}},
        "12": {"class_type": "DualAdapterApplyLoRA", "inputs": {"model": ["1", 0], "lora": ["11", 0],
                                                                 "strength": 1.0}},
    }, model_for_sampler="12")
    out = _run(wf, classes)
    lora = out["11"][0]
    keys = list(lora.state_dict)
    assert keys and all(".attn1.to_q." in k or ".attn1.to_k." in k for k in keys)  # TAP: query / key only
    lat = out["3"][0]["samples"]
    assert lat.shape == base.shape and not torch.equal(lat, base)  # the applied LoRA changes the video
    assert out["4"][0].shape == (9, 64, 64, 3)


def test_train_dualreal_apply_dualreal_sample_on_tiny_wan(classes, out_dir):
    base = _base_latent(classes)
    wf = _graph({
        "10": CLIP,
        "13": {"class_type": "DualAdapterLoadPhotos", "inputs": {"path": "examples/dog", "height": 64, "width": 64}},
        "11": {"class_type": "DualRealTrain", "inputs": {
            "model": ["1", 0], "subject": ["13", 0], "identity_prompt": "dog *", "motion": ["10", 0],
            "motion_prompt": "a dog is running", "steps": 2, "lr": 1e-3, "motion_ratio": 0.5, "hidden_width": 8,
            "groups": 0, "form": "official", "seed": 0, "name": "wan_dualreal", "warmup_steps": 0,
            "checkpoint_every": 0, "preview_every": 0}},
        "12": {"class_type": "DualRealApply", "inputs": {"model": ["1", 0], "adapters": ["11", 0],
                                                          "reference_image": ["13", 0]}},
    }, model_for_sampler="12")
    out = _run(wf, classes)
    adapters = out["11"][0]
    assert adapters.config.num_blocks == 4  # one DA-block pair per tiny-wan block
    assert adapters.meta.get("reference_encoder") == "tiny"  # tiny-wan trains with the built-in tiny CLIP
    lat = out["3"][0]["samples"]
    assert lat.shape == base.shape and not torch.equal(lat, base)  # the applied adapters change the video
    assert out["4"][0].shape == (9, 64, 64, 3)
    assert list((out_dir / "runs" / "dualreal").glob("wan_dualreal_*_/wan_dualreal.safetensors"))  # the run folder


def test_loader_lists_and_loads_a_wan_folder_in_models_wan(classes, out_dir, tmp_path):
    from helpers import save_wan_folder as _save_folder

    from dual_adapter.backbones import wan

    bb = wan.build_tiny()
    root = tmp_path / "models" / "Wan" / "my-wan"
    _save_folder(bb, root)
    loader = classes["DualAdapterLoadVideoModel"]
    assert "my-wan" in loader.INPUT_TYPES()["required"]["model"][0]
    m = loader().load("my-wan", dtype="fp32", device="cpu")[0]
    assert m.bundle.kind == "wan" and m.bundle.default_size == (81, 480, 832)
    assert torch.equal(m.bundle.denoiser.blocks[0].attn1.to_q.weight, bb.denoiser.blocks[0].attn1.to_q.weight)
    with pytest.raises(DualAdapterError, match="native_transformer: .* CogVideoX only"):
        (tmp_path / "models" / "diffusion_models").mkdir(parents=True)
        (tmp_path / "models" / "diffusion_models" / "t.safetensors").write_bytes(b"")
        loader().load("tiny-wan", native_transformer="t.safetensors")
    # one loader: a Wan folder in models/diffusers/ (the U-Nets' folder) loads as Wan, by its contents
    (tmp_path / "models" / "Wan" / "my-wan").rename(tmp_path / "elsewhere")
    (tmp_path / "models" / "diffusers").mkdir(parents=True)
    (tmp_path / "models" / "diffusers" / "my-wan").symlink_to(tmp_path / "elsewhere")
    assert classes["DualAdapterUNetVideoLoader"]().load("my-wan", dtype="fp32", device="cpu")[0].bundle.kind == "wan"


def test_core_conditioning_of_the_wrong_width_is_refused_on_wan(classes):
    from dual_adapter.backbones import wan
    from dual_adapter.patches import PatchedModel

    m = PatchedModel(wan.build_tiny())
    ok = [[torch.zeros(1, 16, 32), {}]]
    latent = classes["DualAdapterSampler"]().run(m, ok, steps=1, cfg=1.0)[0]["samples"]
    assert latent.shape == (1, 4, 3, 8, 8)
    with pytest.raises(DualAdapterError, match="4096-wide, this tiny-wan takes 32 .*CLIPLoader type 'wan'"):
        classes["DualAdapterSampler"]().run(m, [[torch.zeros(1, 16, 4096), {}]], steps=1)
