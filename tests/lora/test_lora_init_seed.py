"""Every LoRA starts from the run's seed: ``lora_A``'s random init draws from a generator seeded by ``--seed`` /
``seed``, so a run repeats (U-Net TAP training, CustomTTT's LoRAs on AnimateDiff) and different seeds differ; the
global random state is left alone, and the DiT trainer's start is the one it always had."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.lora import LoraSpec, inject_lora, load_lora, lora_modules
from dual_adapter.patches import shallow_copy_module
from dual_adapter.seeds import seed_generator

from helpers import GUITAR

pytestmark = pytest.mark.usefixtures("one_thread")


def _a_weights(model, name):
    return {n: m.lora_A[name].weight.detach().clone() for n, m in lora_modules(model, name).items()}


def test_generator_start_is_the_seeded_global_start_and_leaves_the_global_state(tiny):
    spec = LoraSpec(rank=2, alpha=2.0, dropout=0.0, targets=["attn1.to_q", "attn1.to_k"], blocks=None)
    ref = shallow_copy_module(tiny.transformer)
    with torch.random.fork_rng(devices=[]):  # how the DiT trainer seeded its start before: the same tensors
        torch.manual_seed(5)
        inject_lora(ref, spec, "a")
        inject_lora(ref, spec, "b")
    before = torch.random.get_rng_state()
    m = shallow_copy_module(tiny.transformer)
    g = seed_generator(5)
    inject_lora(m, spec, "a", generator=g)
    inject_lora(m, spec, "b", generator=g)  # continues the stream
    assert torch.equal(torch.random.get_rng_state(), before)
    for name in ("a", "b"):
        want, got = _a_weights(ref, name), _a_weights(m, name)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    other = shallow_copy_module(tiny.transformer)
    inject_lora(other, spec, "a", generator=seed_generator(6))
    assert not all(torch.equal(v, _a_weights(other, "a")[k]) for k, v in _a_weights(m, "a").items())


def test_unet_tap_training_repeats_with_its_seed(tmp_path, monkeypatch):
    from dual_adapter.cli import main

    monkeypatch.chdir(tmp_path)

    def run(seed, out):
        torch.rand(7)  # whatever the global random state is, the run does not depend on it
        assert main(["train-lora", "--model", "tiny-unet3d", "--motion", str(GUITAR), "--prompt", "a guitar",
                     "--frames", "3", "--height", "32", "--width", "32", "--steps", "1", "--rank", "2",
                     "--seed", str(seed), "--out", out, "--quiet"]) == 0
        return load_lora(tmp_path / out).state_dict, load_lora(tmp_path / out.replace(".safe", ".spatial.safe")).state_dict

    (m1, s1), (m2, s2), (m3, _) = run(0, "a.safetensors"), run(0, "b.safetensors"), run(1, "c.safetensors")
    for x, y in ((m1, m2), (s1, s2)):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(m1[k], m3[k]) for k in m1)


def test_customttt_unet_loras_repeat_with_their_seed():
    from dual_adapter import customttt_unet as CT
    from dual_adapter.backbones import load_backbone

    bb = load_backbone("tiny-animatediff")
    f0, h, w = bb.default_size
    photo = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0))

    def train(seed):
        torch.rand(7)
        cfg = CT.CustomTTTUNetConfig(appearance_steps=1, rank=2, optimizer="adamw", seed=seed)
        return CT.train_appearance_lora(bb, [photo], "a photo of a sks dog", cfg)[0].state_dict

    a, b, c = train(0), train(0), train(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k.endswith("lora_A.weight"))
