"""What makes DualReal fit and run fast at real scale, checked on the tiny model (CPU).

Gradient accumulation equals the big batch; the inactive adapter set gets no gradient computed; the
sampling path for frozen adapters (per-forward up tables) equals the training path; the residual stream
stays in the model dtype; the loss read-back every N steps keeps the records; scale.py's measuring
machinery runs (meta FLOPs, fake-tensor memory with the CUDA autocast dispatch) on a small config.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from dual_adapter.backbones.cogvideox import build_tiny, encode_prompt, transformer_forward
from dual_adapter.dualreal import (DualRealAdapterSet, DualRealConfig, DualRealOptions, DualRealPatch,
                                   train_dualreal_on_data)
from dual_adapter.dualreal import trainer as dr_trainer
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy
from dual_adapter.training import TrainConfig, train_loop

from helpers import random_dualreal_data as _data, randomised_adapters as _randomised

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


@pytest.fixture(scope="module")
def bundle():
    return build_tiny("tiny", seed=0)


def test_grad_accum_equals_big_batch(bundle):
    """Motion batch 3 as 3 x 1 gives the batch-3 update (AdamW with a large eps is linear in the gradient,
    so the comparison sees gradient differences, not AdamW's sign-like first step)."""
    cfg = DualRealConfig.for_transformer(bundle.transformer, groups=2)
    start = DualRealAdapterSet.from_module(_randomised(cfg))
    runs = {}
    for k in (1, 3):
        opts = DualRealOptions(groups=2, motion_ratio=1.0, motion_batch=3, grad_accum=k, p_image_zero=0.3)
        tc = TrainConfig(steps=2, lr=1e-2, eps=1.0, warmup_steps=0, checkpoint_every=0, grad_clip=0,
                         gradient_checkpointing=False, optimizer="adamw")
        runs[k] = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _data(bundle), opts, tc,
                                         adapters=start)
    a, b = runs[1].adapters.state_dict, runs[3].adapters.state_dict
    changed = 0
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-8), (key, (a[key] - b[key]).abs().max())
        changed += not torch.equal(a[key], start.state_dict[key])
    assert changed > len(a) // 3
    for r1, r3 in zip(runs[1].losses, runs[3].losses):
        assert r1["phase"] == r3["phase"] == "motion"
        assert abs(r1["loss"] - r3["loss"]) < 1e-5 * max(1.0, abs(r1["loss"]))
        assert abs(r1["w_id"] - r3["w_id"]) < 1e-6


def test_grad_accum_option_validated():
    with pytest.raises(DualAdapterError, match="grad_accum"):
        DualRealOptions(grad_accum=0).validate()


@pytest.mark.parametrize("ratio,expect_hits", [(0.0, False), (1.0, True)])
def test_inactive_adapters_get_no_gradient_computed(bundle, monkeypatch, ratio, expect_hits):
    hits = []
    orig = dr_trainer.set_phase_trainable

    def spy(module, motion):
        if not getattr(module, "_spied", False):
            module._spied = True
            for p in module.motion_parameters():
                p.register_post_accumulate_grad_hook(lambda p: hits.append(1))
        orig(module, motion)

    monkeypatch.setattr(dr_trainer, "set_phase_trainable", spy)
    cfg = DualRealConfig.for_transformer(bundle.transformer, groups=2)
    start = DualRealAdapterSet.from_module(_randomised(cfg))
    train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _data(bundle),
                           DualRealOptions(groups=2, motion_ratio=ratio, motion_batch=1),
                           TrainConfig(steps=2, warmup_steps=0, checkpoint_every=0), adapters=start)
    assert bool(hits) == expect_hits


