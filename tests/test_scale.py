"""Issue 13: what makes DualReal fit and run fast at real scale, checked on the tiny model (CPU).

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

from dual_adapter.backbone import build_tiny, encode_prompt, transformer_forward
from dual_adapter.dualreal import (DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealData,
                                   DualRealOptions, DualRealPatch, train_dualreal_on_data)
from dual_adapter.dualreal import trainer as dr_trainer
from dual_adapter.errors import DualAdapterError
from dual_adapter.patches import patched_copy
from dual_adapter.training import TrainConfig, train_loop

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


@pytest.fixture(scope="module")
def bundle():
    return build_tiny("tiny", seed=0)


def _randomised(cfg, std=0.02, seed=0):
    m = DualRealAdapters(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def _data(bundle, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(3, 3, 4, 8, 12, generator=g),
                        encode_prompt(bundle, "dog *"), encode_prompt(bundle, "a person is playing guitar"),
                        torch.randn(3, 1024, generator=g), "dog *", "a person is playing guitar", "test")


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


_DDP_SCRIPT = r"""
import os, sys, json, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from dual_adapter.training import init_distributed, TrainConfig
rank, world, dev = init_distributed()
from dual_adapter.backbone import build_tiny, encode_prompt
from dual_adapter.dualreal import (DualRealAdapters, DualRealAdapterSet, DualRealConfig, DualRealData,
                                   DualRealOptions, load_adapters, train_dualreal_on_data)
bundle = build_tiny("tiny", seed=0)
g = torch.Generator().manual_seed(0)
data = DualRealData(torch.randn(2, 1, 4, 8, 12, generator=g), torch.randn(3, 3, 4, 8, 12, generator=g),
                    encode_prompt(bundle, "dog *"), encode_prompt(bundle, "guitar"), torch.randn(3, 1024, generator=g),
                    "dog *", "guitar", "test")
start = load_adapters(sys.argv[2])
opts = DualRealOptions(groups=2, motion_ratio=1.0, motion_batch=2, identity_batch=2)
tc = TrainConfig(steps=3, lr=1e-2, eps=1.0, warmup_steps=0, checkpoint_every=2, grad_clip=0, optimizer="adamw",
                 gradient_checkpointing=False)
res = train_dualreal_on_data(bundle.transformer, bundle.scheduler_config, data, opts, tc, adapters=start,
                             out=sys.argv[3])
if rank == 0:
    from dual_adapter.dualreal import save_adapters
    save_adapters(res.adapters, sys.argv[3])
    json.dump([[r["loss"], r["phase"]] for r in res.losses], open(sys.argv[3] + ".json", "w"))
"""


def test_data_parallel_two_processes_match_one(tmp_path):
    """Two gloo processes (as ``accelerate launch`` starts them) with global batch 2 train like one
    process with batch 2: same losses and adapters; the inactive set stays bit-identical; rank 0 writes
    files that load as usual."""
    import os
    import socket
    import subprocess

    cfg = DualRealConfig.for_transformer(build_tiny("tiny", seed=0).transformer, groups=2)
    start = DualRealAdapterSet.from_module(_randomised(cfg))
    from dual_adapter.dualreal import load_adapters, save_adapters

    save_adapters(start, tmp_path / "start.safetensors")
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = {1: str(tmp_path / "one.safetensors"), 2: str(tmp_path / "two.safetensors")}
    base_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(ROOT), str(tmp_path / "start.safetensors"), outs[1]],
                         env=base_env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, str(script), str(ROOT), str(tmp_path / "start.safetensors"), outs[2]],
                              env={**base_env, "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    import json

    l1, l2 = json.loads(Path(outs[1] + ".json").read_text()), json.loads(Path(outs[2] + ".json").read_text())
    assert [p for _, p in l1] == [p for _, p in l2] and len(l1) == 3
    assert all(abs(a - b) < 1e-5 * max(1.0, abs(a)) for (a, _), (b, _) in zip(l1, l2))
    a, b = load_adapters(outs[1]).state_dict, load_adapters(outs[2]).state_dict
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-8), (k, (a[k] - b[k]).abs().max())
    assert {p for _, p in l2} == {"motion"}
    moved = 0
    for k in a:
        if ".id_" in k:  # the gradient mask: the identity set must not have moved at all
            assert torch.equal(b[k], start.state_dict[k]), k
        else:
            moved += not torch.equal(b[k], start.state_dict[k])
    assert moved > 0
