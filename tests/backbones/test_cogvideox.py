"""The CogVideoX backbone on the tiny model: loading, text encoding, sampling, schedulers, VAE, model patches."""
from __future__ import annotations

import pytest
import torch

from dual_adapter import models, sampling
from dual_adapter.backbones import cogvideox
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import PatchedModel, patched_copy, shallow_copy_module


def test_missing_folder_error(tmp_path):
    with pytest.raises(DualAdapterError, match="does not exist"):
        models.load_cogvideox(tmp_path / "nope")


def test_partial_folder_lists_missing_parts(tmp_path):
    root = tmp_path / "CogVideoX-2b"
    (root / "vae").mkdir(parents=True)
    (root / "vae" / "config.json").write_text("{}")
    (root / "tokenizer").mkdir()
    with pytest.raises(DualAdapterError) as e:
        models.load_cogvideox(root)
    msg = str(e.value)
    assert "transformer/" in msg and "text_encoder/" in msg and "scheduler/" in msg
    assert "vae/*.safetensors" in msg and "tokenizer/spiece.model" in msg
    assert str(root) in msg


def test_saved_tiny_folder_loads_back(tmp_path, tiny):
    """The real loader reads a diffusers folder: save the tiny parts in that layout and load them."""
    root = tmp_path / "cog"
    tiny.transformer.save_pretrained(root / "transformer")
    tiny.vae.save_pretrained(root / "vae")
    tiny.text_encoder.save_pretrained(root / "text_encoder")
    tiny.tokenizer.save_pretrained(root / "tokenizer")
    sampling.make_scheduler(tiny, "ddim").save_pretrained(root / "scheduler")
    b = models.load_cogvideox(root, dtype="fp32", device="cpu")
    e1 = cogvideox.encode_prompt(tiny, "dog * is playing guitar")
    e2 = cogvideox.encode_prompt(b, "dog * is playing guitar")
    torch.testing.assert_close(e1, e2)
    x = torch.randn(1, 3, 4, 8, 12)
    t = torch.tensor([500])
    torch.testing.assert_close(cogvideox.transformer_forward(tiny.transformer, x, e1, t),
                               cogvideox.transformer_forward(b.transformer, x, e2, t))
    # a folder without a transformer is refused, naming it
    import shutil
    shutil.rmtree(root / "transformer")
    with pytest.raises(DualAdapterError, match="transformer/"):
        models.load_cogvideox(root)


def test_tiny_is_seeded():
    a, b, c = cogvideox.build_tiny(seed=3), cogvideox.build_tiny(seed=3), cogvideox.build_tiny(seed=4)
    pa = dict(a.transformer.named_parameters())
    assert all(torch.equal(p, pa[n]) for n, p in b.transformer.named_parameters())
    assert not all(torch.equal(p, pa[n]) for n, p in c.transformer.named_parameters())


def test_prompt_encoding_pads_and_truncates(tiny, caplog):
    e = cogvideox.encode_prompt(tiny, ["dog *", "a person is playing guitar"])
    assert e.shape == (2, tiny.max_text_len, tiny.config.text_embed_dim)
    long = " ".join(["guitar"] * 100)
    with caplog.at_level("WARNING"):
        e2 = cogvideox.encode_prompt(tiny, long)
    assert e2.shape == (1, tiny.max_text_len, 32)
    assert "truncated" in caplog.text
    with pytest.raises(DualAdapterError, match="more than the model's"):
        cogvideox.encode_prompt(tiny, long, on_long="error")
    with pytest.raises(DualAdapterError, match="prompt must be"):
        cogvideox.encode_prompt(tiny, 3)


def _gen(tiny, seed, prompt="dog * is playing guitar", **kw):
    e = cogvideox.encode_prompt(tiny, prompt)
    lat = sampling.sample(tiny, e, steps=4, cfg=6.0, seed=seed, **kw)
    return lat, sampling.decode_latents(tiny, lat)


def test_prompt_to_frames_shape_and_seed(tiny):
    lat, frames = _gen(tiny, 1)
    assert lat.shape == (1, 3, 4, 8, 12)
    assert frames.shape == (1, 9, 64, 96, 3)
    assert frames.min() >= 0 and frames.max() <= 1
    lat2, frames2 = _gen(tiny, 1)
    assert torch.equal(frames, frames2)
    lat3, _ = _gen(tiny, 2)
    assert (lat3 - lat).abs().mean() > 1e-3


