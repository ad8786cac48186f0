"""Helpers shared by test files in several feature folders (``from helpers import ...``: tests/ is on sys.path
through conftest.py). Fixtures here are imported by the modules that take them, so each module keeps its own
instance, as a module-scoped fixture defined in the module would."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError, InterruptedByUser

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GUITAR = ROOT / "examples" / "guitar.mp4"
GUITAR_PROMPT = "a person is playing guitar"


# ---------------------------------------------------------------- random weights and inputs on the tiny CogVideoX


@pytest.fixture(scope="module", name="bundle")
def fresh_tiny():
    """A tiny CogVideoX built for the module (not the one that every test shares)."""
    from dual_adapter.backbones.cogvideox import build_tiny

    return build_tiny("tiny", seed=0)


def randomise(module: torch.nn.Module, std=0.05, seed=0):
    """Overwrite every parameter of ``module`` with seeded N(0, std^2) values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def stageblender_alpha(controller, pool: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """The StageBlender's identity weights ``alpha [B, n]`` written out from its formula (docs/dualreal.md) for the
    max-pooled block-0 tokens ``pool [B, D]`` and the timestep features ``temb [B, T]``."""
    import torch.nn.functional as F

    c = controller
    cp = c.pool_proj(pool)
    shift, scale, gate = c.time_mod(F.silu(temb)).chunk(3, -1)
    f = c.norm(cp) * (1 + scale) + shift
    f = c.mlp_out(F.gelu(c.mlp_in(f), approximate="tanh")) + gate * cp
    return c.scale * torch.sigmoid(c.head_out(F.relu(c.head_hidden(F.relu(f)))))


def forward_inputs(bundle, batch=2, seed=0):
    """Latents ``[batch, 3, 4, 8, 12]``, prompt embeddings and timesteps for one transformer forward."""
    from dual_adapter.backbones.cogvideox import encode_prompt

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 4, 8, 12, generator=g)
    e = encode_prompt(bundle, ["dog * is playing guitar", "a person"][:batch])
    t = torch.tensor([700, 150][:batch])
    return x, e, t


def random_full_lora(bundle, seed=1):
    """A rank-4 LoRA on ``attn1.to_q``, ``attn1.to_k`` and ``ff.net.2`` of every block, random A and B."""
    from dual_adapter.lora import LoraFile

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(len(bundle.transformer.transformer_blocks)):
        for m in ("attn1.to_q", "attn1.to_k", "ff.net.2"):
            lin = bundle.transformer.get_submodule(f"transformer_blocks.{i}.{m}")
            sd[f"transformer.transformer_blocks.{i}.{m}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * .2
            sd[f"transformer.transformer_blocks.{i}.{m}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * .2
    return LoraFile.from_state_dict(sd)


def random_lora(bundle, blocks, targets, seed, rank=4, alpha=8.0, scale=0.1):
    """A LoRA with random (non-zero) A and B and alpha != rank (scale alpha/rank not folded)."""
    from dual_adapter.lora import LoraFile, LoraSpec, inject_lora, lora_modules, lora_state_dict
    from dual_adapter.patches import shallow_copy_module

    m = shallow_copy_module(bundle.transformer)
    ps = inject_lora(m, LoraSpec(rank=rank, alpha=alpha, dropout=0.0, targets=targets, blocks=blocks), "x")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ps:
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    sd = lora_state_dict(m, "x")
    return LoraFile.from_state_dict(sd, {"alpha": alpha}, alphas={n: alpha for n in lora_modules(m, "x")})


def randomised_adapters(cfg, std=0.02, seed=0):
    """DualReal adapters of ``cfg`` with seeded N(0, std^2) weights."""
    from dual_adapter.dualreal import DualRealAdapters

    m = DualRealAdapters(cfg)
    randomise(m, std=std, seed=seed)
    return m


def random_dualreal_data(bundle, seed=0):
    """DualReal training data on random latents: 2 photos, 3 clips, 3 reference embeddings."""
    from dual_adapter.backbones.cogvideox import encode_prompt
    from dual_adapter.dualreal import DualRealData

    g = torch.Generator().manual_seed(seed)
    return DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(3, 3, 4, 8, 12, generator=g),
                        encode_prompt(bundle, "dog *"), encode_prompt(bundle, GUITAR_PROMPT),
                        torch.randn(3, 1024, generator=g), "dog *", GUITAR_PROMPT, "test")


# ---------------------------------------------------------------- one short DualReal run on random latents


@pytest.fixture(scope="module", name="bundle")
def shared_tiny(tiny):
    """The tiny CogVideoX that every test shares, under the name the run tests take it by."""
    return tiny


@pytest.fixture(scope="module", name="data")
def run_data(bundle):
    """DualReal training data on random latents: 2 photos, 1 clip, 1 reference embedding."""
    from dual_adapter.backbones.cogvideox import encode_prompt
    from dual_adapter.dualreal import DualRealData

    g = torch.Generator().manual_seed(0)
    return DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(1, 3, 4, 8, 12, generator=g),
                        encode_prompt(bundle, "dog *"), encode_prompt(bundle, GUITAR_PROMPT),
                        torch.randn(1, 1024, generator=g), "dog *", GUITAR_PROMPT, "test")


