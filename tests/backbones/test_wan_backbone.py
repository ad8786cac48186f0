"""Wan 2.x as a backbone (docs/wan.md): the tiny model loads, samples a video of the right shape, its objective is
flow matching with Wan's shift, a diffusers Wan folder loads, and what the pack cannot load yet is refused by name."""
from __future__ import annotations


from helpers import save_wan_folder as _save_folder

import pytest
import torch

from dual_adapter.errors import DualAdapterError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-wan")


def test_tiny_wan_is_found_by_name_and_answers_the_interface(wan):
    from dual_adapter.backbones import as_backbone, backbone_for, kind_of

    assert kind_of("tiny-wan") == "wan" and as_backbone(wan) is wan
    assert backbone_for(wan.denoiser).kind == "wan"
    n = len(wan.denoiser.blocks)
    assert [b.name for b in wan.blocks()] == [f"blocks.{i}" for i in range(n)]
    assert set(wan.attention_modules("joint")) == {f"blocks.{i}.attn1" for i in range(n)}
    assert set(wan.text_entry_points()) == set(wan.attention_modules("cross")) == {f"blocks.{i}.attn2" for i in range(n)}
    assert wan.attention_modules("temporal") == {} and wan.motion_role == "joint"
    assert wan.width() == 32 and wan.adapter_dims() == (32, n, 32)
    # a bare transformer's backbone has the same structure and fingerprint
    assert backbone_for(wan.denoiser).fingerprint(wan.denoiser) == wan.fingerprint()


def test_tiny_wan_samples_and_decodes_a_video_of_the_right_shape(wan):
    from dual_adapter import sampling

    e = wan.encode_prompt("a dog is running")
    assert e.shape == (1, 16, 32)
    long_e = wan.encode_prompt(["a", "a dog is running in the park"])
    assert torch.count_nonzero(long_e[0, 3:]) == 0  # zeros past the prompt, as Wan's pipelines pad
    for sched in ("unipc", "euler"):
        lat = sampling.sample(wan, e, None, steps=2, cfg=5.0, seed=1, scheduler=sched)
        assert lat.shape == (1, 3, 4, 8, 8) and torch.isfinite(lat).all()
    again = sampling.sample(wan, e, None, steps=2, cfg=5.0, seed=1, scheduler="euler")
    assert torch.equal(again, lat)
    frames = wan.decode_latents(lat)
    assert frames.shape == (1, 9, 64, 64, 3) and 0 <= frames.min() and frames.max() <= 1
    z = wan.encode_frames(frames[0])
    assert z.shape == (1, 3, 4, 8, 8)
    lat2 = sampling.sample(wan, e, None, num_frames=5, height=32, width=48, steps=1, cfg=1.0)
    assert lat2.shape == (1, 2, 4, 4, 6)


def test_the_latents_are_normalised_with_the_vae_mean_and_std(wan):
    frames = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    z = wan.encode_frames(frames)
    raw = wan.vae.encode(frames[None].permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    c = wan.vae.config
    mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose(z.permute(0, 2, 1, 3, 4), (raw - mean) / std, atol=1e-5)


def test_flow_matching_objective_with_the_shift(wan):
    """x_t = (1 - sigma) x0 + sigma eps at timestep 1000 sigma, target eps - x0, sigma on the shifted grid."""
    from dual_adapter.training import diffusion_loss

    sched = wan.noise_scheduler()
    shift = wan.scheduler_config["flow_shift"]
    s = torch.linspace(1, 1000, 1000).flip(0) / 1000
    assert torch.allclose(sched.sigmas[:1000], shift * s / (1 + (shift - 1) * s), atol=1e-6)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 4, 8, 8, generator=g)
    eps = torch.randn(2, 3, 4, 8, 8, generator=g)
    e = wan.encode_prompt("x")
    k = torch.tensor([10, 700])
    loss = diffusion_loss(wan.denoiser, sched, x0, e, timesteps=k, noise=eps, reduce=False)
    sig = sched.sigmas[k].view(2, 1, 1, 1, 1)
    xt = (1 - sig) * x0 + sig * eps
    v = wan.denoiser(hidden_states=xt.permute(0, 2, 1, 3, 4), timestep=1000 * sig.flatten(),
                     encoder_hidden_states=e.expand(2, -1, -1), return_dict=False)[0].permute(0, 2, 1, 3, 4)
    want = ((v - (eps - x0)) ** 2).reshape(2, -1).mean(1)
    assert torch.allclose(loss, want, rtol=1e-4, atol=1e-6)


def test_sizes_and_schedulers_are_checked_by_name(wan):
    with pytest.raises(DualAdapterError, match="frames=8: Wan takes 4k\\+1"):
        wan.check_video_size(8, 64, 64)
    with pytest.raises(DualAdapterError, match="height=40: must be a positive multiple of 16"):
        wan.check_video_size(9, 40, 64)
    with pytest.raises(DualAdapterError, match="scheduler 'pndm'"):
        wan.make_scheduler("pndm")


def test_a_diffusers_wan_folder_loads_and_unsupported_ones_are_refused(wan, tmp_path):
    from dual_adapter.backbones import identify_folder, load_backbone

    root = tmp_path / "wan"
    _save_folder(wan, root)
    assert identify_folder(root) == "wan"
    bb = load_backbone(str(root), dtype="fp32", device="cpu")
    assert bb.kind == "wan" and bb.default_size == (81, 480, 832)
    x = torch.randn(1, 3, 4, 8, 8)
    e = wan.encode_prompt("a cat")
    e_folder = bb.encode_prompt("a cat")  # a folder's text length is Wan's 512 tokens
    assert e_folder.shape == (1, 512, 32) and torch.allclose(e_folder[:, :16], e, atol=1e-5)
    t = torch.tensor([500.0])
    assert torch.equal(bb.predict(x, t, e), wan.predict(x, t, e))
    i2v = tmp_path / "i2v"
    _save_folder(wan, i2v, {"in_channels": 12, "image_dim": 1280})
    with pytest.raises(DualAdapterError, match="lacks image_encoder/"):
        load_backbone(str(i2v))
    a14b = tmp_path / "a14b"
    _save_folder(wan, a14b, index={"_class_name": "WanPipeline", "boundary_ratio": 0.875})
    with pytest.raises(DualAdapterError, match="boundary_ratio but no transformer_2"):
        load_backbone(str(a14b))
    (root / "vae" / "config.json").unlink()
    with pytest.raises(DualAdapterError, match="missing: vae/config.json"):
        load_backbone(str(root))
