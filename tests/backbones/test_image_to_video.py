"""Image-to-video (docs/backbones.md, "Image-to-video"; docs/wan.md): CogVideoX I2V and Wan I2V / TI2V sample as
diffusers' own image-to-video pipelines do on the same weights, the conditioning reaches the model, I2V folders
load, training keeps the conditioning, and a text-to-video LoRA applies to the image-to-video model."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter.errors import DualAdapterError

from helpers import save_wan_folder

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = {"tiny-i2v": (9, 64, 96), "tiny-1.5-i2v": (9, 64, 96), "tiny-wan-i2v": (9, 64, 64), "tiny-wan-ti2v": (9, 64, 64)}


def _image(h, w, seed=1):
    u8 = torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return u8, u8.float() / 255


def _load(name):
    from dual_adapter.models import load_backbone

    return load_backbone(name)


def _ours(bb, image, noise, e, n):
    from dual_adapter.sampling import sample

    f, h, w = SIZES[bb.name]
    sched = "ddim" if bb.kind == "cogvideox" else "euler"
    return sample(bb, e, n, steps=2, cfg=5.0, image=image, num_frames=f, height=h, width=w, scheduler=sched,
                  latents=noise)


@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-1.5-i2v"])
def test_cogvideox_i2v_matches_diffusers_pipeline(name, monkeypatch):
    from diffusers import CogVideoXImageToVideoPipeline
    from diffusers.pipelines.cogvideo import pipeline_cogvideox_image2video as P

    from dual_adapter.seeds import seed_generator

    bb = _load(name)
    assert bb.image_to_video and bb.needs_image and bb.latent_channels == 4
    b = bb.bundle
    f, h, w = SIZES[name]
    e, n = bb.encode_prompt("a dog"), bb.encode_prompt("")
    _, img = _image(h, w)
    noise = torch.randn(bb.latent_shape(1, f, h, w), generator=seed_generator(0))
    ours = _ours(bb, img, noise, e, n)
    orig = P.retrieve_latents  # the pack encodes the image with the posterior mode; the pipeline samples it
    monkeypatch.setattr(P, "retrieve_latents", lambda enc, generator=None, sample_mode="sample": orig(enc, generator,
                                                                                                      "argmax"))
    pipe = CogVideoXImageToVideoPipeline(tokenizer=b.tokenizer, text_encoder=b.text_encoder, vae=b.vae,
                                         transformer=b.transformer, scheduler=bb.make_scheduler("ddim"))
    ref = pipe(image=img.permute(2, 0, 1)[None], prompt_embeds=e, negative_prompt_embeds=n, num_frames=f, height=h,
               width=w, num_inference_steps=2, guidance_scale=5.0, latents=noise, output_type="latent",
               return_dict=False)[0]
    ref = ref[:, ref.shape[1] - ours.shape[1]:]  # the pipeline keeps a 1.5 model's padding frame in "latent" output
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-wan-i2v", "tiny-wan-ti2v"])
def test_wan_i2v_matches_diffusers_pipeline(name):
    import PIL.Image
    from diffusers import WanImageToVideoPipeline

    from dual_adapter.seeds import seed_generator

    bb = _load(name)
    assert bb.image_to_video and bb.needs_image == (name == "tiny-wan-i2v")
    f, h, w = SIZES[name]
    e, n = bb.encode_prompt("a dog"), bb.encode_prompt("")
    u8, img = _image(h, w)
    noise = torch.randn(bb.latent_shape(1, f, h, w), generator=seed_generator(0))
    ours = _ours(bb, img, noise, e, n)
    pipe = WanImageToVideoPipeline(tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, vae=bb.vae,
                                   transformer=bb.denoiser, scheduler=bb.make_scheduler("euler"),
                                   image_encoder=bb.image_encoder, image_processor=bb.image_processor,
                                   expand_timesteps=name == "tiny-wan-ti2v")
    ref = pipe(image=PIL.Image.fromarray(u8.numpy()), prompt_embeds=e, negative_prompt_embeds=n, num_frames=f,
               height=h, width=w, num_inference_steps=2, guidance_scale=5.0, latents=noise.permute(0, 2, 1, 3, 4),
               output_type="latent", return_dict=False)[0].permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(SIZES))
def test_the_image_changes_the_video_and_is_required_or_refused(name):
    from dual_adapter.sampling import sample

    bb = _load(name)
    f, h, w = SIZES[name]
    e = bb.encode_prompt("a dog")
    a = sample(bb, e, steps=2, cfg=1.0, image=_image(h, w, 1)[1], num_frames=f, height=h, width=w)
    b = sample(bb, e, steps=2, cfg=1.0, image=_image(h, w, 2)[1], num_frames=f, height=h, width=w)
    assert (a - b).abs().max() > 1e-3
    if bb.needs_image:
        with pytest.raises(DualAdapterError, match="image-to-video model: give it a conditioning image"):
            sample(bb, e, steps=1, cfg=1.0, num_frames=f, height=h, width=w)
    with pytest.raises(DualAdapterError, match="one RGB image"):
        sample(bb, e, steps=1, cfg=1.0, image=torch.rand(2, h, w, 3), num_frames=f, height=h, width=w)


def test_text_to_video_models_refuse_an_image():
    from dual_adapter.sampling import sample

    for name in ("tiny", "tiny-wan"):
        bb = _load(name)
        f, h, w = bb.default_size
        with pytest.raises(DualAdapterError, match="is a text-to-video .*; a conditioning image needs"):
            sample(bb, bb.encode_prompt("a dog"), steps=1, cfg=1.0, image=torch.rand(h, w, 3))


def test_ti2v_keeps_the_image_as_the_first_latent_frame():
    from dual_adapter.sampling import sample

    bb = _load("tiny-wan-ti2v")
    img = _image(64, 64)[1]
    lat = sample(bb, bb.encode_prompt("a dog"), steps=2, cfg=1.0, image=img)
    torch.testing.assert_close(lat[:, :1], bb.encode_frames(img[None]))
    # without an image TI2V is a text-to-video model
    assert sample(bb, bb.encode_prompt("a dog"), steps=1, cfg=1.0).shape == lat.shape


def test_wan_i2v_folder_loads_with_its_image_encoder(tmp_path):
    from dual_adapter.backbones import load_backbone

    bb = _load("tiny-wan-i2v")
    root = tmp_path / "wan-i2v"
    save_wan_folder(bb, root, index={"_class_name": "WanImageToVideoPipeline"})
    with pytest.raises(DualAdapterError, match="lacks image_encoder/, image_processor/"):
        load_backbone(str(root), dtype="fp32", device="cpu")
    bb.image_encoder.save_pretrained(root / "image_encoder")
    bb.image_processor.save_pretrained(root / "image_processor")
    got = load_backbone(str(root), dtype="fp32", device="cpu")
    assert got.needs_image and got.image_encoder is not None
    img = _image(64, 64)[1]
    a, b = bb.image_conditioning(img, 9, 64, 64), got.image_conditioning(img, 9, 64, 64)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)
    torch.testing.assert_close(a.concat, b.concat)
    ti2v = tmp_path / "wan-ti2v"
    save_wan_folder(_load("tiny-wan-ti2v"), ti2v, index={"_class_name": "WanPipeline", "expand_timesteps": True})
    got = load_backbone(str(ti2v), dtype="fp32", device="cpu")
    assert got.image_to_video and not got.needs_image
    bad = tmp_path / "bad"
    save_wan_folder(bb, bad, {"in_channels": 10})
    with pytest.raises(DualAdapterError, match="maps 10 -> 4 channels but the VAE has 4"):
        load_backbone(str(bad))


def test_cogvideox_i2v_folder_passes_the_checks(tiny, tmp_path):
    from helpers import fake_model_folder

    from dual_adapter import models

    info = models.inspect_model(fake_model_folder(tmp_path / "i2v", tiny, transformer={"in_channels": 8,
                                                                                        "out_channels": 4}))
    assert info.latent_channels == 4
    with pytest.raises(DualAdapterError, match="maps 6 -> 4 channels"):
        models.inspect_model(fake_model_folder(tmp_path / "bad", tiny, transformer={"in_channels": 6,
                                                                                    "out_channels": 4}))


@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-wan-i2v", "tiny-wan-ti2v"])
def test_lora_training_on_i2v_feeds_the_first_frame_and_lowers_the_loss(name, monkeypatch):
    from dual_adapter import lora
    from dual_adapter.backbones import _wan_i2v
    from dual_adapter.training import TrainConfig

    bb = _load(name)
    f, h, w = SIZES[name]
    clip = torch.rand(1, 1, 1, 3).expand(f, h, w, 3).clone()
    clip[:, : h // 2] = torch.linspace(0, 1, f).view(f, 1, 1, 1)  # the top half brightens
    seen = []
    if bb.kind == "wan":  # the trainer holds a bare transformer: the objective finds the conditioning from it
        orig = _wan_i2v.training_conditioning
        monkeypatch.setattr(_wan_i2v, "training_conditioning", lambda net, lat: seen.append(1) or orig(net, lat))
    else:
        real = type(bb).training_conditioning
        monkeypatch.setattr(type(bb), "training_conditioning", lambda s, lat, d=None: seen.append(1) or real(s, lat, d))
    cfg = TrainConfig(steps=12, lr=3e-3, warmup_steps=0, lr_schedule="constant", checkpoint_every=0, seed=0,
                      gradient_checkpointing=False)
    _, res = lora.train_lora(bb, clips=[clip], prompt="a dog", cfg=cfg, fixed_batch=True, num_frames=f, height=h,
                             width=w)
    losses = [r["loss"] for r in res.losses]
    assert seen, "the training objective did not build the image conditioning"
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_a_t2v_wan_lora_applies_to_the_i2v_model():
    from dual_adapter import lora
    from dual_adapter.patches import patched_copy
    from dual_adapter.sampling import sample
    from dual_adapter.training import TrainConfig

    t2v, i2v = _load("tiny-wan"), _load("tiny-wan-i2v")
    clip = torch.rand(9, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=2, lr=1e-2, warmup_steps=0, lr_schedule="constant", checkpoint_every=0,
                      gradient_checkpointing=False)
    lf, _ = lora.train_lora(t2v, clips=[clip], prompt="a dog", cfg=cfg, num_frames=9, height=64, width=64)
    patch = lora.LoraPatch(lf, strength=1.0)
    net = patched_copy(i2v.denoiser, [patch])
    injected = set(lora.lora_modules(net))
    assert injected and all("add_k_proj" not in m and "add_v_proj" not in m for m in injected)
    e, img = i2v.encode_prompt("a dog"), _image(64, 64)[1]
    base = sample(i2v, e, steps=2, cfg=1.0, image=img)
    with_lora = sample(i2v, e, steps=2, cfg=1.0, image=img, patches=[patch])
    assert torch.isfinite(with_lora).all() and (with_lora - base).abs().max() > 0
    json.dumps(lf.metadata, default=str)


def test_generate_command_takes_an_image(tmp_path):
    import numpy as np
    import PIL.Image

    from dual_adapter.cli import main

    photo = tmp_path / "photo.png"
    PIL.Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype("uint8")).save(photo)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-wan-i2v", "--prompt", "a dog", "--image", str(photo), "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert out.is_file()
