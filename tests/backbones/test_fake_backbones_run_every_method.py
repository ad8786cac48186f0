"""The interface criterion (docs/backbones.md, "Adding a backbone"): a fake DiT and a fake U-Net, defined in the tests
(tests/fakes.py) and registered through :func:`dual_adapter.backbones.register_backbone`, run every method through
the :class:`~dual_adapter.backbones.base.VideoBackbone` interface alone: TAP training on the U-Net's temporal
attention, the DualReal patch and its training on the DiT, CustomTTT's prompt influence and TTT merge on both. (LoRA
round trips through every file layout on both fakes: tests/lora/test_lora_one_mechanism.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fakes import FakeDiTBackbone, FakeUNetBackbone, FakeUNetWithImageMode, registered

from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dit():
    with registered(FakeDiTBackbone) as bb:
        yield bb


@pytest.fixture
def unet():
    with registered(FakeUNetBackbone) as bb:
        yield bb


@pytest.fixture(params=["dit", "unet"])
def fake(request):
    with registered({"dit": FakeDiTBackbone, "unet": FakeUNetBackbone}[request.param]) as bb:
        yield bb


def _moving_clip(frames=3, size=32):
    """A bright square moving right, ``[F, H, W, 3]`` in 0..1."""
    clip = torch.zeros(frames, size, size, 3)
    for i in range(frames):
        clip[i, 8:24, 4 + 6 * i: 16 + 6 * i] = torch.tensor([0.9, 0.5, 0.1])
    return clip


def _fixed_loss(bb, denoiser, latents, text, draws=8, seed=0):
    """The backbone's training objective averaged over fixed draws of ``t`` and the noise."""
    g = torch.Generator().manual_seed(seed)
    sched = bb.noise_scheduler()
    t = torch.randint(0, 1000, (draws,), generator=g)
    eps = torch.randn((draws, *latents.shape[1:]), generator=g)
    with torch.no_grad():
        return float(bb.training_loss(denoiser, sched, latents.expand(draws, *latents.shape[1:]), text, timesteps=t,
                                      noise=eps))


# ------------------------------------------------------------------------------ 1. TAP on the U-Net's temporal attention


def test_tap_trains_the_fake_unets_temporal_attention_and_only_lora_weights(unet):
    from dual_adapter import dispatch

    before = {k: v.clone() for k, v in unet.denoiser.state_dict().items()}
    clip, prompt = _moving_clip(), "a square moves right"
    lora, losses = dispatch.train_motion_lora(unet, [clip], prompt, rank=4, dropout=0.0, lr=1e-2, steps=30, seed=0,
                                              gradient_checkpointing=False)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor([r["loss"] for r in losses])))
    temporal = unet.attention_modules("temporal")
    # the published preset (k_out: to_k and to_out.0) of every temporal attention, never a value projection
    assert sorted(lora.modules) == sorted(f"{a}.{p}" for a in temporal for p in ("to_k", "to_out.0"))
    assert lora.prefix == "unet" and not any(m.endswith("to_v") for m in lora.modules)
    assert all(torch.equal(before[k], v) for k, v in unet.denoiser.state_dict().items())  # the base never changes
    # the LoRA, applied through the one entry, lowers the training objective on the clip
    x0, text = unet.encode_frames(clip), unet.encode_prompt(prompt)
    model = patched_copy(unet.denoiser, [dispatch.lora_patch(lora, unet)])
    assert _fixed_loss(unet, model, x0, text) < 0.9 * _fixed_loss(unet, unet.denoiser, x0, text)
    # and a LoRA of the TAP preset (to_q, to_k) changes no value projection's output either
    tap, _ = dispatch.train_motion_lora(unet, [clip], prompt, preset="tap", rank=4, lr=1e-2, steps=2)
    assert sorted(tap.modules) == sorted(f"{a}.{p}" for a in temporal for p in ("to_q", "to_k"))


def test_motiondirectors_spatial_path_runs_where_the_backbone_has_an_image_mode(unet):
    from dual_adapter import unet_motion as UM

    clip, prompt = _moving_clip(), "a square moves right"
    cfg = UM.UNetMotionTrainConfig(rank=2, steps=3, spatial_skip_prob=0.0)  # the published default: spatial path on
    with pytest.raises(DualAdapterError, match="spatial_path"):  # the interface's default: no spatial transformers
        UM.train_unet_motion_lora(unet, [clip], prompt, cfg)
    with registered(FakeUNetWithImageMode) as bb:
        motion, spatial, losses = UM.train_unet_motion_lora(bb, [clip], prompt, cfg)
        assert all("loss_spatial" in r for r in losses)
        assert sorted(spatial.modules) == sorted(f"{a}.{p}" for a in bb.attention_modules("spatial")
                                                 for p in ("to_q", "to_k", "to_v", "to_out.0"))
        assert set(motion.modules) == {f"{a}.{p}" for a in bb.attention_modules("temporal") for p in ("to_k", "to_out.0")}