@pytest.mark.parametrize("sched", ["dpm", "ddim"])
def test_schedulers_use_trailing_spacing(tiny, sched):
    s = sampling.make_scheduler(tiny, sched)
    s.set_timesteps(5)
    assert s.config.timestep_spacing == "trailing"
    assert int(s.timesteps[0]) == 999
    lat, _ = _gen(tiny, 0, scheduler=sched)
    assert torch.isfinite(lat).all()


@pytest.mark.parametrize("variant,frames", [("tiny-5b", 9), ("tiny-1.5", 9), ("tiny-1.5", 17)])
def test_rope_and_15_variants(variant, frames):
    b = cogvideox.build_tiny(variant)
    e = cogvideox.encode_prompt(b, "a car is turning")
    lat = sampling.sample(b, e, num_frames=frames, steps=2, cfg=1.0)
    assert lat.shape[1] == (frames - 1) // 4 + 1  # padding frames of 1.5 are removed
    assert sampling.decode_latents(b, lat).shape[1] == frames
    if variant == "tiny-1.5":
        with pytest.raises(DualAdapterError, match="8k\\+1"):
            sampling.sample(b, e, num_frames=13, steps=1)


@pytest.mark.parametrize("kw,msg", [
    (dict(num_frames=10), "4k\\+1"),
    (dict(num_frames=-3), "4k\\+1"),
    (dict(height=70), "height=70"),
    (dict(width=100), "width=100"),
    (dict(steps=0), "steps=0"),
])
def test_bad_sizes_are_refused(tiny, kw, msg):
    e = cogvideox.encode_prompt(tiny, "x")
    with pytest.raises(DualAdapterError, match=msg):
        sampling.sample(tiny, e, **kw)


def test_vae_encode_decode_roundtrip_shapes(tiny):
    frames = torch.rand(9, 64, 96, 3)
    z = sampling.encode_frames(tiny, frames)
    assert z.shape == (1, 3, 4, 8, 12)
    lat = sampling.to_comfy_latent(z)
    assert lat["samples"].shape == (1, 4, 3, 8, 12)
    assert torch.equal(sampling.from_comfy_latent(lat), z)
    assert sampling.decode_latents(tiny, z).shape == (1, 9, 64, 96, 3)
    with pytest.raises(DualAdapterError, match="multiples of 16"):
        sampling.encode_frames(tiny, torch.rand(9, 60, 96, 3))
    with pytest.raises(DualAdapterError, match="empty"):
        sampling.encode_frames(tiny, torch.rand(0, 64, 96, 3))


class _ScaleFF:
    """A test patch: wraps every block's feed-forward with a scaled copy (adds modules only)."""

    def apply(self, transformer):
        for blk in transformer.transformer_blocks:
            ff = blk.ff

            class Scaled(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, x):
                    return 3.0 * self.inner(x)

            blk.ff = Scaled(ff)


def test_patches_apply_to_a_copy_only(tiny):
    before = {k: v.clone() for k, v in tiny.transformer.state_dict().items()}
    base_lat, _ = _gen(tiny, 5)
    pm = PatchedModel(tiny).with_patch(_ScaleFF())
    lat = sampling.sample(tiny, cogvideox.encode_prompt(tiny, "dog * is playing guitar"), steps=4, seed=5,
                          patches=pm.patches)
    assert (lat - base_lat).abs().mean() > 1e-3  # the patch acted
    after = tiny.transformer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(type(b.ff).__name__ == "Scaled" for b in tiny.transformer.transformer_blocks)
    again, _ = _gen(tiny, 5)
    assert torch.equal(again, base_lat)


def test_shallow_copy_shares_weights(tiny):
    c = shallow_copy_module(tiny.transformer)
    assert c is not tiny.transformer
    for (n, p), (_, q) in zip(tiny.transformer.named_parameters(), c.named_parameters()):
        assert p is q
    assert patched_copy(tiny.transformer, []) is tiny.transformer
    pm = PatchedModel(tiny)
    with pytest.raises(AttributeError):
        pm.patches = ()
