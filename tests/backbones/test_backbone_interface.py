"""The backbone interface: a method reaches a model only through
:class:`~dual_adapter.backbones.base.VideoBackbone`, so adding a backbone touches one module.

A fake backbone defined here (not in the library) is registered, and the TAP LoRA targeting, the shared
training objective, the LoRA trainer and the shared sampler run on it with no change to method code; a static check keeps
CogVideoX internals out of the method modules.
"""
from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dual_adapter.backbones import BlockInfo, VideoBackbone
from dual_adapter.backbones.base import check_role
from dual_adapter.errors import DualAdapterError

pytestmark = pytest.mark.usefixtures("one_thread")

PKG = Path(__file__).resolve().parents[2] / "dual_adapter"


# ------------------------------------------------------------------------------ a fake backbone, in the test


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.to_out = nn.ModuleList([nn.Linear(d, d)])

    def forward(self, x, ctx):
        kv = torch.cat([ctx, x], 1)
        a = torch.softmax(self.to_q(x) @ self.to_k(kv).transpose(1, 2) / x.shape[-1] ** 0.5, -1)
        return self.to_out[0](a @ self.to_v(kv))


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn1 = _Attn(d)
        self.ff = nn.Linear(d, d)

    def forward(self, x, ctx):
        x = x + self.attn1(x, ctx)
        return x + self.ff(torch.tanh(x))


class FakeDenoiser(nn.Module):
    """Tokens = latent pixels of all frames; text joins every block's attention (like a joint attention)."""

    def __init__(self, c=4, d=16, text_dim=8, n=3):
        super().__init__()
        self.proj_in, self.text_in, self.proj_out = nn.Linear(c, d), nn.Linear(text_dim, d), nn.Linear(d, c)
        self.t_emb = nn.Linear(1, d)
        self.layers = nn.ModuleList([_Block(d) for _ in range(n)])

    def forward(self, x, t, text):  # x [B, C, F, h, w] -> same
        B, C, F, h, w = x.shape
        tok = self.proj_in(x.permute(0, 2, 3, 4, 1).reshape(B, F * h * w, C))
        tok = tok + self.t_emb(t.float().view(B, 1, 1) / 1000)
        ctx = self.text_in(text)
        for blk in self.layers:
            tok = blk(tok, ctx)
        return self.proj_out(tok).reshape(B, F, h, w, C).permute(0, 4, 1, 2, 3)


class FakeBackbone(VideoBackbone):
    kind = "fake"
    family = "Fake test backbone"
    latent_layout = "BCFHW"
    prediction_type = "epsilon"
    motion_role = "joint"

    def __init__(self, denoiser):
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = denoiser, None, None, None
        self.name, self.scheduler_config = "tiny-fake", {"num_train_timesteps": 1000}

    def blocks(self, denoiser=None):
        d = denoiser or self.denoiser
        return [BlockInfo(f"layers.{i}", "joint", i, b, True) for i, b in enumerate(d.layers)]

    def attention_modules(self, role, denoiser=None):
        if check_role(role) != "joint":
            return {}
        return {f"{b.name}.attn1": b.module.attn1 for b in self.blocks(denoiser)}

    def text_entry_points(self, denoiser=None):
        return self.attention_modules("joint", denoiser)

    def width(self, denoiser=None):
        return (denoiser or self.denoiser).proj_in.out_features

    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def predict(self, latents, t, text, denoiser=None):
        return (denoiser or self.denoiser)(latents, t, text)

    # what the shared sampler needs besides predict (latent_shape, scheduler_step: the base class's)
    def make_scheduler(self, name="ddim"):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    default_size, vae_scale, latent_channels = (2, 24, 24), 8, 4

    def latent_frames(self, num_frames):
        return num_frames

    def check_video_size(self, num_frames, height, width):
        pass


@pytest.fixture
def fake():
    from dual_adapter import backbones

    mod = types.SimpleNamespace(
        KIND="fake", FAMILY=FakeBackbone.family, tiny_names=lambda: ("tiny-fake",), detect=lambda folder: False,
        load=lambda name, dtype=None, device=None, **kw: FakeBackbone(FakeDenoiser()),
        owns=lambda d: isinstance(d, FakeDenoiser), for_denoiser=lambda d, scheduler_config=None: FakeBackbone(d))
    backbones.register_backbone(mod)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            yield backbones.load_backbone("tiny-fake")
    finally:
        backbones.unregister_backbone("fake")
    assert "fake" not in backbones.backbone_modules()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 5, 8, generator=g)