@pytest.mark.parametrize("form", ["official", "zero_init"])
@pytest.mark.parametrize("fixed", [None, (0.05, 0.15)])
def test_frozen_adapter_tables_equal_training_path(bundle, form, fixed):
    """Sampling with frozen adapters builds the up-projections of all blocks once per forward; the result
    equals the per-block path that training uses."""
    tr = bundle.transformer
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 4, 8, 12, generator=g), torch.tensor([700, 150])
    e = encode_prompt(bundle, ["dog *", "a person"])
    mod = _randomised(DualRealConfig.for_transformer(tr, form=form, groups=2), std=0.05)
    ref = torch.randn(1, 1024, generator=g)
    frozen = copy.deepcopy(mod).requires_grad_(False)
    train_path = transformer_forward(patched_copy(tr, [DualRealPatch(mod, ref, fixed_weights=fixed)]), x, e, t)
    model = patched_copy(tr, [DualRealPatch(frozen, ref, fixed_weights=fixed, identity_scale=0.5)])
    if fixed is None:
        from dual_adapter.dualreal import find_context

        assert find_context(model).up_table("attn", ("id_attn_adapter", "motion_attn_adapter"), None,
                                            torch.float32, 2) is not None
    model_same = patched_copy(tr, [DualRealPatch(frozen, ref, fixed_weights=fixed)])
    with torch.no_grad():
        table_path = transformer_forward(model_same, x, e, t)
        scaled = transformer_forward(model, x, e, t)
    assert torch.allclose(train_path, table_path, atol=1e-5, rtol=1e-4), (train_path - table_path).abs().max()
    assert (scaled - table_path).abs().max() > 1e-5  # the identity scale reaches the tables


def test_residual_stream_stays_in_model_dtype(bundle):
    """Official form under autocast: the skip adds the fp32 LayerNorm output n; the sum must stay bf16
    (else the residual stream turns fp32 from block 1 on and every checkpoint boundary doubles)."""
    tr = bundle.transformer
    mod = _randomised(DualRealConfig.for_transformer(tr, form="official", groups=2))
    model = patched_copy(tr, [DualRealPatch(mod)])
    blk = model.transformer_blocks[0]
    D = mod.config.dim
    base = torch.randn(1, 5, D).to(torch.bfloat16)
    n = torch.randn(1, 5, D)  # fp32, as CUDA autocast's layer_norm returns it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = blk._fused_params("attn", 0.1, 0.1, None, 1, torch.bfloat16, True)
        out = blk._apply_fused(base, n, p)
    assert out.dtype == torch.bfloat16


def test_loss_read_back_every_n_steps():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    seen = []

    def step_fn(step, g):
        return (w ** 2).sum() * (1 + step), {"t": torch.tensor(float(step)), "phase": "x"}

    def run(every, cb=None):
        w.data = torch.tensor([1.0, -2.0])
        return train_loop([w], step_fn, TrainConfig(steps=7, warmup_steps=0, sync_every=every, lr=1e-2,
                                                    optimizer="adamw"), callback=cb)

    one = run(1)
    three = run(3, lambda s, tot, rec: seen.append(s))
    assert seen == list(range(1, 8))
    assert [r["loss"] for r in one.losses] == [r["loss"] for r in three.losses]
    assert [r["t"] for r in three.losses] == [float(k) for k in range(7)]

    def bad(step, g):
        return (w ** 2).sum() * (float("nan") if step == 3 else 1.0), {}

    ckpts = []
    with pytest.raises(DualAdapterError, match="step 4"):
        train_loop([w], bad, TrainConfig(steps=9, warmup_steps=0, sync_every=3, checkpoint_every=3),
                   on_checkpoint=lambda s, *a: ckpts.append(s))
    assert ckpts == [3]  # the periodic checkpoint before the divergence; none of the diverged weights


