"""Wan 2.2 A14B's two experts (docs/wan.md "Wan 2.2 A14B"): the sampler switches from the high-noise to the
low-noise expert at the boundary timestep exactly as diffusers' WanPipeline does; zero-initialised DualReal adapters
per expert leave both experts' output bit-identical; training one expert's adapters or LoRA draws only the
timesteps it serves and leaves the other expert bit-identical; an A14B diffusers folder loads, and bad ones are
refused by name."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import save_wan_folder

from dual_adapter import sampling
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import PerDenoiser, patched_copy

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDARY = 875.0


@pytest.fixture(scope="module")
def a14b():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-wan-a14b")


class _Calls:
    """Records the timesteps each expert (or any module) is called with."""

    def __init__(self, **modules):
        self.seen = {k: [] for k in modules}
        self.handles = [m.register_forward_pre_hook(self._hook(k), with_kwargs=True) for k, m in modules.items()]

    def _hook(self, name):
        def hook(_m, args, kwargs):
            self.seen[name].extend(float(x) for x in kwargs["timestep"].reshape(-1))
        return hook

    def __enter__(self):
        return self.seen

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _zero_set(bb, name, seed):
    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig

    torch.manual_seed(seed)
    return DualRealAdapters(DualRealConfig.for_transformer(bb.get_denoiser(name), form="zero_init", groups=2))


def test_the_two_experts_answer_the_interface_and_one_denoiser_models_keep_the_defaults(a14b):
    from dual_adapter.backbones import kind_of, load_backbone

    assert kind_of("tiny-wan-a14b") == "wan_a14b" and a14b.kind == "wan"  # its own module; a Wan to every method
    assert a14b.denoiser_names() == ("high_noise", "low_noise") and a14b.boundary_timestep == BOUNDARY
    assert a14b.denoiser_for(875) == "high_noise" and a14b.denoiser_for(874.99) == "low_noise"
    hi, lo = a14b.get_denoiser("high_noise"), a14b.get_denoiser("low_noise")
    assert hi is a14b.denoiser and lo is a14b.denoiser_2 and lo is not hi
    assert not torch.equal(hi.blocks[0].attn1.to_q.weight, lo.blocks[0].attn1.to_q.weight)
    assert a14b.fingerprint(hi) == a14b.fingerprint(lo)  # one architecture: one adapter shape for both
    # the high-noise expert is tiny-wan's transformer (same seed)
    one = load_backbone("tiny-wan")
    assert torch.equal(one.denoiser.blocks[0].attn1.to_q.weight, hi.blocks[0].attn1.to_q.weight)
    assert one.denoiser_names() == ("denoiser",) and one.denoiser_for(999) == "denoiser" and one.expert("denoiser") is one
    with pytest.raises(DualAdapterError, match="high_noise, low_noise"):
        a14b.expert("denoiser_2")
    # each expert's training schedule is the full shifted schedule cut at the boundary
    full = one.noise_scheduler()
    h, l_ = a14b.expert("high_noise").noise_scheduler(), a14b.expert("low_noise").noise_scheduler()
    assert bool((h.timesteps >= BOUNDARY).all()) and bool((l_.timesteps < BOUNDARY).all())
    assert h.config.num_train_timesteps + l_.config.num_train_timesteps == len(full.timesteps) == 1000
    assert torch.equal(torch.cat([h.sigmas, l_.sigmas]), full.sigmas[:1000])


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_the_sampler_switches_experts_at_the_boundary_as_diffusers_does(a14b, scheduler):
    from diffusers import WanPipeline

    e = a14b.encode_prompt("a dog is running")
    neg = a14b.encode_prompt("")
    with _Calls(high=a14b.denoiser, low=a14b.denoiser_2) as seen:
        lat = sampling.sample(a14b, e, neg, steps=12, cfg=5.0, seed=3, scheduler=scheduler)
    assert seen["high"] and seen["low"], seen
    assert min(seen["high"]) >= BOUNDARY and max(seen["low"]) < BOUNDARY  # never on the wrong side
    sched = a14b.make_scheduler(scheduler)
    sched.set_timesteps(12)
    assert len(seen["high"]) + len(seen["low"]) == 2 * 12  # CFG: one [uncond; cond] batch per step
    # diffusers' own two-expert pipeline on the same parts, noise and embeddings
    pipe = WanPipeline(tokenizer=a14b.tokenizer, text_encoder=a14b.text_encoder, vae=a14b.vae,
                       scheduler=a14b.make_scheduler(scheduler), transformer=a14b.denoiser,
                       transformer_2=a14b.denoiser_2, boundary_ratio=0.875)
    from dual_adapter.seeds import seed_generator

    noise = torch.randn(a14b.latent_shape(1, 9, 64, 64), generator=seed_generator(3), dtype=torch.float32)
    ref = pipe(prompt_embeds=e, negative_prompt_embeds=neg, num_frames=9, height=64, width=64, num_inference_steps=12,
               guidance_scale=5.0, latents=noise.permute(0, 2, 1, 3, 4), output_type="latent").frames
    torch.testing.assert_close(lat, ref.permute(0, 2, 1, 3, 4), rtol=1e-4, atol=1e-4)


def test_zero_init_dualreal_adapters_per_expert_leave_both_experts_bit_identical(a14b):
    from dual_adapter.dualreal import DualRealPatch

    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 3, 4, 8, 8, generator=g), a14b.encode_prompt(["dog * runs", "a person"])
    sets = {n: _zero_set(a14b, n, i) for i, n in enumerate(a14b.denoiser_names())}
    ref = torch.randn(1, 1024, generator=g)
    for name, t in (("high_noise", torch.tensor([990.0, 900.0])), ("low_noise", torch.tensor([700.0, 150.0]))):
        base = a14b.predict(x, t, e)
        d = a14b.get_denoiser(name)
        assert torch.equal(a14b.predict(x, t, e, denoiser=patched_copy(d, [DualRealPatch(sets[name], ref)])), base)
    per = PerDenoiser({n: DualRealPatch(s, ref) for n, s in sets.items()})
    plain = sampling.sample(a14b, e[:1], None, steps=6, cfg=5.0, seed=1, scheduler="unipc")
    assert torch.equal(sampling.sample(a14b, e[:1], None, steps=6, cfg=5.0, seed=1, scheduler="unipc",
                                       patches=[per]), plain)
    # per-expert patches for a one-transformer Wan are refused by name, not silently dropped
    from dual_adapter.backbones import load_backbone

    with pytest.raises(DualAdapterError, match="high_noise"):
        sampling.sample(load_backbone("tiny-wan"), e[:1], None, steps=1, cfg=1.0, patches=[per])


def _photo_and_clip():
    photo = torch.zeros(64, 64, 3)
    photo[16:48, 16:48] = torch.tensor([0.9, 0.5, 0.1])
    clip = torch.zeros(9, 64, 64, 3)
    for i in range(9):
        clip[i, 20:44, 4 + 4 * i: 28 + 4 * i] = torch.tensor([0.9, 0.5, 0.1])
    return photo, clip


def test_training_one_experts_dualreal_adapters_leaves_the_other_bit_identical(a14b, tmp_path):
    from dual_adapter.dualreal import DualRealOptions, DualRealPatch, load_adapters, save_adapters, train_dualreal
    from dual_adapter.experts import denoiser_path, train_per_denoiser
    from dual_adapter.reference import build_tiny_reference_encoder
    from dual_adapter.training import TrainConfig

    photo, clip = _photo_and_clip()
    kw = dict(reference_encoder=build_tiny_reference_encoder(), options=DualRealOptions(groups=2, latent_sampling="mode"),
              train=TrainConfig(steps=6, lr=3e-3, warmup_steps=0, checkpoint_every=0, gradient_checkpointing=False,
                                seed=0))
    with pytest.raises(DualAdapterError, match="train_per_denoiser"):
        train_dualreal(a14b, [photo], "dog *", [clip], "dog * runs", **kw)
    g = torch.Generator().manual_seed(1)
    x, e, t = torch.randn(1, 3, 4, 8, 8, generator=g), a14b.encode_prompt("dog * runs"), torch.tensor([400.0])
    low_set = _zero_set(a14b, "low_noise", 5)
    with torch.no_grad():
        for p in low_set.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    low_model = patched_copy(a14b.denoiser_2, [DualRealPatch(low_set)])
    low_before = a14b.predict(x, t, e, denoiser=low_model)
    low_weights = {k: v.clone() for k, v in a14b.denoiser_2.state_dict().items()}
    with _Calls(high=a14b.denoiser, low=a14b.denoiser_2) as seen:
        res = train_per_denoiser(a14b, train_dualreal, names=("high_noise",), subject_images=[photo],
                                 identity_prompt="dog *", motion_clips=[clip], motion_prompt="dog * runs", **kw)
    assert seen["high"] and not seen["low"]  # the low-noise expert never runs while the high one trains
    assert min(seen["high"]) >= BOUNDARY  # ... which trains only on the timesteps it serves
    assert torch.equal(a14b.predict(x, t, e, denoiser=low_model), low_before)
    assert all(torch.equal(v, low_weights[k]) for k, v in a14b.denoiser_2.state_dict().items())
    out = denoiser_path(tmp_path / "subject.safetensors", "high_noise")  # one ordinary adapter file per expert
    save_adapters(res["high_noise"].adapters, out)
    assert out.name == "subject_high_noise.safetensors" and load_adapters(out).meta["steps"] == 6


def test_one_lora_per_expert_trains_on_its_timesteps_and_saves_a_native_file_each(a14b, tmp_path):
    from dual_adapter import lora
    from dual_adapter.experts import denoiser_path, train_per_denoiser
    from dual_adapter.lora import save_lora_native

    _, clip = _photo_and_clip()
    cfg = lora.lora_train_config(steps=3, lr=3e-3, optimizer="adamw", checkpoint_every=0)
    spec = lora.LoraSpec(rank=4, alpha=4.0, dropout=0.0)
    with pytest.raises(DualAdapterError, match="train_per_denoiser"):
        lora.train_lora(a14b, clips=[clip], prompt="a square moves", spec=spec, cfg=cfg)
    res = {}
    for name in a14b.denoiser_names():
        other = a14b.get_denoiser("low_noise" if name == "high_noise" else "high_noise")
        with _Calls(mine=a14b.get_denoiser(name), other=other) as seen:
            res.update(train_per_denoiser(a14b, lora.train_lora, names=(name,), clips=[clip], prompt="a square moves",
                                          spec=spec, cfg=cfg))
        assert seen["mine"] and not seen["other"]
        assert (min(seen["mine"]) >= BOUNDARY) if name == "high_noise" else (max(seen["mine"]) < BOUNDARY)
    files = {}
    for name, (lf, _) in res.items():
        files[name] = save_lora_native(denoiser_path(tmp_path / "motion.safetensors", name), lf)
    assert sorted(p.name for p in files.values()) == ["motion_high_noise.safetensors", "motion_low_noise.safetensors"]
    a, b = (lora.load_lora(files[n]) for n in ("high_noise", "low_noise"))
    assert set(a.state_dict) == set(b.state_dict) and any(not torch.equal(a.state_dict[k], b.state_dict[k])
                                                          for k in a.state_dict)
    # each applies to its expert in the sampler; a one-file LoRA applies to both
    per = PerDenoiser({n: lora.LoraPatch(lf) for n, (lf, _) in res.items()})
    e = a14b.encode_prompt("a square moves")
    lat = sampling.sample(a14b, e, None, steps=4, cfg=1.0, seed=0, scheduler="euler", patches=[per])
    assert torch.isfinite(lat).all()


def test_an_a14b_folder_loads_both_experts_and_bad_ones_are_refused(a14b, tmp_path):
    from dual_adapter.backbones import load_backbone

    root = tmp_path / "a14b"
    save_wan_folder(a14b, root, index={"_class_name": "WanPipeline", "boundary_ratio": 0.9})
    a14b.denoiser_2.save_pretrained(root / "transformer_2")
    bb = load_backbone(str(root), dtype="fp32", device="cpu")
    assert bb.denoiser_names() == ("high_noise", "low_noise") and bb.boundary_timestep == 900.0
    for name in bb.denoiser_names():
        got, want = bb.get_denoiser(name).state_dict(), a14b.get_denoiser(name).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    idx = root / "model_index.json"
    idx.write_text(json.dumps({"boundary_ratio": 1.5}))
    with pytest.raises(DualAdapterError, match="boundary_ratio=1.5"):
        load_backbone(str(root))
    idx.write_text(json.dumps({"boundary_ratio": 0.875}))
    cfg2 = root / "transformer_2" / "config.json"
    cfg2.write_text(json.dumps({**json.loads(cfg2.read_text()), "num_layers": 2}))
    with pytest.raises(DualAdapterError, match="differ in num_layers"):
        load_backbone(str(root))
    no2 = tmp_path / "no2"
    save_wan_folder(a14b, no2, index={"boundary_ratio": 0.875})
    with pytest.raises(DualAdapterError, match="no transformer_2/config.json"):
        load_backbone(str(no2))
