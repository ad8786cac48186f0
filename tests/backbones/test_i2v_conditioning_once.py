"""Wan 2.1 I2V training computes each item's image conditioning once (docs/wan.md, "Image-to-video"): the LoRA and
DualReal trainers build it before the training loop (VideoBackbone.item_conditioning), so the VAE is not called
inside the loop, and the losses equal the objective's per-step conditioning bit for bit."""
from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

F, H, W = 9, 64, 64


@pytest.fixture(scope="module")
def bb():
    from dual_adapter.models import load_backbone

    return load_backbone("tiny-wan-i2v")


def _clip(seed=0):
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(1, 1, 1, 3, generator=g).expand(F, H, W, 3).clone()
    clip[:, : H // 2] = torch.linspace(0, 1, F).view(F, 1, 1, 1)  # the top half brightens
    return clip


@contextlib.contextmanager
def _vae_calls_in_loop(bb, monkeypatch, trainer_module):
    """Count the VAE's encode / decode calls made while ``trainer_module``'s ``train_loop`` runs."""
    calls = {"in_loop": False, "encode": 0, "decode": 0}
    for name in ("encode", "decode"):
        orig = getattr(bb.vae, name)

        def wrapped(*a, _orig=orig, _name=name, **k):
            if calls["in_loop"]:
                calls[_name] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(bb.vae, name, wrapped)
    loop = getattr(trainer_module, "train_loop")

    def counting_loop(*a, **k):
        calls["in_loop"] = True
        try:
            return loop(*a, **k)
        finally:
            calls["in_loop"] = False

    monkeypatch.setattr(trainer_module, "train_loop", counting_loop)
    yield calls
    monkeypatch.undo()


def _once_and_per_step(bb, monkeypatch, trainer_module, run):
    """``run()``'s losses as the trainer runs it (no VAE call in the loop) and with the objective's own per-step
    conditioning (no item conditioning precomputed: the VAE runs in the loop)."""
    with _vae_calls_in_loop(bb, monkeypatch, trainer_module) as calls:
        once = run()
    assert calls["encode"] == calls["decode"] == 0, calls
    with monkeypatch.context() as m:
        m.setattr(type(bb), "item_conditioning", lambda self, latents, denoiser=None: None, raising=False)
        with _vae_calls_in_loop(bb, m, trainer_module) as calls:
            per_step = run()
    assert calls["decode"] > 0 and calls["encode"] > 0, "the per-step fallback no longer runs"
    return once, per_step


def _cfg(steps=3):
    from dual_adapter.training import TrainConfig

    return TrainConfig(steps=steps, lr=3e-3, warmup_steps=0, lr_schedule="constant", checkpoint_every=0, seed=0,
                       gradient_checkpointing=False)


LORA_CASES = {"clip+photo": dict(photos=True), "batch 2, 2 micro-batches": dict(batch_size=2, grad_accum=2),
              "spatial path": dict(spatial_path=True)}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_training_calls_no_vae_in_the_loop_and_keeps_the_losses(bb, monkeypatch, case):
    import dual_adapter.training as training
    from dual_adapter import lora

    kw = dict(LORA_CASES[case])
    photos = [_clip(2)[0]] if kw.pop("photos", False) else []
    clips = [_clip(0), _clip(1)]

    def run():
        return [r["loss"] for r in lora.train_lora(bb, clips=clips, photos=photos, prompt="a dog", cfg=_cfg(),
                                                   num_frames=F, height=H, width=W, **kw)[1].losses]

    once, per_step = _once_and_per_step(bb, monkeypatch, training, run)
    assert once == per_step  # bit-identical: the conditioning is a deterministic function of the item's latents
    assert all(torch.isfinite(torch.tensor(once)))


def test_dualreal_training_calls_no_vae_in_the_loop_and_keeps_the_losses(bb, monkeypatch):
    import dual_adapter.dualreal.trainer as trainer
    from dual_adapter.dualreal import DualRealOptions, train_dualreal

    photo = _clip(2)[0]
    clips = [_clip(0), _clip(1)]

    def run():
        res = train_dualreal(bb, [photo, photo.flip(1)], "dog *", clips, "dog * runs",
                             clip_references=torch.randn(2, 1024, generator=torch.Generator().manual_seed(0)),
                             options=DualRealOptions(groups=2, latent_sampling="mode", motion_batch=2, grad_accum=2,
                                                     identity_batch=2, num_frames=F, height=H, width=W),
                             train=_cfg(4))
        return [(r["phase"], r["loss"]) for r in res.losses]

    once, per_step = _once_and_per_step(bb, monkeypatch, trainer, run)
    assert {p for p, _ in once} == {"identity", "motion"}, once
    assert once == per_step


def test_text_to_video_and_ti2v_precompute_nothing():
    from dual_adapter.models import load_backbone

    for name in ("tiny-wan", "tiny-wan-ti2v", "tiny"):
        b = load_backbone(name)
        assert b.item_conditioning(torch.zeros(1, 3, 4, 8, 8)) is None, name