def test_scale_machinery_on_a_small_config():
    """benchmarks/scale.py's counting runs on a small config: meta FLOPs and op counts, fake-tensor memory;
    the fake-CPU run (CUDA-like layer_norm) keeps the same activations as the fake-CUDA forward."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "scale.py")
        scale = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scale)
        from common import small_config
    finally:
        sys.path.pop(0)
    cfg = small_config(2, rope=True)
    cfg["size"] = (9, 64, 96)
    s0, s1 = scale.count_flops(cfg, "sampling_base"), scale.count_flops(cfg, "sampling_dualreal")
    assert s1["flops"] > s0["flops"] and s1["dispatched_ops"] > s0["dispatched_ops"]
    mem = scale.measure_memory(cfg, "dualreal_motion_b1")
    assert abs(mem["fwd_kept_gib_cuda"] - mem["fwd_kept_gib_cpu"]) < 1e-3 * max(mem["fwd_kept_gib_cuda"], 1e-6)
    assert mem["peak_gib_adamw"] > mem["peak_gib_adamw8bit"] > mem["weights_gib"]


@pytest.mark.slow
def test_compiled_sampling_does_not_recompile_per_call(bundle):
    """``sample(compile=...)`` keeps the compiled patched model: a second call with the same patch does not
    compile again (a counting backend that runs the captured graphs eagerly). Two steps: the first forward
    fills the DA-blocks' weight caches, so the second recompiles once; from then on nothing does."""
    from dual_adapter.sampling import sample

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(1)
        return gm.forward

    cfg = DualRealConfig.for_transformer(bundle.transformer, groups=2)
    patch = DualRealPatch(DualRealAdapterSet.from_module(_randomised(cfg)), torch.randn(1, 1024))
    e = encode_prompt(bundle, "dog *")
    kw = dict(steps=2, cfg=2.0, seed=0, patches=[patch], negative_embeds=encode_prompt(bundle, ""))
    torch._dynamo.reset()
    eager = sample(bundle, e, **kw)
    first = sample(bundle, e, compile=backend, **kw)
    n = len(graphs)
    second = sample(bundle, e, compile=backend, **kw)
    torch._dynamo.reset()
    assert n > 0 and len(graphs) == n
    assert torch.allclose(first, eager, atol=1e-5) and torch.equal(first, second)


# --------------------------------------------------------------------------------------------
# train-lora: batch, gradient accumulation, data parallel (DDP / FSDP), resume across processes


def _lora_latents(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = [torch.randn(1, 3, 4, 8, 12, generator=g) for _ in range(n)]
    frames = [torch.randn(9, 1, 4, 8, 12, generator=g) for _ in range(n)]
    return lat, frames


def test_lora_grad_accum_equals_big_batch(bundle):
    """train-lora's batch 3 as 3 x 1 micro-batches gives the batch-3 run (no dropout: its masks are drawn per
    forward), MotionDirector's spatial path and debiased loss included."""
    from dual_adapter import lora

    lat, frames = _lora_latents()
    emb = encode_prompt(bundle, "a person is playing guitar")
    runs = {}
    for k in (1, 3):
        cfg = lora.lora_train_config(steps=3, lr=1e-2, eps=1.0, grad_clip=0, gradient_checkpointing=False)
        lf, res = lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat,
                                             prompt_embeds=emb, frame_latents=frames, batch_size=3, grad_accum=k,
                                             spec=lora.LoraSpec.from_preset("tap", rank=4, dropout=0.0), cfg=cfg,
                                             spatial_path=True, debiased_loss=True)
        runs[k] = (lf.state_dict, res.losses)
    (a, la), (b, lb) = runs[1], runs[3]
    assert len(la) == len(lb) == 3
    for r1, r3 in zip(la, lb):
        for key in ("loss", "loss_spatial"):
            assert abs(r1[key] - r3[key]) < 1e-5 * max(1.0, abs(r1[key])), (key, r1, r3)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-7), (key, (a[key] - b[key]).abs().max())
    assert any(bool(v.abs().max() > 0) for k, v in a.items() if "lora_B" in k)