def run_config(steps, **kw):
    """A TrainConfig without gradient checkpointing, warm-up or checkpoints unless asked."""
    from dual_adapter.training import TrainConfig

    kw.setdefault("gradient_checkpointing", False)
    kw.setdefault("warmup_steps", 0)
    kw.setdefault("checkpoint_every", 0)
    return TrainConfig(steps=steps, **kw)


def train_run(bundle, data, out, cfg, **kw):
    """DualReal (2 groups, motion batch 1) on ``data``, written to ``out``."""
    from dual_adapter.dualreal import DualRealOptions, train_dualreal_on_data

    opts = DualRealOptions(groups=2, motion_batch=1)
    return train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data, opts, cfg, out=out, **kw)


def stop_at(n):
    """A progress callback that raises InterruptedByUser at step ``n`` (a user's Cancel)."""
    def cb(step, total, info):
        if step == n:
            raise InterruptedByUser("stop")
    return cb


# ---------------------------------------------------------------- nodes and files


def node_bridge():
    """The pack's ``bridge`` module as the headless runner loads it."""
    import sys

    from dual_adapter.commands.run import load_node_classes

    load_node_classes()
    return sys.modules["dual_adapter_pack_nodes.bridge"]


def tiny_lora_file():
    """A rank-2 LoRA of zeros on block 0's ``attn1.to_q`` of the tiny CogVideoX."""
    from dual_adapter.lora import LoraFile

    k = "transformer.transformer_blocks.0.attn1.to_q"
    return LoraFile({f"{k}.lora_A.weight": torch.zeros(2, 64), f"{k}.lora_B.weight": torch.zeros(64, 2)},
                    rank=2, alpha=2.0, targets=["attn1.to_q"], blocks=[0])


def files_under(root: Path) -> set[Path]:
    """The files (not folders) under ``root``."""
    return {p for p in root.rglob("*") if p.is_file()}


def error_of(fn) -> str:
    """The message of the DualAdapterError that ``fn()`` raises (fails the test when it raises none)."""
    with pytest.raises(DualAdapterError) as e:
        fn()
    return str(e.value)


def fake_model_folder(root: Path, tiny, transformer: dict | None = None, scheduler: str | None = None) -> Path:
    """A diffusers-layout folder with the tiny model's configs (and empty weight files): enough for the
    checks that run before any weight loads."""
    from dual_adapter import sampling

    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (root / part).mkdir(parents=True, exist_ok=True)
    t = {"_class_name": "CogVideoXTransformer3DModel", **dict(tiny.transformer.config), **(transformer or {})}
    (root / "transformer" / "config.json").write_text(json.dumps(t, default=list))
    (root / "vae" / "config.json").write_text(json.dumps(dict(tiny.vae.config), default=list))
    (root / "text_encoder" / "config.json").write_text("{}")
    for part in ("transformer", "vae", "text_encoder"):
        (root / part / "model.safetensors").write_bytes(b"")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    if scheduler is None:
        sampling.make_scheduler(tiny, "ddim").save_pretrained(root / "scheduler")
    else:
        (root / "scheduler" / "scheduler_config.json").write_text(scheduler)
    return root


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    """A JPEG photo and a 1-frame MP4: neither is a motion clip."""
    from PIL import Image

    from dual_adapter import media

    d = tmp_path_factory.mktemp("stills")
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(64, 96, 3, generator=g) * 255).byte().numpy()).save(d / "photo.jpg")
    media.write_video(torch.rand(1, 64, 96, 3, generator=g), d / "one.mp4")
    return d / "photo.jpg", d / "one.mp4"


def save_wan_folder(bb, root, transformer_cfg=None, index=None):
    """Write a Wan backbone ``bb`` as a diffusers folder at ``root`` (config overrides and a model_index.json
    optional)."""
    bb.denoiser.save_pretrained(root / "transformer")
    bb.vae.save_pretrained(root / "vae")
    bb.text_encoder.save_pretrained(root / "text_encoder")
    bb.tokenizer.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(bb.scheduler_config))
    if transformer_cfg:
        p = root / "transformer" / "config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), **transformer_cfg}))
    if index is not None:
        (root / "model_index.json").write_text(json.dumps(index))
