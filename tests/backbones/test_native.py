"""Native ComfyUI CogVideoX interop without ComfyUI: key map, streamed converter, native LoRA formats,
DA-blocks on native-layout blocks, latent convention, native-port divergences."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dual_adapter import lora, native
from dual_adapter.lora import formats as lora_formats
from dual_adapter.backbones.cogvideox import build_tiny, rotary_embeddings
from dual_adapter.errors import DualAdapterError
from dual_adapter.io import save_safetensors


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tinies():
    return {v: build_tiny(v, seed=3) for v in ("tiny", "tiny-5b", "tiny-1.5")}


# ---------------------------------------------------------------------------- key map


def test_key_map_covers_every_tensor_both_ways(tinies):
    for b in tinies.values():
        sd = b.transformer.state_dict()
        nat = native.to_native_state_dict(sd)
        assert len(nat) == len(sd)
        assert "blocks.0.q.weight" in nat and "blocks.3.ff_out.bias" in nat and "time_embedding_linear_2.weight" in nat
        assert not any("transformer_blocks" in k or "attn1" in k or "ff.net" in k for k in nat)
        back = native.from_native_state_dict({"model.diffusion_model." + k: v for k, v in nat.items()})
        assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    assert native.diffusers_to_native_key("transformer_blocks.7.attn1.to_out.0.weight") == "blocks.7.attn_out.weight"
    assert native.native_to_diffusers_module("blocks.2.ff_proj") == "transformer_blocks.2.ff.net.0.proj"
    with pytest.raises(DualAdapterError, match="not diffusers"):
        native.to_native_state_dict({"transformer_blocks.0.attn2.to_q.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------- converter


@pytest.mark.parametrize("variant", ["tiny", "tiny-1.5"])
def test_streamed_converter_round_trip_sharded(tinies, variant, tmp_path):
    from safetensors import safe_open

    t = tinies[variant].transformer
    t.save_pretrained(tmp_path / "m" / "transformer", max_shard_size="40KB")
    assert len(list((tmp_path / "m" / "transformer").glob("*.safetensors"))) > 3
    out = native.convert_diffusers_to_native(tmp_path / "m", tmp_path / "n.safetensors")
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["config"])["num_layers"] == 4
    assert keys == set(native.to_native_state_dict(t.state_dict()))
    m = native.load_native_transformer(out)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in t.state_dict().items())
    x = torch.randn(1, 3 if variant == "tiny" else 4, 4, 8, 12)
    e = torch.randn(1, 16, 32)
    ts = torch.tensor([500])
    from dual_adapter.backbones.cogvideox import transformer_forward
    # the weights are bit-identical (above); the forward is equal up to float rounding: the loaded weights are views
    # into the file's buffer at unaligned offsets, and on some CPUs the kernels round differently there (measured
    # 3.6e-7 on tiny-1.5 once; 0.0 after cloning the same weights into fresh memory)
    torch.testing.assert_close(transformer_forward(m, x, e, ts), transformer_forward(t, x, e, ts), rtol=0, atol=1e-5)
    with pytest.raises(DualAdapterError, match="already exists"):
        native.convert_diffusers_to_native(tmp_path / "m", out)
    bf = native.convert_diffusers_to_native(tmp_path / "m" / "transformer", tmp_path / "b.safetensors", dtype="bf16")
    with safe_open(str(bf), "pt") as f:
        assert f.get_tensor("blocks.0.q.weight").dtype == torch.bfloat16


def test_converter_refuses_bad_input(tmp_path):
    with pytest.raises(DualAdapterError, match="no transformer weights"):
        native.convert_diffusers_to_native(tmp_path, tmp_path / "x.safetensors")
    (tmp_path / "t").mkdir()
    save_safetensors({"foo.weight": torch.zeros(2)}, tmp_path / "t" / "w.safetensors")
    with pytest.raises(DualAdapterError, match="not diffusers"):
        native.convert_diffusers_to_native(tmp_path / "t", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_loader_takes_native_file_and_infers_config(tinies, tmp_path):
    t = tinies["tiny-5b"].transformer
    p = save_safetensors(native.to_native_state_dict(t.state_dict()), tmp_path / "bare.safetensors")
    m = native.load_native_transformer(p)  # no config metadata: inferred from shapes
    assert m.config.num_attention_heads == 4 and m.config.attention_head_dim == 16
    assert m.config.use_rotary_positional_embeddings and m.config.num_layers == 4
    with pytest.raises(DualAdapterError, match="not a native"):
        native.load_native_transformer(save_safetensors(t.state_dict(), tmp_path / "diffusers.safetensors"))


# ---------------------------------------------------------------------------- LoRA formats


def _lora(t, rank=4, alpha=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(2):
        for mod, (o, n) in (("attn1.to_q", (64, 64)), ("ff.net.0.proj", (256, 64))):
            sd[f"transformer.transformer_blocks.{i}.{mod}.lora_A.weight"] = torch.randn(rank, n, generator=g) * 0.1
            sd[f"transformer.transformer_blocks.{i}.{mod}.lora_B.weight"] = torch.randn(o, rank, generator=g) * 0.1
    return lora.LoraFile.from_state_dict(sd, {"alpha": alpha})


def _delta(lf: lora.LoraFile, mod: str) -> torch.Tensor:
    a = lf.state_dict[f"transformer.{mod}.lora_A.weight"]
    b = lf.state_dict[f"transformer.{mod}.lora_B.weight"]
    return (b @ a) * lf.alphas[mod] / a.shape[0]


def test_native_lora_save_names_and_round_trip(tinies, tmp_path):
    lf = _lora(tinies["tiny"].transformer)
    p = lora.save_lora_native(tmp_path / "n.safetensors", lf)
    from dual_adapter.io import load_safetensors

    sd, _ = load_safetensors(p)
    assert set(sd) >= {"diffusion_model.blocks.0.q.lora_up.weight", "diffusion_model.blocks.0.q.lora_down.weight",
                       "diffusion_model.blocks.1.ff_proj.alpha"}
    assert float(sd["diffusion_model.blocks.0.q.alpha"]) == 2.0
    back = lora.load_lora(p)
    for mod in lf.modules:
        assert torch.allclose(_delta(back, mod), _delta(lf, mod), atol=1e-7)


def test_native_kohya_videox_fun_and_finetrainers_files(tinies, tmp_path):
    lf = _lora(tinies["tiny"].transformer, rank=4, alpha=1.0)
    nat = lora_formats.native_lora_state_dict(lf)
    # core-style kohya names of native modules: lora_unet_blocks_0_q
    kn = {k.replace("diffusion_model.", "lora_unet_").replace("blocks.", "blocks_").replace(".q.", "_q.")
          .replace(".ff_proj.", "_ff_proj."): v for k, v in nat.items()}
    kn = {k.replace("blocks_0.", "blocks_0_").replace("blocks_1.", "blocks_1_"): v for k, v in kn.items()}
    assert "lora_unet_blocks_0_q.lora_up.weight" in kn
    # VideoX-Fun: lora_unet__transformer_blocks_0_attn1_to_q (double underscore)
    vx = {}
    for mod in lf.modules:
        layer = "lora_unet__" + mod.replace(".", "_")
        vx[f"{layer}.lora_down.weight"] = lf.state_dict[f"transformer.{mod}.lora_A.weight"]
        vx[f"{layer}.lora_up.weight"] = lf.state_dict[f"transformer.{mod}.lora_B.weight"]
        vx[f"{layer}.alpha"] = torch.tensor(1.0)
    # finetrainers: diffusers names, alpha only in lora_config metadata
    ft = {k: v for k, v in lf.state_dict.items()}
    files = {"kohya_native": (kn, {}), "videox_fun": (vx, {}),
             "finetrainers": (ft, {"lora_config": json.dumps({"r": 4, "lora_alpha": 1.0})})}
    for name, (sd, md) in files.items():
        got = lora.load_lora(save_safetensors(sd, tmp_path / f"{name}.safetensors", md))
        assert sorted(got.modules) == sorted(lf.modules), name
        for mod in lf.modules:
            assert torch.allclose(_delta(got, mod), _delta(lf, mod), atol=1e-7), (name, mod)
    # without the metadata the finetrainers file would be read at alpha = rank (4x too strong)
    plain = lora.load_lora(save_safetensors(ft, tmp_path / "plain.safetensors"))
    assert plain.alphas[lf.modules[0]] == 4.0


def test_native_diff_keys_are_refused_with_a_message(tmp_path):
    sd = {"diffusion_model.blocks.0.q.lora_up.weight": torch.zeros(64, 2),
          "diffusion_model.blocks.0.q.lora_down.weight": torch.zeros(2, 64),
          "diffusion_model.blocks.0.norm1.norm.diff": torch.zeros(64),
          "diffusion_model.blocks.0.norm1.norm.diff_b": torch.zeros(64)}
    with pytest.raises(DualAdapterError, match="LoraLoaderModelOnly"):
        lora.load_lora(save_safetensors(sd, tmp_path / "d.safetensors"))


def test_alpha_override_for_one_over_rank_loras(tinies):
    lf = _lora(tinies["tiny"].transformer, rank=4, alpha=4.0)
    low = lora.with_alpha(lf, 1.0)
    mod = lf.modules[0]
    assert torch.allclose(_delta(low, mod), _delta(lf, mod) / 4)
    assert lf.alphas[mod] == 4.0  # the original is unchanged
    with pytest.raises(DualAdapterError, match="alpha override"):
        lora.with_alpha(lf, 0)


# ---------------------------------------------------------------------------- DA-blocks on native blocks


class _FakeNativeBlock(nn.Module):
    """A native-layout CogVideoXBlock (core's names) sharing a diffusers block's modules."""

    def __init__(self, blk):
        super().__init__()
        a = blk.attn1
        self.norm1, self.norm2 = blk.norm1, blk.norm2
        self.q, self.k, self.v, self.attn_out = a.to_q, a.to_k, a.to_v, a.to_out[0]
        self.norm_q, self.norm_k = a.norm_q, a.norm_k
        self.ff_proj, self.ff_out = blk.ff.net[0].proj, blk.ff.net[2]
        self.num_heads, self.head_dim = a.heads, a.to_q.out_features // a.heads


@pytest.mark.parametrize("variant", ["tiny", "tiny-1.5"])
def test_native_da_block_equals_pack_da_block(tinies, variant):
    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig, DualRealPatch, find_context
    from dual_adapter.dualreal.native_patch import build_native_da_blocks
    from dual_adapter.dualreal.patch import DualRealContext
    from dual_adapter.patches import patched_copy

    t = tinies[variant].transformer
    torch.manual_seed(0)
    ad = DualRealAdapters(DualRealConfig.for_transformer(t, groups=2))
    for p in ad.parameters():
        p.data.normal_(0, 0.05)
    ad.requires_grad_(False)
    ref = torch.randn(1, 1024)
    pt = patched_copy(t, [DualRealPatch(ad, ref)])
    ctx_p = find_context(pt)
    ctx_n = DualRealContext(ad.config, ref.view(1, 1, -1))
    nblocks = build_native_da_blocks([_FakeNativeBlock(b) for b in t.transformer_blocks], ad, ctx_n)
    # the wrapped block's modules keep their native names (core's weight patches find them)
    assert dict(nblocks[0].named_parameters())["q.weight"] is t.transformer_blocks[0].attn1.to_q.weight
    assert not any("adapter" in n for n, _ in nblocks[0].named_parameters())
    torch.manual_seed(1)
    B, F_, C, h, w = 2, (4 if variant == "tiny-1.5" else 3), 4, 8, 12  # batch 2 = the CFG batch
    x = torch.randn(B, F_, C, h, w)
    enc = torch.randn(B, 16, 32)
    ts = torch.tensor([700, 700])
    rope = rotary_embeddings(t, F_, h, w, "cpu")
    hs = t.patch_embed(enc, x)
    temb = t.time_embedding(t.time_proj(ts).to(hs.dtype))
    e0, h0 = hs[:, :16], hs[:, 16:]
    hp, ep, hn, en = h0, e0, h0, e0
    for pb, nb in zip(pt.transformer_blocks, nblocks):
        hp, ep = pb(hp, ep, temb, image_rotary_emb=rope)
        hn, en = nb(hidden_states=hn, encoder_hidden_states=en, temb=temb, image_rotary_emb=rope,
                    transformer_options={})
    assert torch.allclose(hp, hn, atol=1e-5) and torch.allclose(ep, en, atol=1e-5)
    assert torch.allclose(ctx_p.alpha, ctx_n.alpha)  # StageBlender ran once, on the same block-0 input
    with pytest.raises(DualAdapterError, match="already has DualReal"):
        build_native_da_blocks(nblocks, ad, ctx_n)
    wrong = DualRealAdapters(DualRealConfig(num_blocks=3, dim=64, time_embed_dim=32, groups=1))
    with pytest.raises(DualAdapterError, match="3 blocks"):
        build_native_da_blocks([_FakeNativeBlock(b) for b in t.transformer_blocks], wrong,
                               DualRealContext(wrong.config))


# ---------------------------------------------------------------------------- divergences


def test_native_divergences_name_the_cause(tinies):
    v = {k: native.native_divergences(b.transformer.config) for k, b in tinies.items()}
    assert any("64-d" in d for d in v["tiny-1.5"])  # tiny heads are 16-d: core cannot load them
    ok15 = dict(tinies["tiny-1.5"].transformer.config, attention_head_dim=64)
    assert native.native_divergences(ok15) == []
    five = native.native_divergences(dict(tinies["tiny-5b"].transformer.config, attention_head_dim=64))
    assert [d.severity for d in five] == ["warn"] and "spatial_interpolation_scale" in five[0]
    two = native.native_divergences(dict(tinies["tiny"].transformer.config, attention_head_dim=64))
    assert [d.severity for d in two] == ["refuse"] and "sincos" in two[0]
    i2v = dict(tinies["tiny-5b"].transformer.config, attention_head_dim=64, use_learned_positional_embeddings=True)
    assert any(d.severity == "refuse" and "learned" in d for d in native.native_divergences(i2v))


# ---------------------------------------------------------------------------- latents, prompts, workflow


def test_latent_convention_is_cores_unscaled_vae_latent(tinies):
    from dual_adapter import sampling

    b = tinies["tiny"]
    s = sampling.latent_scale(b)
    assert s == b.vae.config.scaling_factor and s != 1.0
    z = torch.randn(1, 3, 4, 8, 12)  # transformer latents (scaled)
    lat = sampling.to_comfy_latent(z, s)
    assert torch.allclose(lat["samples"], z.permute(0, 2, 1, 3, 4) / s)  # what core VAEDecode decodes
    assert torch.allclose(sampling.from_comfy_latent(lat, s), z)
    # Encode node -> LATENT is the raw VAE posterior mode (what core VAEEncode gives)
    from nodes.core_nodes import Encode
    from dual_adapter.patches import PatchedModel

    frames = torch.rand(9, 64, 96, 3)
    (enc,) = Encode().encode(PatchedModel(b), frames)
    with torch.no_grad():
        raw = b.vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()
    assert torch.allclose(enc["samples"], raw, atol=1e-5)


def test_sampler_takes_core_conditioning(tinies):
    from nodes.core_nodes import Sampler
    from dual_adapter.backbones.cogvideox import encode_prompt
    from dual_adapter.patches import PatchedModel

    b = tinies["tiny"]
    m = PatchedModel(b)
    e = encode_prompt(b, ["a dog", "blurry"])
    cond, neg = [[e[:1], {"pooled_output": None}]], [[e[1:], {}]]
    (a,) = Sampler().run(m, {"positive": e[:1], "negative": e[1:]}, steps=2, seed=3)
    (c,) = Sampler().run(m, cond, steps=2, seed=3, negative=neg)
    assert torch.equal(a["samples"], c["samples"])
    with pytest.raises(DualAdapterError, match="cogvideox"):
        Sampler().run(m, [[torch.zeros(1, 77, 768), {}]], steps=1)


def test_native_workflow_ui_and_api_twins_agree():
    import importlib.util
    from pathlib import Path

    from dual_adapter.commands.run import load_node_classes
    from dual_adapter.graph import ui_to_api

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("bw", root / "workflows" / "build_workflows.py")
    bw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bw)
    classes = {**bw.NATIVE_CORE_SPECS, **load_node_classes()}
    ui = json.loads((root / "example_workflows" / "dualreal_lora_ksampler.json").read_text())
    api = json.loads((root / "workflows" / "native" / "api" / "dualreal_lora_ksampler.json").read_text())
    types = {n["type"] for n in ui["nodes"]}
    assert {"UNETLoader", "CLIPLoader", "KSampler", "DualAdapterDualRealApplyNative",
            "DualAdapterApplyLoRANative"} <= types
    conv = ui_to_api(ui, classes)
    assert {k: v["inputs"] for k, v in conv.items()} == {k: v["inputs"] for k, v in api.items()}
    assert api[next(k for k, v in api.items() if v["class_type"] == "CLIPLoader")]["inputs"]["type"] == "cogvideox"


def test_pack_loader_takes_a_folder_without_transformer_plus_a_native_file(tinies, tmp_path):
    from dual_adapter.models import load_cogvideox

    b = tinies["tiny-1.5"]
    root = tmp_path / "cv"
    b.vae.save_pretrained(root / "vae")
    b.text_encoder.save_pretrained(root / "text_encoder")
    b.tokenizer.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(b.scheduler_config))
    b.transformer.save_pretrained(tmp_path / "t" / "transformer")
    nat = native.convert_diffusers_to_native(tmp_path / "t", tmp_path / "n.safetensors")
    with pytest.raises(DualAdapterError, match="transformer/"):
        load_cogvideox(root, dtype="fp32", device="cpu")
    got = load_cogvideox(root, dtype="fp32", device="cpu", transformer_file=nat)
    assert got.config.patch_size_t == 2
    assert all(torch.equal(got.transformer.state_dict()[k], v) for k, v in b.transformer.state_dict().items())


def test_a_native_transformer_file_with_a_builtin_or_mini_model_is_refused_not_dropped(tmp_path):
    """``load_model`` used to drop ``transformer_file`` silently for ``mini`` folders (only the CLI refused it, and
    only for the built-in names): the user got the folder's own transformer without a word."""
    from dual_adapter.models import load_model
    from dual_adapter.miniworld.model import build_mini, save_mini

    save_mini(build_mini(seed=0), tmp_path / "m")
    for name in ("tiny", "mini", str(tmp_path / "m")):
        with pytest.raises(DualAdapterError, match="native transformer file needs a real CogVideoX"):
            load_model(name, transformer_file=tmp_path / "x.safetensors")
    assert load_model(str(tmp_path / "m"), cpu_offload=True).name == "mini"  # harmless there: ignored