def test_lora_batching_and_fsdp_refusals(bundle, tmp_path):
    from dual_adapter import lora
    from dual_adapter.dualreal import DualRealOptions

    lat, _ = _lora_latents(2)
    lat.append(torch.randn(1, 1, 4, 8, 12))  # a photo: another size
    emb = encode_prompt(bundle, "x")
    kw = dict(prompt_embeds=emb, spec=lora.LoraSpec.from_preset("tap", rank=2))
    with pytest.raises(DualAdapterError, match="batch_size=2 needs training samples of one size"):
        lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat, batch_size=2,
                                   kinds=["clip", "clip", "photo"], **kw)
    with pytest.raises(DualAdapterError, match="grad_accum=0"):
        lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat[:1], grad_accum=0, **kw)
    # FSDP shards over processes: refused, with what to do, on one process (both trainers)
    with pytest.raises(DualAdapterError, match="accelerate launch --num_processes N"):
        lora.train_lora_on_latents(bundle.transformer, bundle.scheduler_config, latents=lat[:1],
                                   cfg=lora.lora_train_config(steps=1, fsdp=True), **kw)
    with pytest.raises(DualAdapterError, match="accelerate launch --num_processes N"):
        train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _data(bundle),
                               DualRealOptions(groups=2, motion_batch=1), TrainConfig(steps=1, fsdp=True))
    import argparse

    from dual_adapter.commands._parallel import parallel_run

    with pytest.raises(DualAdapterError, match="--fsdp shards the frozen weights over several processes"):
        with parallel_run(argparse.Namespace(fsdp=True, resume=False), tmp_path / "o.safetensors", {}, "train-lora"):
            pass  # the CLI's check, before the model loads


def test_micro_batches_share_the_global_batch(monkeypatch):
    """Each process's micro-batches of the global batch, and FSDP's equal-share rule (world of 2 faked)."""
    from dual_adapter import training

    assert [p.tolist() for p in training.micro_batches(3, 3)] == [[0], [1], [2]]
    monkeypatch.setattr(training.distributed, "dist_rank_world", lambda: (1, 2))
    assert [p.tolist() for p in training.micro_batches(4, 1)] == [[2, 3]]
    assert [p.tolist() for p in training.micro_batches(6, 2)] == [[2, 3], [5]]  # parts [0,1] [2,3] [4] [5]
    assert [p.tolist() for p in training.micro_batches(1, 1)] == []  # rank 1 gets nothing: zero gradients
    training.check_micro_batches(4, 2, "batch_size")
    training.check_micro_batches(3, 1, "batch_size")  # parts [0, 1] and [2]: one forward each
    with pytest.raises(DualAdapterError, match="batch_size=3 with grad_accum=2 on 2 processes gives 3 micro"):
        training.check_micro_batches(3, 2, "batch_size")



# --------------------------------------------------------------------------------------------
# data parallel over 2 gloo processes (as `accelerate launch` starts them): one launch serves the tests below


_TWO_PROCESS_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
sys.path.insert(0, sys.argv[1] + "/tests/training")
torch.set_num_threads(1)
from dual_adapter.training import TrainConfig, init_distributed
rank, world, _ = init_distributed()
assert world == 2
from test_scale import _DR_OPTIONS, _DR_TRAIN, _data
from dual_adapter.backbones.cogvideox import build_tiny
from dual_adapter.dualreal import load_adapters, save_adapters, train_dualreal_on_data
work, clips, cli = sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
bundle = build_tiny("tiny", seed=0)
start = load_adapters(work + "/start.safetensors")
base = [p.detach().clone() for p in bundle.transformer.parameters()]
for fsdp in (False, True):  # replicated weights (DDP), then the frozen transformer sharded (FSDP2)
    name = work + ("/dr_fsdp" if fsdp else "/dr_ddp")
    res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _data(bundle), _DR_OPTIONS,
                                 TrainConfig(**_DR_TRAIN, fsdp=fsdp), adapters=start,
                                 out=name + ".safetensors")
    if rank == 0:
        save_adapters(res.adapters, name + ".safetensors")
        json.dump([[x["loss"], x["phase"]] for x in res.losses], open(name + ".json", "w"))
after = list(bundle.transformer.parameters())  # the loaded model keeps its full, unchanged weights
assert len(after) == len(base) and all(type(p) is torch.nn.Parameter and torch.equal(p, q) for p, q in zip(after, base))