def test_a_registered_backbone_gets_tap_targeting_the_objective_and_lora_training_unchanged(fake):
    from dual_adapter import lora
    from dual_adapter.backbones import backbone_for, kind_of
    from dual_adapter.patches import patched_copy
    from dual_adapter.training import diffusion_loss, make_noise_scheduler

    den = fake.denoiser
    assert kind_of("tiny-fake") == "fake" and isinstance(backbone_for(den), FakeBackbone)
    # TAP (docs/tap.md): Q and K of the motion attention of every block, never V
    names = lora.LoraSpec.from_preset("tap", rank=2).target_modules(den)
    assert names == [f"layers.{i}.attn1.{p}" for p in ("to_q", "to_k") for i in range(3)]
    assert lora.LoraSpec(targets=["ff"], blocks=[1]).target_modules(den) == ["layers.1.ff"]
    with pytest.raises(DualAdapterError, match=r"attn1\.to_q, attn1\.to_v, ff"):  # names what the block offers
        lora.LoraSpec(targets=["attn1.nope"]).target_modules(den)

    # the shared objective is the backbone's (here the default epsilon MSE)
    x0, text = _data()
    sched = make_noise_scheduler(fake)
    t, eps = torch.tensor([300]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = diffusion_loss(den, sched, x0, text, timesteps=t, noise=eps)
        want = ((den(sched.add_noise(x0, eps, t), t, text) - eps) ** 2).mean()
    assert torch.allclose(got, want, rtol=1e-6, atol=0)

    # the TAP trainer, untouched, trains a LoRA on the fake model
    before = {k: v.clone() for k, v in den.state_dict().items()}
    cfg = lora.lora_train_config(steps=3, lr=1e-2, warmup_steps=0, optimizer="adamw", gradient_checkpointing=False,
                                 mixed_precision="fp32", checkpoint_every=0)
    lf, res = lora.train_lora_on_latents(den, fake.scheduler_config, latents=[x0], prompt_embeds=text,
                                         spec=lora.LoraSpec(rank=2, alpha=2.0), cfg=cfg, base_model="tiny-fake")
    assert res.completed and len(res.losses) == 3 and all(r["loss"] == r["loss"] for r in res.losses)
    assert sorted(lf.modules) == sorted(names)
    assert lf.metadata["base_fingerprint"] == fake.fingerprint() and lf.metadata["blocks"] == [0, 1, 2]
    assert all(torch.equal(before[k], v) for k, v in den.state_dict().items())  # the base is never modified
    with torch.no_grad():
        ref = den(x0, t, text)
        on = patched_copy(den, [lora.LoraPatch(lf, 1.0)])(x0, t, text)
        off = patched_copy(den, [lora.LoraPatch(lf, 0.0)])(x0, t, text)
    assert not torch.allclose(on, ref) and torch.allclose(off, ref, atol=1e-6)


def test_the_shared_sampler_runs_on_a_registered_backbone_as_the_diffusers_loop(fake):
    from diffusers import DDIMScheduler

    from dual_adapter.sampling import sample

    _, text = _data()
    neg = torch.zeros_like(text)
    with torch.no_grad():
        z = sample(fake, text, neg, steps=3, cfg=2.0, seed=4, scheduler="ddim")
        sch = DDIMScheduler.from_config(fake.scheduler_config)
        sch.set_timesteps(3)
        x = torch.randn((1, 4, 2, 3, 3), generator=torch.Generator().manual_seed(4)) * sch.init_noise_sigma
        for t in sch.timesteps:
            e_u, e_c = fake.denoiser(torch.cat([x, x]), t.expand(2), torch.cat([neg, text])).chunk(2)
            x = sch.step(e_u + 2.0 * (e_c - e_u), t, x).prev_sample
    assert z.shape == (1, 4, 2, 3, 3) and torch.equal(z, x)


def test_cogvideox_answers_the_interface_as_the_code_it_replaced(tiny):
    """The CogVideoX backbone module gives what the methods used to read from the bundle themselves."""
    from dual_adapter.backbones import as_backbone, backbone_for

    bb = as_backbone(tiny)
    assert backbone_for(tiny.transformer).kind == "cogvideox" and bb.motion_role == "joint"
    assert [b.name for b in bb.blocks()] == [f"transformer_blocks.{i}" for i in range(len(tiny.transformer.transformer_blocks))]
    assert bb.attention_modules("temporal") == {} and set(bb.text_entry_points()) == set(bb.attention_modules("joint"))
    assert bb.latent_frames(9) == 3 and bb.frame_step() == 4 and bb.vae_scale == 8 and bb.time_patch() == 1
    assert bb.architecture()["num_layers"] == len(bb.blocks()) and len(bb.fingerprint()) == 16
    assert dict(bb.noise_scheduler().config)["prediction_type"] == "v_prediction"
    with pytest.raises(DualAdapterError, match="4k\\+1"):
        bb.check_video_size(8, 64, 96)


# ------------------------------------------------------------------------------ static: no CogVideoX internals

#: the modules of the methods (DualReal, TAP / motion LoRA, CustomTTT, the U-Net methods, the shared training
#: and sampling loops)
METHOD_MODULES = [*(f"training/{p.name}" for p in sorted((PKG / "training").glob("*.py"))),
                  "sampling.py", "lora/__init__.py", "lora/spec.py", "lora/inject.py", "lora/file.py",
                  "lora/patch.py", "lora/train.py", "customttt/__init__.py", "customttt/config.py",
                  "customttt/influence.py", "customttt/selective.py", "customttt/merge.py", "customttt/unet.py", "customttt_unet.py", "unet_motion.py",
                  "unet_sampling.py", "dualreal/trainer.py", "dualreal/readout.py", "dualreal/checkpoint.py",
                  "dualreal/adapters.py", "dualreal/patch.py"]
#: CogVideoX-specific by definition, outside backbones/: the native ComfyUI CogVideoX file format, the shipped
#: mini CogVideoX and the world pretrained / scored on it, the resolution of model names (``tiny``, ``mini``), the
#: built-in models' reference encoders, the CLI's CogVideoX preflight (these imported the CogVideoX names
#: through the deprecated ``backbone`` re-export before), and the CogVideoX LoRA file names (kohya / native tables)
COGVIDEOX_MODULES = {"native.py", "lora/formats/__init__.py", "lora/formats/cogvideox.py", "miniworld/model.py", "miniworld/pretrain.py", "miniworld/scorers.py", "models.py",
                     "reference.py", "commands/_common.py"}


def _cogvideox_refs(path: Path, attrs: bool = True) -> list[str]:
    """Imports of CogVideoX code / the compatibility layer and CogVideoX class names, in code (not strings);
    with ``attrs``, also reads of CogVideoX model / bundle attributes (not an object's own, ``self.x``: DualReal's
    adapter set names its list ``transformer_blocks`` after the checkpoint keys)."""
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            mod = "." * n.level + (n.module or "")
            names = [a.name for a in n.names]
            if re.search(r"cogvideo|(^|\.)backbone$|backbones\.(cogvideox|_unet|unet3d|animatediff)", mod) or \
                    any(x.startswith("CogVideoX") for x in names):
                out.append(f"{n.lineno}: from {mod} import {', '.join(names)}")
        elif isinstance(n, ast.Import):
            out += [f"{n.lineno}: import {a.name}" for a in n.names if "cogvideo" in a.name or
                    a.name == "dual_adapter.backbone"]
        elif isinstance(n, ast.Name) and n.id.startswith("CogVideoX"):
            out.append(f"{n.lineno}: {n.id}")
        elif attrs and isinstance(n, ast.Attribute) and not (isinstance(n.value, ast.Name) and n.value.id == "self") \
                and n.attr in ("transformer_blocks", "patch_size_t", "vae_scale_spatial",
                                                         "vae_scale_temporal", "max_text_seq_length"):
            out.append(f"{n.lineno}: .{n.attr}")
    return out


def test_backbone_queries_take_a_denoiser_that_cannot_be_tested_for_truth(tiny):
    """A ``torch.compile``'d module raises when tested for truth (``denoiser or ...`` crashed compiled sampling)."""
    from dual_adapter.backbones import as_backbone

    class NoTruth(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def __bool__(self):
            raise RuntimeError("truth of a compiled module")

    bb = as_backbone(tiny)
    d = NoTruth(tiny.transformer)
    assert bb.pick_denoiser(d) is d and bb.pick_denoiser() is tiny.transformer
    assert bb.time_patch(d) == 1 and bb.width(d) == bb.width() and bb.fingerprint(d) == bb.fingerprint()
    z = torch.zeros(1, 3, 4, 2, 2)
    assert torch.equal(bb.pad_latent_frames(z, d), z)


def test_method_modules_reach_models_only_through_the_backbone_interface():
    # (unet_motion's MotionDirector spatial path walks the .transformer_blocks of a U-Net's 2D transformers)
    bad = {m: _cogvideox_refs(PKG / m, attrs=m != "unet_motion.py") for m in METHOD_MODULES}
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"method modules reach into CogVideoX directly: {bad}"


def test_cogvideox_classes_are_named_only_in_backbones_and_the_compatibility_layer():
    seen = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if rel.startswith("backbones/") or rel == "backbone.py" or rel in COGVIDEOX_MODULES:
            continue
        refs = [r for r in _cogvideox_refs(f) if re.search(r"CogVideoX|cogvideo", r)]
        if refs:
            seen[rel] = refs
    assert not seen, f"CogVideoX internals outside dual_adapter/backbones/: {seen}"
    # and the checker does see them where they are
    assert _cogvideox_refs(PKG / "native.py") and _cogvideox_refs(PKG / "backbones" / "cogvideox" / "interface.py")
