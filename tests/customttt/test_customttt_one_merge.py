"""One TTT merge for every backbone: AnimateDiff's published recipe runs :func:`dual_adapter.customttt.ttt_merge`
with its own settings (:meth:`CustomTTTUNetConfig.ttt_config`), on U-Net LoRA files (``unet.*`` keys), with the
teachers' separate noise it always had; the method module asks the backbone, never tests its kind."""
from __future__ import annotations

import ast
import inspect

import pytest
import torch

from dual_adapter import customttt as C
from dual_adapter import customttt_unet as CT
from dual_adapter.backbones import load_backbone
from dual_adapter.lora import LoraPatch
from dual_adapter.patches import patched_copy

PROMPTS = dict(appearance_prompt="a photo of a sks dog", motion_prompt="a person is playing guitar",
               prompt="a sks dog is playing guitar")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ad():
    return load_backbone("tiny-animatediff")


@pytest.fixture(scope="module")
def loras(ad):
    """An appearance and a motion LoRA of the recipe with random (non-zero) weights."""
    g = torch.Generator().manual_seed(0)
    cfg = CT.CustomTTTUNetConfig(rank=2, appearance_steps=1, motion_steps=1, optimizer="adamw")
    photo, clip = torch.rand(32, 32, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g)
    a, _ = CT.train_appearance_lora(ad, [photo], PROMPTS["appearance_prompt"], cfg)
    m, _ = CT.train_motion_lora(ad, [clip], PROMPTS["motion_prompt"], cfg)
    for lf in (a, m):
        for k, v in lf.state_dict.items():
            lf.state_dict[k] = torch.randn(v.shape, generator=g) * 0.05
    return a, m


def _cfg(**kw):
    return CT.CustomTTTUNetConfig(rank=2, teacher_steps=1, sampler_steps=3, cfg=3.0, optimizer="adamw", num_frames=2,
                                  height=32, width=32, ttt_lr=1e-3, **kw)


def test_the_recipe_carries_the_published_settings_into_the_one_merge():
    tc = CT.CustomTTTUNetConfig(optimizer="adamw", seed=4).ttt_config()
    assert isinstance(tc, C.TTTConfig) and tc.validate() is None
    assert (tc.steps, tc.lr, tc.teacher_steps, tc.teacher_schedule, tc.teacher_scheduler, tc.teacher_cfg) == \
        (30, 1e-6, 5, 25, "ddim", 9.0)
    assert (tuple(tc.betas), tc.weight_decay, tc.reference, tc.dropout) == ((0.9, 0.99), 0.1, "x0_pred", 0.0)
    assert tc.teacher_seed == 4 and not tc.shared_teacher_noise and tc.seed == 6


def test_unet_merge_is_the_one_merge(ad, loras):
    a, m = loras
    cfg = _cfg(ttt_steps=2)
    merged, losses, opt = CT.ttt_merge(ad, a, m, config=cfg, **PROMPTS)
    one = C.ttt_merge(ad, a, m, config=cfg.ttt_config(), **PROMPTS)
    assert merged.prefix == "unet" and set(merged.modules) == set(a.modules) | set(m.modules)
    assert all(torch.equal(merged.state_dict[k], one.lora.state_dict[k]) for k in one.lora.state_dict)
    assert [r["loss"] for r in losses] == [r["loss"] for r in one.train.losses] and opt == "adamw"
    assert merged.metadata["reference"] == "x0_pred" and merged.metadata["role"] == "merged"
    # the teachers start from their own noise, seeds seed and seed + 1, as the recipe always did
    for name, lf, seed in (("appearance", a, 0), ("motion", m, 1)):
        ref, _ = CT.teacher_reference(ad, lf, PROMPTS[f"{name}_prompt"], cfg, seed=seed)
        assert torch.equal(one.references[name], ref.cpu())


def test_unet_merge_without_steps_is_the_exact_sum(ad, loras):
    """U-Net LoRA files merge through merge_loras (``unet.*`` keys): the merged file applies what both do."""
    a, m = loras
    res = C.ttt_merge(ad, a, m, config=_cfg(ttt_steps=0).ttt_config(), **PROMPTS)
    x = torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    t, e = torch.tensor([500]), ad.encode_prompt(PROMPTS["prompt"])
    with torch.no_grad():
        both = ad.predict(x, t, e, denoiser=patched_copy(ad.denoiser, [LoraPatch(a), LoraPatch(m, name="m")]))
        merged = ad.predict(x, t, e, denoiser=patched_copy(ad.denoiser, [LoraPatch(res.lora)]))
        base = ad.predict(x, t, e)
    assert res.lora.prefix == "unet" and not torch.allclose(both, base)
    assert torch.allclose(merged, both, atol=1e-5)


def test_merge_module_never_tests_the_backbone_kind():
    from dual_adapter.customttt import merge

    tree = ast.parse(inspect.getsource(merge))
    words = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not words & {"unet", "unet3d", "animatediff", "cogvideox", "wan"}