from dual_adapter.cli import main
assert main(["train-lora", *cli, "--out", work + "/ddp.safetensors"]) == 0
assert main(["train-lora", *cli, "--fsdp", "--out", work + "/fsdp.safetensors"]) == 0
# resume across processes: a run stopped after its step-2 checkpoint, continued with resume=True
from dual_adapter import lora, media
from dual_adapter.errors import InterruptedByUser
frames = [media.load_clip(c, num_frames=9, fps=8.0, require_motion=True)[0] for c in clips]
kw = dict(clips=frames, prompt="a person is waving", spec=lora.LoraSpec.from_preset("tap", rank=4, alpha=4.0, dropout=0.0),
          checkpoint_path=work + "/res.ckpt.safetensors", batch_size=2, num_frames=9, spatial_path=True,
          debiased_loss=True)

def stop(step, total, rec):
    if step == 2:
        raise InterruptedByUser("stopped for the test")

try:
    lora.train_lora(bundle, cfg=lora.lora_train_config(steps=3, lr=1e-2, checkpoint_every=0), callback=stop, **kw)
    raise SystemExit("not interrupted")
except InterruptedByUser:
    pass
torch.distributed.barrier()  # rank 0 has written the checkpoint
lf, res = lora.train_lora(bundle, cfg=lora.lora_train_config(steps=3, lr=1e-2, checkpoint_every=0), resume=True, **kw)
if rank == 0:
    lf.save(work + "/resumed.safetensors")
    json.dump([r["loss"] for r in res.losses], open(work + "/resumed.json", "w"))
