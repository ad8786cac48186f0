"""CustomTTT's TTT reference, one definition on both backbones: ``z_f`` is the teacher's latent after ``f`` sampler
steps and sits at ``t_f = timesteps[f]``; the x0 prediction at step f is one guided teacher call at
``(z_f, t_f)``; the student re-noises the x0 prediction (or ``z_f`` forward from ``t_f``), in eval mode."""
from __future__ import annotations

import pytest
import torch

from dual_adapter import customttt as C
from dual_adapter import customttt_unet as CT
from dual_adapter import unet_motion as UM
from dual_adapter import unet_sampling
from dual_adapter.backbones import load_backbone
from dual_adapter.customttt.merge import _renoised_loss
from dual_adapter.patches import patched_copy
from dual_adapter.training import diffusion_loss

PROMPT = "a person is playing guitar"


@pytest.fixture(scope="module")
def ad():
    return load_backbone("tiny-animatediff")


@pytest.fixture(scope="module")
def lora(ad):
    """A motion LoRA with non-zero weights (one step at a large lr)."""
    clip = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    cfg = CT.CustomTTTUNetConfig(rank=2, motion_steps=1, motion_lr=1e-2, optimizer="adamw", num_frames=2,
                                 height=32, width=32)
    lf, _ = CT.train_motion_lora(ad, [clip], PROMPT, cfg)
    return lf


def _cfg(**kw):
    return CT.CustomTTTUNetConfig(rank=2, teacher_steps=2, sampler_steps=5, cfg=3.0, optimizer="adamw", num_frames=2,
                                  height=32, width=32, **kw)


def _teacher_run(ad, lora, cfg, n):
    """The teacher's own sampling, stopped after ``n`` steps, with every step's timestep."""
    seen = []
    z = unet_sampling.sample(ad, ad.encode_prompt(PROMPT), None, num_frames=2, height=32, width=32,
                             steps=cfg.sampler_steps, cfg=cfg.cfg, seed=0, scheduler="ddim",
                             patches=[UM.UNetLoraPatch(lora)], stop_after=n,
                             callback=lambda i, tot, info: seen.append(int(info["timestep"])))
    return z, seen


def _reference_and_teacher(ad, lora, reference):
    """The reference under test, and the teacher's own z_f and timesteps (one step further)."""
    cfg = _cfg(reference=reference)
    f = cfg.teacher_steps
    ref, t_ref = CT.teacher_reference(ad, lora, PROMPT, cfg, seed=0)
    z_f, _ = _teacher_run(ad, lora, cfg, f)
    _, ts = _teacher_run(ad, lora, cfg, f + 1)
    return cfg, f, ref, t_ref, z_f, ts


def test_z_f_sits_at_the_timestep_reported(ad, lora):
    cfg, f, ref, t_f, z_f, ts = _reference_and_teacher(ad, lora, "z_f_renoised")
    assert torch.allclose(ref, z_f)
    assert t_f == ts[f] and t_f < ts[f - 1]  # the timestep z_f is denoised at next, not the last call's
    sch = ad.make_scheduler("ddim")
    sch.set_timesteps(25)
    assert int(sch.timesteps[5]) == 761  # the authors' f = 5 of DDIM 25


def test_x0_prediction_is_one_guided_call_at_z_f(ad, lora):
    cfg, f, ref, t_ref, z_f, ts = _reference_and_teacher(ad, lora, "x0_pred")
    t_f = ts[f]
    net = patched_copy(ad.denoiser, [UM.UNetLoraPatch(lora)])
    with torch.no_grad():
        text = torch.cat([ad.encode_prompt(""), ad.encode_prompt(PROMPT)])
        e_u, e_c = ad.predict(torch.cat([z_f, z_f]), torch.tensor([t_f, t_f]), text, denoiser=net).float().chunk(2)
    eps = e_u + cfg.cfg * (e_c - e_u)
    a = ad.noise_scheduler().alphas_cumprod[t_f]
    want = (z_f - (1 - a).sqrt() * eps) / a.sqrt()
    assert t_ref == 0 and torch.allclose(ref, want, atol=1e-5, rtol=1e-4)


def _capture(model):
    seen = []

    def pre(mod, args, kwargs):
        if torch.is_grad_enabled():  # the student (teachers run without grad)
            seen.append((args[0].detach().clone(), int(args[1].reshape(-1)[0]), mod.training))
    return seen, model.register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("reference", ["x0_pred", "z_f_renoised"])
def test_student_re_noises_the_reference_as_defined(ad, reference):
    from dual_adapter.patches import shallow_copy_module

    model = shallow_copy_module(ad.denoiser)
    sched = ad.noise_scheduler()
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(1, 4, 2, 16, 16, generator=g)
    noise = torch.randn(ref.shape, generator=g)
    t_ref, t = (761, 900) if reference == "z_f_renoised" else (0, 400)
    seen, h = _capture(model)
    text, tt = ad.encode_prompt(PROMPT), torch.tensor([t])
    if reference == "z_f_renoised":  # the two losses the one TTT merge's objective calls (TTTObjective.loss)
        _renoised_loss(model, sched, ref, t_ref, text, tt, noise)
    else:
        diffusion_loss(model, sched, ref, text, timesteps=tt, noise=noise)
    h.remove()
    ac = sched.alphas_cumprod
    if reference == "x0_pred":
        want = ac[t].sqrt() * ref + (1 - ac[t]).sqrt() * noise  # the x0 prediction, noised from clean
    else:
        r = ac[t] / ac[t_ref]
        want = r.sqrt() * ref + (1 - r).sqrt() * noise  # z_f noised forward from t_f, q(x_t | x_{t_f})
    assert len(seen) == 1 and seen[0][1] == t
    assert torch.allclose(seen[0][0], want, atol=1e-6)


def test_merge_student_is_in_eval_mode_and_z_f_renoised_stays_above_t_f(ad, lora):
    cfg = _cfg(reference="z_f_renoised", ttt_steps=2, ttt_lr=1e-4)
    seen, h = _capture(ad.denoiser)  # hooks travel into the student's weight-sharing copy
    try:
        merged, losses, _ = CT.ttt_merge(ad, lora, lora, appearance_prompt=PROMPT, motion_prompt=PROMPT,
                                         prompt=PROMPT, config=cfg)
    finally:
        h.remove()
    _, t_f = CT.teacher_reference(ad, lora, PROMPT, cfg, seed=0)
    assert len(seen) == 4 and all(t > t_f for _, t, _ in seen)
    assert not any(training for _, _, training in seen)  # eval mode, as the CogVideoX student
    assert len(losses) == 2 and merged.metadata["reference"] == "z_f_renoised"


def test_both_backbones_share_the_references():
    assert CT.REFERENCES is C.REFERENCES
    assert CT.CustomTTTUNetConfig(reference="z_f").validate() is None
    with pytest.raises(Exception, match="reference"):
        CT.CustomTTTUNetConfig(reference="nope").validate()
    assert CT.CustomTTTUNetConfig().ttt_dropout == C.TTTConfig().dropout == 0.0
