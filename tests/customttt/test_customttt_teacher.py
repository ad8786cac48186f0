"""CustomTTT's merge reference: the default reference is the teacher's x0 prediction, and the z_f re-noised
loss matches a DDIM step."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.backbones.cogvideox import encode_prompt, transformer_forward
from dual_adapter.errors import DualAdapterError

from helpers import (
    fresh_tiny,  # noqa: F401  (the fixture bundle: a tiny model of this module's own)
    random_full_lora as _lora,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def test_customttt_default_reference_is_the_teachers_x0_prediction(bundle):
    from dual_adapter import customttt as C

    assert C.TTTConfig().reference == "x0_pred" and C.REFERENCES[0] == "x0_pred"
    a, m = _lora(bundle, 1), _lora(bundle, 2)
    kw = dict(appearance_prompt="dog *", motion_prompt="a car is turning", prompt="dog * turning")
    cfg = dict(steps=1, teacher_steps=1, teacher_schedule=5, lr=1e-4, gradient_checkpointing=False)
    res = C.ttt_merge(bundle, a, m, config=C.TTTConfig(**cfg), **kw)
    e_a, neg = encode_prompt(bundle, "dog *"), encode_prompt(bundle, "")
    want, t0 = C.teacher_reference(bundle, a, e_a, neg, teacher_steps=1, teacher_schedule=5, reference="x0_pred")
    assert t0 == 0 and res.reference_timestep == 0
    torch.testing.assert_close(res.references["appearance"], want)
    z_f, t_f = C.teacher_reference(bundle, a, e_a, neg, teacher_steps=1, teacher_schedule=5, reference="z_f_as_x0")
    assert t_f > 700 and (z_f - want).abs().max() > 0.1  # z_f is the still-noisy latent, not the prediction
    # the older behaviour and the re-noised reading stay available by name ("z_f" = the old name)
    for name, t_expected in (("z_f", t_f), ("z_f_as_x0", t_f), ("z_f_renoised", t_f)):
        r = C.ttt_merge(bundle, a, m, config=C.TTTConfig(reference=name, **cfg), **kw)
        assert r.reference_timestep == t_expected and torch.isfinite(torch.tensor(r.train.losses[0]["loss"]))
        torch.testing.assert_close(r.references["appearance"], z_f)
    with pytest.raises(DualAdapterError, match="no timestep above"):
        C.ttt_merge(bundle, a, m, config=C.TTTConfig(reference="z_f_renoised", renoise_timesteps=(0, 500), **cfg), **kw)


def test_z_f_renoised_loss_matches_a_ddim_step(bundle):
    """z_f_renoised: x_t ~ q(x_t | x_{t_f}), and the student's deterministic DDIM step t -> t_f is compared
    with z_f. Independent computation: diffusers' DDIMScheduler.step (eta 0) from t = 999 to t_f = 799."""
    from diffusers import CogVideoXDDIMScheduler

    from dual_adapter.customttt import _renoised_loss
    from dual_adapter.training import make_noise_scheduler

    sched = make_noise_scheduler(bundle)
    g = torch.Generator().manual_seed(4)
    z_f, eps = torch.randn(1, 3, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g)
    e = encode_prompt(bundle, "dog * turning")
    t, t_f = 999, 799
    model = bundle.transformer
    got = _renoised_loss(model, sched, z_f, t_f, e, torch.tensor([t]), eps)
    ac = sched.alphas_cumprod
    x_t = (ac[t] / ac[t_f]).sqrt() * z_f + (1 - ac[t] / ac[t_f]).sqrt() * eps
    # its marginal is that of q(x_t | x_0) when z_f ~ q(x_tf | x_0): variances add up to 1 - abar_t
    assert torch.isclose(ac[t] / ac[t_f] * (1 - ac[t_f]) + (1 - ac[t] / ac[t_f]), 1 - ac[t])
    ddim = CogVideoXDDIMScheduler.from_config(bundle.scheduler_config)
    ddim.set_timesteps(5)  # step() goes from t to t - 1000 // 5 = t_f
    assert torch.equal(ddim.alphas_cumprod, ac)
    with torch.no_grad():
        v = transformer_forward(model, x_t, e, torch.tensor([t])).float()
        prev = ddim.step(v, t, x_t, eta=0.0).prev_sample
    assert torch.allclose(got, ((prev - z_f) ** 2).mean().view(1), rtol=1e-4, atol=1e-6)
