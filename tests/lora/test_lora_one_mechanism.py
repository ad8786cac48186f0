"""One LoRA mechanism for every backbone: a fake DiT and a fake U-Net, defined here and registered through the
backbone interface, get the same :class:`LoraFile`, file layouts, :func:`load_lora` / :func:`check_compatible` and
:class:`LoraPatch`, with nothing in ``dual_adapter.lora`` that knows them."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from dual_adapter import lora as L
from dual_adapter import unet_motion as UM
from dual_adapter.backbones import BlockInfo, VideoBackbone
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import save_safetensors
from dual_adapter.patches import patched_copy, shallow_copy_module

pytestmark = pytest.mark.usefixtures("one_thread")

D = 12


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.to_out = nn.ModuleList([nn.Linear(D, D)])

    def forward(self, x):
        a = torch.softmax(self.to_q(x) @ self.to_k(x).transpose(1, 2) / D ** 0.5, -1)
        return x + self.to_out[0](a @ self.to_v(x))


class _DiTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1, self.ff = _Attn(), nn.Linear(D, D)

    def forward(self, x):
        x = self.attn1(x)
        return x + self.ff(torch.tanh(x))


class FakeDiT(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.proj_in, self.proj_out = nn.Linear(4, D), nn.Linear(D, 4)
        self.layers = nn.ModuleList([_DiTBlock() for _ in range(n)])

    def forward(self, x):
        x = self.proj_in(x)
        for b in self.layers:
            x = b(x)
        return self.proj_out(x)


class _TemporalModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(D, D)
        self.transformer_blocks = nn.ModuleList([_DiTBlock()])

    def forward(self, x):
        return self.transformer_blocks[0](self.proj_in(x))


class _DownBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(D, D, 1)
        self.temp_attentions = nn.ModuleList([_TemporalModel()])

    def forward(self, x):
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.temp_attentions[0](x)


class FakeUNet(nn.Module):
    def __init__(self, n=2):
        super().__init__()
        self.conv_in, self.conv_out = nn.Linear(4, D), nn.Linear(D, 4)
        self.down_blocks = nn.ModuleList([_DownBlock() for _ in range(n)])
        self.mid_block = _DownBlock()

    def forward(self, x):
        x = self.conv_in(x)
        for b in [*self.down_blocks, self.mid_block]:
            x = b(x)
        return self.conv_out(x)


class _Fake(VideoBackbone):
    def __init__(self, denoiser):
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = denoiser, None, None, None
        self.name, self.scheduler_config = f"tiny-{self.kind}", {"num_train_timesteps": 1000}

    def width(self, denoiser=None):
        return D


class FakeDiTBackbone(_Fake):
    kind, family, latent_layout, motion_role = "fakedit", "Fake DiT", "BFCHW", "joint"

    def blocks(self, denoiser=None):
        d = self.pick_denoiser(denoiser)
        return [BlockInfo(f"layers.{i}", "joint", i, b, False) for i, b in enumerate(d.layers)]


class FakeUNetBackbone(_Fake):
    kind, family, latent_layout, motion_role = "fakeunet", "Fake U-Net", "BCFHW", "temporal"
    lora_prefix = "unet"

    def blocks(self, denoiser=None):
        d = self.pick_denoiser(denoiser)
        return [BlockInfo(f"down_blocks.{i}", "down", i, b, False) for i, b in enumerate(d.down_blocks)]


def _register(cls, denoiser_cls):
    from dual_adapter import backbones

    backbones.register_backbone(types.SimpleNamespace(
        KIND=cls.kind, FAMILY=cls.family, tiny_names=lambda: (f"tiny-{cls.kind}",), detect=lambda folder: False,
        load=lambda name, dtype=None, device=None, **kw: cls(denoiser_cls()),
        owns=lambda d: isinstance(d, denoiser_cls), for_denoiser=lambda d, scheduler_config=None: cls(d)))


@pytest.fixture(params=["dit", "unet"])
def fake(request):
    from dual_adapter import backbones

    cls, dcls = {"dit": (FakeDiTBackbone, FakeDiT), "unet": (FakeUNetBackbone, FakeUNet)}[request.param]
    _register(cls, dcls)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            yield backbones.load_backbone(f"tiny-{cls.kind}")
    finally:
        backbones.unregister_backbone(cls.kind)


#: the attention projections a motion LoRA takes on each fake, as a U-Net TAP (temporal) or a DiT TAP (every block)
def _targets(bb) -> list[str]:
    return [n for n, m in bb.denoiser.named_modules()
            if isinstance(m, nn.Linear) and n.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_out.0"))]


def _trained(bb, rank=4, alpha=8.0) -> L.LoraFile:
    """A LoRA as a trainer makes it: peft layers injected through the interface, lora_B moved off zero."""
    model = shallow_copy_module(bb.denoiser)
    names = _targets(bb)
    torch.manual_seed(1)
    L.inject_lora(model, L.LoraSpec(rank=rank, alpha=alpha, dropout=0.0), "default", target_names=names)
    with torch.no_grad():
        for m in L.lora_modules(model, "default").values():
            m.lora_B["default"].weight.normal_(0, 0.1)
    sd = L.lora_state_dict(model, "default")
    return L.LoraFile.from_state_dict(sd, {"backbone": bb.kind}, alphas={n: alpha for n in names})


def _deltas(lf: L.LoraFile) -> dict[str, torch.Tensor]:
    return {m: lf.tensor(m, "B").float() @ lf.tensor(m, "A").float() * (lf.alphas[m] / lf.ranks[m])
            for m in lf.modules}


def _same(a: L.LoraFile, b: L.LoraFile):
    da, db = _deltas(a), _deltas(b)
    assert sorted(da) == sorted(db)
    for m in da:
        assert torch.equal(da[m], db[m]), m  # alpha / rank = 2: folding it is exact


def test_the_unet_names_are_the_one_mechanism():
    assert UM.UNetLora is L.LoraFile and UM.UNetLoraPatch is L.LoraPatch
    assert UM.check_unet_lora is L.check_compatible


def test_lora_keys_take_the_backbone_prefix(fake):
    lf = _trained(fake)
    assert lf.prefix == fake.lora_prefix and all(k.startswith(fake.lora_prefix + ".") for k in lf.state_dict)
    assert lf.rank == 4 and lf.alpha == 8.0 and len(lf.modules) == len(_targets(fake))


@pytest.mark.parametrize("layout", ["diffusers", "peft", "kohya"])
def test_round_trip_through_every_layout_both_ways(fake, layout, tmp_path):
    lf = _trained(fake)
    there = L.save_lora_as(tmp_path / "a" / f"{layout}.safetensors", lf, layout) if layout != "diffusers" else \
        lf.save(tmp_path / "a.safetensors")
    back = L.load_lora(there, fake)
    assert back.prefix == fake.lora_prefix and back.source_format in ("dual_adapter", layout)
    _same(lf, back)
    # and back again: the pack's file written from the loaded layout, then that layout from the pack's file
    again = L.load_lora(back.save(tmp_path / "b.safetensors"), fake)
    _same(lf, again)
    other = L.load_lora(L.save_lora_as(tmp_path / "c" / f"{layout}.safetensors", again, layout), fake)
    _same(lf, other)


def test_the_one_patch_applies_it_through_the_interface(fake, tmp_path):
    lf = L.load_lora(_trained(fake).save(tmp_path / "m.safetensors"), fake)
    x = torch.randn(2, 5, 4)
    d = fake.denoiser
    merged = shallow_copy_module(d)
    with torch.no_grad():
        for mod, dw in _deltas(lf).items():
            lin = merged.get_submodule(mod)
            lin.weight = nn.Parameter(lin.weight + 0.5 * dw)
        ref, want = d(x), merged(x)
        got = patched_copy(d, [L.LoraPatch(lf, 0.5)])(x)
        zero = patched_copy(d, [L.LoraPatch(lf, 0.0, backbone=fake)])(x)
        two = patched_copy(d, [L.LoraPatch(lf, 0.25), L.LoraPatch(lf, 0.25)])(x)  # two patches stack
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(two, want, atol=1e-6)
    assert torch.equal(zero, ref) and not torch.allclose(got, ref)


def test_a_lora_of_another_backbone_is_refused_with_both_names(fake, tmp_path):
    other = FakeUNetBackbone if fake.kind == "fakedit" else FakeDiTBackbone
    dcls = FakeUNet if fake.kind == "fakedit" else FakeDiT
    _register(other, dcls)
    try:
        lf = _trained(other(dcls()))
        with pytest.raises(DualAdapterError, match=f"trained on {other.family}.*is {fake.family}"):
            L.check_compatible(lf, fake)
        path = lf.save(tmp_path / "o.safetensors")
        with pytest.raises(DualAdapterError, match=other.family):
            L.load_lora(path, fake)
        with pytest.raises(DualAdapterError, match=other.family):
            patched_copy(fake.denoiser, [L.LoraPatch(L.load_lora(path))])
    finally:
        from dual_adapter import backbones

        backbones.unregister_backbone(other.kind)


def test_a_lora_for_missing_layers_names_them(fake):
    lf = _trained(fake)
    small = fake.denoiser
    first = lf.modules[0]
    parent, _, leaf = first.rpartition(".")
    copy = shallow_copy_module(small)
    setattr(copy.get_submodule(parent), leaf, nn.Identity())
    with pytest.raises(DualAdapterError, match=f"not in this model: {first}"):
        L.check_compatible(lf, fake, copy)


def test_files_written_by_the_earlier_savers_still_load(tmp_path):
    """Both earlier layouts: the U-Net file (``unet.*`` keys, scale folded, format ``dual_adapter.unet_lora/1``)
    and the DiT file (``transformer.*`` keys, diffusers' adapter metadata), as their savers wrote them."""
    _register(FakeUNetBackbone, FakeUNet)
    _register(FakeDiTBackbone, FakeDiT)
    try:
        for bb in (FakeUNetBackbone(FakeUNet()), FakeDiTBackbone(FakeDiT())):
            lf = _trained(bb)
            folded = {k: (v * 2.0 if k.endswith("lora_B.weight") else v) for k, v in lf.state_dict.items()}
            if bb.lora_prefix == "unet":
                meta = {"format": "dual_adapter.unet_lora/1", "backbone": bb.kind, "base_model": bb.name,
                        "role": "motion", "preset": "k_out", "rank": 4, "trained_alpha": 8.0}
            else:
                meta = {"format": "dual_adapter.lora/1", "rank": 4, "alpha": 4.0, "trained_alpha": 8.0,
                        "lora_adapter_metadata": '{"transformer.lora_alpha": 4.0, "transformer.r": 4}'}
            path = save_safetensors(folded, tmp_path / f"{bb.kind}.safetensors", meta)
            back = L.load_lora(path)
            assert back.prefix == bb.lora_prefix and back.alpha == 4.0
            _same(lf, back)
            L.check_compatible(back, bb)
            if bb.lora_prefix == "unet":
                old = UM.load_unet_lora(path, bb)
                assert old.backbone == bb.kind and old.name == bb.kind
                _same(lf, old)
                resaved = L.load_lora(UM.save_unet_lora(old, tmp_path / "re.safetensors"))
                _same(lf, resaved)
    finally:
        from dual_adapter import backbones

        backbones.unregister_backbone(FakeUNetBackbone.kind)
        backbones.unregister_backbone(FakeDiTBackbone.kind)
