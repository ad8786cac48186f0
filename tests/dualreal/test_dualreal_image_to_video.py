"""DualReal on image-to-video models (docs/dualreal.md, docs/wan.md "Image-to-video"): the trainer's shared
objective conditions every sample on its own first frame (a clip's first frame; an identity photo is a 1-frame
video, so the photo itself). On Wan 2.1 I2V (tiny-wan-i2v), CogVideoX I2V (tiny-i2v) and Wan 2.2 TI2V (tiny-wan-ti2v)
the loss falls over a few steps and the gradient mask keeps the inactive adapter set bit-identical."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.dualreal import (DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealData, DualRealOptions,
                                   train_dualreal, train_dualreal_on_data)
from dual_adapter.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ["tiny-wan-i2v", "tiny-i2v", "tiny-wan-ti2v"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    from dual_adapter.models import load_video_model

    return load_video_model(request.param)


def _photo_and_clip(h, w, n):
    photo = torch.zeros(h, w, 3)
    photo[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = torch.tensor([0.9, 0.5, 0.1])
    clip = torch.zeros(n, h, w, 3)
    for i in range(n):
        clip[i, h // 3: 2 * h // 3, 2 + 3 * i: 2 + 3 * i + w // 3] = torch.tensor([0.9, 0.5, 0.1])
    return photo, clip


def _bb(model):
    from dual_adapter.backbones import as_backbone

    return as_backbone(model)


def test_joint_training_on_an_image_to_video_model_lowers_the_loss(model):
    from dual_adapter.reference import build_tiny_reference_encoder

    bb = _bb(model)
    f, h, w = bb.default_size
    photo, clip = _photo_and_clip(h, w, f)
    res = train_dualreal(model, [photo], "dog *", [clip], "dog * runs", reference_encoder=build_tiny_reference_encoder(),
                         options=DualRealOptions(groups=2, latent_sampling="mode"),
                         train=TrainConfig(steps=60, lr=3e-3, warmup_steps=0, checkpoint_every=0,
                                           gradient_checkpointing=False, seed=0))
    losses = [r["loss"] for r in res.losses]
    assert {r["phase"] for r in res.losses} == {"identity", "motion"}
    assert all(torch.isfinite(torch.tensor(losses))), losses  # a 1-frame photo trains too (TI2V: not an empty loss)
    for phase in ("identity", "motion"):
        mine = [r["loss"] for r in res.losses if r["phase"] == phase]
        k = max(1, len(mine) // 4)
        assert sum(mine[-k:]) / k < sum(mine[:k]) / k, (phase, mine)


@pytest.mark.parametrize("phase", ["identity", "motion"])
def test_gradient_mask_keeps_the_inactive_set_bit_identical_on_image_to_video(model, phase):
    bb = _bb(model)
    f, h, w = bb.default_size
    photo, clip = _photo_and_clip(h, w, f)
    g = torch.Generator().manual_seed(0)
    data = DualRealData(bb.encode_frames(photo[None]).expand(2, -1, -1, -1, -1).clone(), bb.encode_frames(clip),
                        bb.encode_prompt("dog *"), bb.encode_prompt("a dog runs"), torch.randn(1, 1024, generator=g),
                        "dog *", "a dog runs", "test")
    cfg = DualRealConfig.for_transformer(bb.denoiser, groups=2)
    mod = DualRealAdapters(cfg)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    start = DualRealAdapterSet.from_module(mod)
    res = train_dualreal_on_data(bb.denoiser, bb.scheduler_config, data,
                                 DualRealOptions(groups=2, motion_ratio=1.0 if phase == "motion" else 0.0,
                                                 motion_batch=1),
                                 TrainConfig(steps=2, lr=1e-2, warmup_steps=0, checkpoint_every=0,
                                             gradient_checkpointing=False), adapters=start)
    assert [r["phase"] for r in res.losses] == [phase, phase]
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in res.losses])))
    before, after = start.state_dict, res.adapters.state_dict
    frozen, active = ("motion_", "id_") if phase == "identity" else ("id_", "motion_")
    for k in before:
        if f".{frozen}" in k:
            assert torch.equal(before[k], after[k]), f"{k} changed in the {phase} phase"
        elif f".{active}" in k and "condition_linear" not in k:
            assert not torch.equal(before[k], after[k]), f"{k} did not train in the {phase} phase"
