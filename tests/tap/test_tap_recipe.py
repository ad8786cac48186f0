"""TAP training as a recipe: bit-identical whatever the global RNG, and MotionDirector's spatial path learns
from single frames only and is dropped from the output."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.backbones.cogvideox import encode_prompt, transformer_forward
from dual_adapter.patches import patched_copy

from helpers import (
    forward_inputs as _inputs,
    fresh_tiny,  # noqa: F401  (the fixture bundle: a tiny model of this module's own)
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def test_tap_training_is_bit_identical_whatever_the_global_rng(bundle):
    """peft's LoRA dropout draws from the global RNG: two identical runs started from different global RNG
    states (two processes) must still give the same weights (step 1 hides it: lora_B starts at zero)."""
    from dual_adapter import lora

    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(1, 3, 4, 8, 12, generator=g)]
    emb = encode_prompt(bundle, "a person is playing guitar")
    runs = []
    for r in range(2):
        torch.manual_seed(1000 + r)
        lf, res = lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat,
                                             prompt_embeds=emb, spec=lora.LoraSpec.from_preset("tap", rank=4),
                                             cfg=lora.lora_train_config(steps=4, lr=1e-2, gradient_checkpointing=False))
        runs.append((lf.state_dict, [x["loss"] for x in res.losses]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    state = torch.get_rng_state()
    torch.manual_seed(5)
    expect = torch.rand(3)
    torch.manual_seed(5)
    lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat, prompt_embeds=emb,
                               spec=lora.LoraSpec.from_preset("tap", rank=4),
                               cfg=lora.lora_train_config(steps=2, gradient_checkpointing=False))
    assert torch.equal(torch.rand(3), expect)  # the caller's global RNG stream is left as it was
    torch.set_rng_state(state)


def test_motiondirector_spatial_path_learns_from_frames_only_and_is_dropped(bundle, tmp_path):
    """The spatial LoRA learns from its single-frame loss only (the clip loss never reaches it), the motion
    LoRA from the clip loss; the output (what inference applies) holds the motion LoRA only."""
    from dual_adapter import lora

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(5, 1, 4, 8, 12, generator=g)  # [F, 1, C, h, w]: single-frame latents
    clip_a, clip_b = torch.randn(1, 3, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g)
    emb = encode_prompt(bundle, "a person is playing guitar")
    spec = lora.LoraSpec.from_preset("tap", rank=4, dropout=0.0)
    out = {}
    for name, clip, fr in (("a", clip_a, frames), ("b", clip_b, frames), ("c", clip_a, frames * 0.5)):
        ck = tmp_path / f"{name}.safetensors"
        lf, res = lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=[clip],
                                             prompt_embeds=emb, frame_latents=[fr], spec=spec, spatial_path=True,
                                             cfg=lora.lora_train_config(steps=3, lr=1e-2, gradient_checkpointing=False),
                                             checkpoint_path=ck)
        out[name] = (lf, lora.load_lora(lora.spatial_checkpoint_path(ck)))
    (ma, sa), (mb, sb), (_, sc) = out["a"], out["b"], out["c"]
    assert sorted(sa.targets) == sorted(lora.PRESETS["full"])
    # another clip, same frames: the spatial LoRA is bit-identical, the motion LoRA is not
    assert all(torch.equal(sa.state_dict[k], sb.state_dict[k]) for k in sa.state_dict)
    assert any(not torch.equal(ma.state_dict[k], mb.state_dict[k]) for k in ma.state_dict)
    # other frames: the spatial LoRA differs (it does learn from them) and it did move from its init
    assert any(not torch.equal(sa.state_dict[k], sc.state_dict[k]) for k in sa.state_dict)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in sa.state_dict.items())
    # inference drops it: the output holds the motion targets only, and applying the spatial path would differ
    assert sorted(ma.targets) == ["attn1.to_k", "attn1.to_q"] and not any("to_v" in k or "to_out" in k
                                                                         for k in ma.state_dict)
    x, e, t = _inputs(bundle)
    m_only = transformer_forward(patched_copy(bundle.transformer, [lora.LoraPatch(ma)]), x, e, t)
    with_sp = transformer_forward(patched_copy(bundle.transformer, [lora.LoraPatch(ma), lora.LoraPatch(sa)]), x, e, t)
    assert (m_only - with_sp).abs().max() > 1e-5