"""

# DualReal's run in both: global motion batch 2 (one clip per process), AdamW with a large eps (linear in the
# gradient, so gradient differences show), checkpoints at step 2
_DR_OPTIONS = DualRealOptions(groups=2, motion_ratio=1.0, motion_batch=2, identity_batch=2)
_DR_TRAIN = dict(steps=3, lr=1e-2, eps=1.0, warmup_steps=0, checkpoint_every=2, grad_clip=0, optimizer="adamw",
                 gradient_checkpointing=False)
# train-lora's run in both (MotionDirector's two additions ride along)
_LORA_CLI = ["--model", "tiny", "--prompt", "a person is waving", "--steps", "3", "--batch", "2", "--rank", "4",
             "--dropout", "0", "--lr", "1e-2", "--checkpoint-every", "2", "--quiet", "--spatial-path", "--debiased-loss"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, *args: str, world: int = 2) -> None:
    """Run ``script`` in ``world`` processes with the environment ``accelerate launch`` / torchrun give each one
    (gloo on CPU); fail with a process's stderr when one fails."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(world)}
    procs = [subprocess.Popen([sys.executable, str(script), str(ROOT), *args],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One launch of 2 gloo processes (the slow part: each imports torch and diffusers) that trains DualReal
    (DDP, FSDP) and ``train-lora`` (CLI with and without ``--fsdp``; a run stopped and resumed). Returns
    ``(folder, DualReal start adapters, clip paths)``."""
    from dual_adapter.dualreal import save_adapters
    from dual_adapter.media import write_video

    d = tmp_path_factory.mktemp("two_processes")
    cfg = DualRealConfig.for_transformer(build_tiny("tiny", seed=0).transformer, groups=2)
    start = DualRealAdapterSet.from_module(_randomised(cfg))
    save_adapters(start, d / "start.safetensors")
    clips = []
    for i in range(2):  # two 9-frame clips of a moving pattern
        t = torch.linspace(0, 1, 9).view(9, 1, 1, 1)
        x = torch.linspace(0, 1, 96).view(1, 1, 96, 1)
        frames = (0.5 + 0.4 * torch.sin(6.0 * (x - t * (0.3 + 0.2 * i)) + i)).expand(9, 64, 96, 3).contiguous()
        clips.append(str(write_video(frames, d / f"clip{i}.mp4", fps=8)))
    script = d / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    _launch(script, str(d), ",".join(clips), "--motion", *clips, *_LORA_CLI)
    return d, start, clips


@pytest.mark.slow
def test_data_parallel_two_processes_match_one(bundle, two_processes):
    """Two gloo processes with global batch 2 train DualReal like one process with batch 2, both with replicated
    weights (DDP) and with the frozen transformer sharded (FSDP): same losses and adapters; the inactive set
    stays bit-identical; rank 0 writes files that load as usual; the loaded model is left unchanged."""
    import json

    from dual_adapter.dualreal import load_adapters

    d, start, _ = two_processes
    one = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, _data(bundle), _DR_OPTIONS,
                                 TrainConfig(**_DR_TRAIN), adapters=start)
    l1, a = [[r["loss"], r["phase"]] for r in one.losses], one.adapters.state_dict
    for name in ("dr_ddp", "dr_fsdp"):
        l2 = json.loads((d / f"{name}.json").read_text())
        assert [p for _, p in l1] == [p for _, p in l2] == ["motion"] * 3
        assert all(abs(x - y) < 1e-5 * max(1.0, abs(x)) for (x, _), (y, _) in zip(l1, l2))
        b = load_adapters(d / f"{name}.safetensors").state_dict
        moved = 0
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-8), (name, k, (a[k] - b[k]).abs().max())
            if ".id_" in k:  # the gradient mask: the identity set must not have moved at all
                assert torch.equal(b[k], start.state_dict[k]), k
            else:
                moved += not torch.equal(b[k], start.state_dict[k])
        assert moved > 0


@pytest.mark.slow
def test_lora_data_parallel_two_processes_match_one(two_processes, tmp_path):
    """``accelerate launch -m dual_adapter train-lora --batch 2`` on two gloo processes trains like one process
    with batch 2, with replicated (DDP) and sharded (``--fsdp``) frozen weights: same losses, same LoRA; only
    rank 0 writes, and its files load as usual; a run stopped in two processes resumes there to the same result."""
    import json

    from dual_adapter import lora
    from dual_adapter.cli import main

    d, _, clips = two_processes
    assert main(["train-lora", "--motion", *clips, *_LORA_CLI, "--out", str(tmp_path / "one.safetensors")]) == 0
    ref = lora.load_lora(tmp_path / "one.safetensors")
    ref_records = [json.loads(l) for l in (tmp_path / "runs/lora/one_00001_/losses.jsonl").read_text().splitlines()]
    ref_losses = [r["loss"] for r in ref_records]
    assert len(ref_losses) == 3
    for name in ("ddp", "fsdp", "resumed"):
        got = lora.load_lora(d / f"{name}.safetensors")  # rank 0's file loads as usual
        assert got.rank == 4 and sorted(got.modules) == sorted(ref.modules)
        if name == "resumed":
            losses = json.loads((d / "resumed.json").read_text())
        else:
            records = [json.loads(l) for l in (d / f"runs/lora/{name}_00001_/losses.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in records]
            for a, b in zip(ref_records, records):  # the spatial path's loss, summed over the processes
                assert abs(a["loss_spatial"] - b["loss_spatial"]) < 1e-5 * max(1.0, abs(a["loss_spatial"]))
            assert not list(d.glob(f"runs/lora/{name}_00001_/*.safetensors"))  # checkpoint files gone after success
        assert len(losses) == 3 and all(abs(a - b) < 1e-5 * max(1.0, abs(a)) for a, b in zip(ref_losses, losses)), \
            (name, ref_losses, losses)
        for k, v in ref.state_dict.items():  # AdamW (eps 1e-8) turns float-rounding gradient differences of
            # near-zero entries into small step differences: within 0.5 % of one step (lr 1e-2)
            assert torch.allclose(v, got.state_dict[k], rtol=1e-4, atol=5e-5), (name, k, (v - got.state_dict[k]).abs().max())
    assert not list(d.glob("*.lock"))
