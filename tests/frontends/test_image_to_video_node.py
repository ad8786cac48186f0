"""Image To Video (first frame) in a headless graph (docs/backbones.md, "Image-to-video"): Load -> Encode -> Load
Photos -> Image To Video -> Sample -> Decode on the tiny image-to-video models; a text-to-video model is refused."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _graph(model: str, photo: str, w: int) -> dict:
    return {
        "1": {"class_type": "DualAdapterLoadVideoModel", "inputs": {"model": model}},
        "2": {"class_type": "DualAdapterTextEncode", "inputs": {"model": ["1", 0], "prompt": "a dog", "negative_prompt": ""}},
        "3": {"class_type": "DualAdapterLoadPhotos", "inputs": {"path": photo, "height": 64, "width": w}},
        "4": {"class_type": "DualAdapterImageToVideo", "inputs": {"model": ["1", 0], "embeds": ["2", 0],
                                                                   "image": ["3", 0]}},
        "5": {"class_type": "DualAdapterSampler", "inputs": {"model": ["1", 0], "embeds": ["4", 0], "steps": 2,
                                                              "cfg": 3.0, "seed": 1}},
        "6": {"class_type": "DualAdapterVAEDecode", "inputs": {"model": ["1", 0], "latent": ["5", 0]}},
        "7": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["6", 0], "filename_prefix": "i2v/test",
                                                            "fps": 8.0}},
    }


@pytest.mark.parametrize("model,w", [("tiny-wan-i2v", 64), ("tiny-i2v", 96)])
def test_image_to_video_node_conditions_the_sampler(classes, out_dir, model, w):
    from dual_adapter.graph import run_workflow

    assert "DualAdapterImageToVideo" in classes
    out = run_workflow(_graph(model, "examples/dog", w), classes)
    assert out["4"][0]["image"].shape == (1, 64, w, 3)
    frames = out["6"][0]
    assert frames.shape == (9, 64, w, 3)
    # another image, another video: the image reaches the sampler
    node = classes["DualAdapterImageToVideo"]()
    other = node.attach(out["1"][0], out["2"][0], torch.zeros(1, 64, w, 3))[0]
    lat = classes["DualAdapterSampler"]().run(out["1"][0], other, steps=2, cfg=3.0, seed=1)[0]["samples"]
    assert not torch.allclose(lat, out["5"][0]["samples"])


def test_image_to_video_node_refuses_a_text_to_video_model(classes):
    from dual_adapter.patches import PatchedModel
    from dual_adapter.backbones.cogvideox import build_tiny

    cog = PatchedModel(build_tiny("tiny"))
    emb = classes["DualAdapterTextEncode"]().encode(cog, "a dog")[0]
    with pytest.raises(DualAdapterError, match="model: 'tiny' is a text-to-video model"):
        classes["DualAdapterImageToVideo"]().attach(cog, emb, torch.rand(1, 64, 96, 3))
