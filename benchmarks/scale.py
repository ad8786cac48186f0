"""FLOPs and peak GPU memory of every method at the released models' real size, measured on CPU.

No GPU is needed: the real CogVideoX transformer configurations (2B, 5B at 49 x 480 x 720, 1.5-5B at
its own 81 x 768 x 1360) are built without data and every figure is counted, not timed.

* **FLOPs** (`torch.utils.flop_counter.FlopCounterMode`) of one training step (forward + backward,
  with the gradient-checkpointing recompute, as the trainers run) and of one CFG sampling step, on the
  ``meta`` device. The attention FLOPs follow PyTorch's SDPA formulas.
* **Dispatched ops** of one sampling step (every ATen op that reaches the backend on ``meta``; on a GPU
  each is at least one kernel launch) with and without DA-blocks.
* **Peak memory** of one training step on fake tensors (``FakeTensorMode``): live tensor storages are
  tracked (:class:`LiveMemory`, a dispatch mode) through forward (bf16 autocast, gradient
  checkpointing) and backward (so gradients and the recompute of a block are included). The autograd
  engine cannot run backward on fake *CUDA* tensors without a GPU, so the full step runs on fake *CPU*
  tensors under CPU bf16 autocast with PyTorch's flash attention for CPU; the forward is run a second
  time on fake CUDA tensors under the real CUDA autocast dispatch with flash SDPA
  (``aten._scaled_dot_product_flash_attention``) and the activations it keeps replace the CPU run's
  (``fwd_kept_gib_cuda`` vs ``fwd_kept_gib_cpu`` in the JSON; they agree to a few MB). Optimiser state
  is added analytically: AdamW 8 bytes per trainable parameter (+ 4 bytes of temporaries in the step
  unless the fused CUDA kernel runs), bitsandbytes' 8-bit AdamW 2 bytes per parameter for tensors of
  >= 4096 elements (+ fp32 block scales), 8 bytes for smaller ones. Peak = max(forward/backward peak +
  optimiser state, live after backward + optimiser state + step temporaries). Not included: the CUDA
  context and allocator fragmentation (typically 0.5-1.5 GB on a real card).

Entries per config (``results[config][entry]``): ``lora_r64`` (LoRA rank 64, the ``full`` preset:
q, k, v, out), ``tap_r32`` (TAP: q, k at rank 32), ``dualreal_motion_b1`` / ``dualreal_identity_b1``
(one DualReal phase at batch 1), ``dualreal_motion_b3`` (the authors' motion batch 3 in one pass;
``dualreal_motion_b3_accum3``: the same as 3 x 1 with gradient accumulation), ``customttt_ttt`` (one TTT
step: the merged LoRA, rank 32 on q, k, v, out of every block, appearance + motion reference in one
batch of 2), ``sampling_base`` / ``sampling_dualreal`` (one CFG step, batch 2). Each training entry has
``flops``, ``flops_ratio_vs_lora_r64``, ``peak_gib_adamw``, ``peak_gib_adamw8bit`` and a breakdown.

Usage:
    python benchmarks/scale.py                      # 5b, 2b, 1.5-5b: ~15-30 min on 2 idle cores (each memory
                                                    # entry ~1 min, each FLOP entry ~20 s at 5B)
    python benchmarks/scale.py --no-memory          # FLOPs and op counts only
    python benchmarks/scale.py --config 5b --out benchmarks/results/scale.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import REAL_CONFIGS, build_transformer  # noqa: E402

from dual_adapter.backbones.cogvideox import DEFAULT_SCHEDULER_CONFIG  # noqa: E402

GIB = 2 ** 30
CONFIGS = {
    "5b": REAL_CONFIGS["5b"],
    "2b": REAL_CONFIGS["2b"],
    # CogVideoX1.5-5B (diffusers transformer/config.json) at its pipeline size 81 x 768 x 1360
    "1.5-5b": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, time_embed_dim=512,
                   text_embed_dim=4096, in_channels=16, out_channels=16, sample_frames=81, sample_height=300,
                   sample_width=300, patch_size=2, patch_size_t=2, patch_bias=False,
                   use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
                   max_text_seq_length=226, size=(81, 768, 1360)),
}
TARGETS = {"dualreal_b1_peak_gib_adamw": 24.0 * 1e9 / GIB, "dualreal_b1_peak_gib_adamw8bit": 22.0 * 1e9 / GIB,
           "dualreal_motion_flops_ratio_vs_lora_r64": 1.00, "sampling_flops_ratio": 1.01,
           "sampling_ops_ratio": 1.15}


# --------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def cuda_autocast(dtype=torch.bfloat16):
    """The CUDA autocast dispatch without a GPU (``torch.autocast('cuda')`` refuses when CUDA is absent);
    it acts on (fake) CUDA tensors exactly as on a card."""
    prev = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev[0])
        torch.set_autocast_dtype("cuda", prev[1])


@contextlib.contextmanager
def flash_sdpa():
    """Route ``F.scaled_dot_product_attention`` to the flash kernel's ATen op (what SDPA picks on an H100
    for bf16 without a mask; SDPA's backend choice itself needs a real device), and run ``F.layer_norm``
    in fp32 under CPU autocast as CUDA autocast does (so the fake-CPU backward run sees CUDA's dtypes)."""
    orig = F.scaled_dot_product_attention

    def sdpa(q=None, k=None, v=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        q, k, v = kw.pop("query", q), kw.pop("key", k), kw.pop("value", v)  # diffusers' Wan passes keywords
        if attn_mask is not None or q.device.type != "cuda":
            return orig(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False,
                                                                  scale=scale)[0]

    orig_ln = F.layer_norm

    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        # CUDA autocast runs layer_norm in fp32 (its fp32 op list); CPU autocast in bf16: do as CUDA does
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return orig_ln(x.float(), shape, None if weight is None else weight.float(),
                               None if bias is None else bias.float(), eps)
        return orig_ln(x, shape, weight, bias, eps)

    F.scaled_dot_product_attention, F.layer_norm = sdpa, layer_norm
    try:
        yield
    finally:
        F.scaled_dot_product_attention, F.layer_norm = orig, orig_ln


def latent_shape(cfg, frames=None):
    Fr, H, W = cfg["size"]
    Fr = frames or Fr
    T = (Fr - 1) // 4 + 1
    return T, cfg["in_channels"], H // 8, W // 8


def tokens(cfg, T):
    p, pt = cfg.get("patch_size", 2), cfg.get("patch_size_t") or 1
    _, _, h, w = latent_shape(cfg)
    return -(-T // pt) * (h // p) * (w // p)


def _width(cfg):
    return cfg["num_attention_heads"] * cfg["attention_head_dim"]


def _new_meta_transformer(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging

        logging.getLogger("diffusers").setLevel(logging.ERROR)
        return build_transformer(cfg, "meta", torch.bfloat16)


def _dualreal_adapters(tr):
    from dual_adapter.dualreal import DualRealAdapters, DualRealConfig

    dcfg = DualRealConfig.for_transformer(tr, groups=min(7, int(tr.config.num_layers)))
    with torch.device("meta"):
        return DualRealAdapters(dcfg)


def _phase_trainable(module, motion: bool):
    """What the DualReal trainer makes trainable in a phase (its own helper when it has one)."""
    from dual_adapter.dualreal import trainer as T

    fn = getattr(T, "set_phase_trainable", None)
    if fn is not None:
        fn(module, motion)
    else:  # the earlier trainer (benchmarks/results/scale_before.json): everything requires grad, the mask drops grads after backward
        module.requires_grad_(True)
    return [p for p in module.parameters() if p.requires_grad]


def build_method(cfg, method: str, device, fake=None):
    """``(model, trainable_params, batch, latent_frames)`` for ``method`` on ``device``: on ``meta``, or, with
    ``fake`` (a FakeTensorMode), modules built on meta and turned into fake tensors on ``device``."""

    tr = _new_meta_transformer(cfg)
    ad = _dualreal_adapters(tr) if "dualreal" in method else None
    if method == "sampling_dualreal":
        ad = ad.to(torch.bfloat16)  # inference: adapters in the model dtype
    if fake is None:
        return _build_method(cfg, method, tr, ad, "meta")
    model, params, batch, T = _build_method(cfg, method, tr, ad, None)
    with fake:  # modules are built on meta, then turned into fake tensors on ``device``
        model = model.to_empty(device=device)
        params = [p for p in model.parameters() if p.requires_grad]
        if method in ("dualreal_motion_b1", "dualreal_motion_b3", "sampling_dualreal"):
            from dual_adapter.dualreal.patch import find_context

            find_context(model).reference = torch.zeros(1, 1, 1024, device=device)
    return model, params, batch, T


def _build_method(cfg, method, tr, ad, ref_device):
    from dual_adapter.lora import LoraSpec, inject_lora
    from dual_adapter.patches import patched_copy, shallow_copy_module
    from dual_adapter.dualreal import DualRealPatch
    from dual_adapter.dualreal.patch import find_context

    T = latent_shape(cfg)[0]
    if method.startswith("dualreal"):
        motion = "motion" in method
        params = _phase_trainable(ad, motion)
        model = patched_copy(tr, [DualRealPatch(ad)])
        if motion and ref_device:
            find_context(model).reference = torch.zeros(1, 1, 1024, device=ref_device)
        batch = 3 if "_b3" in method else 1
        if not motion:
            T = 1
    elif method in ("lora_r64", "tap_r32", "customttt_ttt"):
        rank, preset = {"lora_r64": (64, "full"), "tap_r32": (32, "tap"), "customttt_ttt": (32, "full")}[method]
        model = shallow_copy_module(tr)
        params = inject_lora(model, LoraSpec.from_preset(preset, rank=rank, alpha=float(rank), dropout=0.0), "default")
        batch = 2 if method == "customttt_ttt" else 1
    elif method in ("sampling_base", "sampling_dualreal"):
        params = []
        batch = 2
        if method == "sampling_dualreal":
            ad = ad.requires_grad_(False)
            model = patched_copy(tr, [DualRealPatch(ad)])
            if ref_device:
                find_context(model).reference = torch.zeros(1, 1, 1024, device=ref_device)
        else:
            model = tr
    else:
        raise ValueError(method)
    if params:
        model.enable_gradient_checkpointing()
    return model, params, batch, T


def _inputs(cfg, batch, T, device, dtype=torch.bfloat16):
    _, C, h, w = latent_shape(cfg)
    x0 = torch.zeros(batch, T, C, h, w, device=device, dtype=dtype)
    emb = torch.zeros(1, cfg["max_text_seq_length"], cfg["text_embed_dim"], device=device, dtype=dtype)
    t = torch.full((batch,), 500, dtype=torch.long)
    noise = torch.zeros(batch, T, C, h, w)
    return x0, emb, t, noise


def _train_step(model, cfg, batch, T, device):
    from dual_adapter.training import diffusion_loss, make_noise_scheduler

    ns = make_noise_scheduler(DEFAULT_SCHEDULER_CONFIG)
    x0, emb, t, noise = _inputs(cfg, batch, T, device)
    return diffusion_loss(model, ns, x0, emb, timesteps=t, noise=noise)


def _sample_step(model, cfg, batch, T, device):
    from dual_adapter.backbones.cogvideox import transformer_forward

    pt = cfg.get("patch_size_t") or 1
    x0, emb, t, _ = _inputs(cfg, batch, T + (-T) % pt, device)  # 1.5 models: padded as sample() pads
    with torch.no_grad():
        return transformer_forward(model, x0, emb.expand(batch, -1, -1), t.to(device))


# --------------------------------------------------------------------------------------------
# FLOPs and dispatched ops (meta)


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts ATen ops reaching the backend (views and metadata-only ops excluded)."""

    SKIP = ("view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze",
            "slice", "select", "detach", "alias", "split", "chunk", "split_with_sizes", "unbind", "reshape",
            "_reshape_alias", "lift_fresh", "empty", "sym_size", "sym_stride", "sym_numel", "is_same_size")

    def __init__(self):
        super().__init__()
        self.n = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in self.SKIP:
            self.n += 1
            self.by_op[name] = self.by_op.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def count_flops(cfg, method: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model, params, batch, T = build_method(cfg, method, "meta")
    out = {"batch": batch, "latent_frames": T, "tokens": batch * (tokens(cfg, T) + cfg["max_text_seq_length"]),
           "trainable_params": sum(p.numel() for p in params)}
    if params:
        with FlopCounterMode(display=False) as fc:
            loss = _train_step(model, cfg, batch, T, "meta")
            loss.backward()
        out["flops"] = fc.get_total_flops()
    else:
        with FlopCounterMode(display=False) as fc:
            _sample_step(model, cfg, batch, T, "meta")
        out["flops"] = fc.get_total_flops()
        with _OpCounter() as oc:
            _sample_step(model, cfg, batch, T, "meta")
        out["dispatched_ops"] = oc.n
        out["dispatched_ops_top"] = dict(sorted(oc.by_op.items(), key=lambda kv: -kv[1])[:12])
    return out


# --------------------------------------------------------------------------------------------
# memory (fake tensors)


def _optimizer_bytes(params, kind: str, fused: bool) -> tuple[int, int]:
    """``(state_bytes, step_temporary_bytes)`` of the optimiser for ``params`` (fp32)."""
    n = [p.numel() for p in params]
    if kind == "adamw":
        state = 8 * sum(n)
        temp = 0 if fused else 4 * sum(n)  # foreach AdamW: one fp32 temporary per parameter (sqrt of exp_avg_sq)
        return state, temp
    # bitsandbytes AdamW8bit: uint8 exp_avg + exp_avg_sq with an fp32 absmax per block of 256 for tensors of
    # >= 4096 elements (min_8bit_size); fp32 states for smaller ones; the step works in place.
    state = sum(2 * k + 8 * math.ceil(k / 256) if k >= 4096 else 8 * k for k in n)
    return state, 0


def _fused_adamw_default() -> bool:
    """Whether the library's optimiser uses the fused AdamW kernel on CUDA (docs/performance.md)."""
    import inspect

    from dual_adapter import training

    return "fused" in inspect.getsource(training.make_optimizer)


class LiveMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the tensor storages alive, and their peak, over the ops run inside (fake tensors too).

    Every op output's storage is counted once until it is garbage-collected; ``track(tensors)`` adds
    tensors made before (weights)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def track(self, tensors):
        import weakref

        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in self.live:
                continue
            n = st.nbytes()
            self.live[key] = n
            self.current += n
            self.peak = max(self.peak, self.current)
            weakref.finalize(st, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        self.track(tree_leaves(out))
        return out


def measure_memory(cfg, method: str, cuda_check: bool = True) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    res = {}
    fm = FakeTensorMode(allow_non_fake_inputs=True)
    for dev in (("cuda", "cpu") if cuda_check else ("cpu",)):
        model, params, batch, T = build_method(cfg, method, dev, fm)
        with fm:
            weights = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
            mt = LiveMemory()
            mt.track(list(model.parameters()) + list(model.buffers()))
            ac = cuda_autocast() if dev == "cuda" else torch.autocast("cpu", dtype=torch.bfloat16)
            with mt, flash_sdpa():
                with ac:
                    loss = _train_step(model, cfg, batch, T, dev)
                import gc

                gc.collect()
                fwd_kept = mt.current - weights - sum(p.numel() * 4 for p in params)
                if dev == "cpu":
                    loss.backward()
                    gc.collect()
                    peak, after = mt.peak, mt.current
            res[f"fwd_kept_gib_{dev}"] = fwd_kept / GIB
            # the optimiser holds every adapter of DualReal (both phases train over a run), frozen or not
            opt_params = [p for p in model.parameters() if p.dtype == torch.float32] \
                if method.startswith("dualreal") else params
            del loss, model
    # the fake CPU run's peak with the activations the CUDA forward keeps
    adj = (res["fwd_kept_gib_cuda"] - res["fwd_kept_gib_cpu"]) * GIB if cuda_check else 0.0
    peak += adj
    after += 0
    params = opt_params
    trainable = sum(p.numel() for p in params)
    res.update(batch=batch, latent_frames=T, weights_gib=weights / GIB, trainable_params=trainable,
               trainable_gib=trainable * 4 / GIB, fwd_bwd_peak_gib=peak / GIB, after_backward_gib=after / GIB)
    fused = _fused_adamw_default()
    for kind, key in (("adamw", "peak_gib_adamw"), ("adamw8bit", "peak_gib_adamw8bit")):
        state, temp = _optimizer_bytes(params, kind, fused)
        res[f"optimizer_state_gib_{kind}"] = state / GIB
        res[key] = max(peak + state, after + state + temp) / GIB
    res["fused_adamw"] = fused
    return res


# --------------------------------------------------------------------------------------------


TRAIN = ("lora_r64", "tap_r32", "dualreal_motion_b1", "dualreal_identity_b1", "dualreal_motion_b3", "customttt_ttt")
SAMPLE = ("sampling_base", "sampling_dualreal")


def run_config(name: str, memory: bool = True, memory_entries=TRAIN, cuda_check=("dualreal_motion_b1",)) -> dict:
    cfg = CONFIGS[name]
    Fr, H, W = cfg["size"]
    T = latent_shape(cfg)[0]
    out = {"frames": Fr, "height": H, "width": W, "latent_frames": T, "visual_tokens": tokens(cfg, T),
           "text_tokens": cfg["max_text_seq_length"], "blocks": cfg["num_layers"], "width_d": _width(cfg)}
    for m in TRAIN + SAMPLE:
        t0 = time.perf_counter()
        r = count_flops(cfg, m)
        if memory and m in memory_entries and m != "dualreal_motion_b3":
            r.update(measure_memory(cfg, m, m in cuda_check))
        r["seconds"] = round(time.perf_counter() - t0, 1)
        out[m] = r
        print(name, m, json.dumps({k: v for k, v in r.items() if not isinstance(v, dict)}), flush=True)
    base = out["lora_r64"]["flops"]
    for m in TRAIN:
        out[m]["flops_ratio_vs_lora_r64"] = out[m]["flops"] / base
    b1 = out["dualreal_motion_b1"]
    acc = {} if "peak_gib_adamw" not in b1 else {k: v for k, v in b1.items() if k.startswith(("peak_gib", "fwd_bwd", "after_", "optimizer_", "weights",
                                                          "trainable"))}
    out["dualreal_motion_b3_accum3"] = dict(acc, batch=1, micro_batches=3, flops=3 * b1["flops"],
                                            flops_ratio_vs_lora_r64=3 * b1["flops"] / base,
                                            note="3 micro-batches of 1, gradients accumulated: peak of batch 1")
    out["sampling_flops_ratio"] = out["sampling_dualreal"]["flops"] / out["sampling_base"]["flops"]
    out["sampling_ops_ratio"] = out["sampling_dualreal"]["dispatched_ops"] / out["sampling_base"]["dispatched_ops"]
    if memory and "peak_gib_adamw" in out["dualreal_identity_b1"] and "peak_gib_adamw" in b1:
        pk = max(out["dualreal_motion_b1"]["peak_gib_adamw"], out["dualreal_identity_b1"]["peak_gib_adamw"])
        pk8 = max(out["dualreal_motion_b1"]["peak_gib_adamw8bit"], out["dualreal_identity_b1"]["peak_gib_adamw8bit"])
        out["targets_met"] = {
            "dualreal_b1_peak<=24GB_adamw": pk <= TARGETS["dualreal_b1_peak_gib_adamw"],
            "dualreal_b1_peak<=22GB_adamw8bit": pk8 <= TARGETS["dualreal_b1_peak_gib_adamw8bit"],
            "dualreal_motion_flops<=1.00x_lora_r64": b1["flops_ratio_vs_lora_r64"] <= 1.0,
            "sampling_flops<=1.01x": out["sampling_flops_ratio"] <= 1.01,
            "sampling_ops<=1.15x": out["sampling_ops_ratio"] <= 1.15,
        }
    return out


# --------------------------------------------------------------------------------------------
# Wan 2.x (diffusers WanTransformer3DModel with the released configs; scripts/convert_wan_to_diffusers.py)

_WAN_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, cross_attn_norm=True, eps=1e-6, freq_dim=256,
                   qk_norm="rms_norm_across_heads", text_dim=4096, added_kv_proj_dim=None)
WAN_CONFIGS = {
    # model kwargs, video size (frames, height, width), VAE (temporal, spatial) compression, UMT5 text tokens
    "wan2.1-1.3b": dict(model=dict(_WAN_COMMON, num_attention_heads=12, num_layers=30, ffn_dim=8960, in_channels=16,
                                   out_channels=16), size=(81, 480, 832), vae=(4, 8), text_tokens=512),
    "wan2.1-14b": dict(model=dict(_WAN_COMMON, num_attention_heads=40, num_layers=40, ffn_dim=13824, in_channels=16,
                                  out_channels=16), size=(81, 480, 832), vae=(4, 8), text_tokens=512),
    # Wan 2.2 TI2V-5B: its own VAE (16x spatial, 48 channels) at 121 x 704 x 1280
    "wan2.2-ti2v-5b": dict(model=dict(_WAN_COMMON, num_attention_heads=24, num_layers=30, ffn_dim=14336,
                                      in_channels=48, out_channels=48), size=(121, 704, 1280), vae=(4, 16),
                           text_tokens=512),
}
WAN_TRAIN = ("tap_r32", "lora_r64", "dualreal_motion_b1", "dualreal_identity_b1", "full_ft")
WAN_SAMPLE = ("sampling_base", "sampling_dualreal")
CARDS_GB = (24, 48, 80)
CARD_RESERVE_GB = 1.5  # CUDA context + allocator fragmentation kept free on a card (see the module notes)


def wan_latent_shape(cfg, frames=None) -> tuple[int, int, int, int]:
    """``(C, T, h, w)`` of the Wan latent of ``cfg['size']`` (``frames`` overrides the frame count)."""
    Fr, H, W = cfg["size"]
    tc, sc = cfg["vae"]
    Fr = frames or Fr
    return cfg["model"]["in_channels"], (Fr - 1) // tc + 1, H // sc, W // sc


def wan_tokens(cfg, T) -> int:
    _, _, h, w = wan_latent_shape(cfg)
    pt, ph, pw = cfg["model"]["patch_size"]
    return (T // pt) * (h // ph) * (w // pw)


def _new_meta_wan(cfg, dtype=torch.bfloat16):
    from diffusers import WanTransformer3DModel

    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device("meta"):
            t = WanTransformer3DModel(**cfg["model"])
    finally:
        torch.set_default_dtype(old)
    keep = tuple(getattr(t, "_keep_in_fp32_modules", None) or ())  # fp32 in a bf16 load, as from_pretrained keeps
    for n, prm in t.named_parameters():
        prm.data = prm.data.to(torch.float32 if any(k in n.split(".") for k in keep) else dtype)
    return t.eval().requires_grad_(False)


def build_wan_method(cfg, method: str, fp8: bool = False):
    """``(model, trainable_params, batch, latent_frames)`` of ``method`` on a meta Wan transformer."""
    from dual_adapter.lora import LoraSpec, inject_lora

    tr = _new_meta_wan(cfg)
    T = wan_latent_shape(cfg)[1]
    batch, params = 1, []
    if method in ("tap_r32", "lora_r64"):
        rank, mods = (32, ("to_q", "to_k")) if method == "tap_r32" else (64, ("to_q", "to_k", "to_v", "to_out.0"))
        names = [f"blocks.{i}.attn1.{m}" for i in range(len(tr.blocks)) for m in mods]
        params = inject_lora(tr, LoraSpec(rank=rank, alpha=float(rank), dropout=0.0), "default", target_names=names)
    elif method.startswith("dualreal") or method == "sampling_dualreal":
        # the pack's Wan DualReal patch itself (DA-blocks inside each Wan block, the StageBlender on Wan's
        # sinusoidal timestep features), as the trainer and the sampler apply it
        from dual_adapter.dualreal import DualRealPatch
        from dual_adapter.patches import patched_copy

        ad = _dualreal_adapters(tr)
        if method == "sampling_dualreal":
            ad = ad.to(torch.bfloat16).requires_grad_(False)  # inference: adapters in the model dtype
            batch = 2
        else:
            motion = "motion" in method
            params = _phase_trainable(ad, motion)
            if not motion:
                T = 1
        tr = patched_copy(tr, [DualRealPatch(ad)])
        if method != "dualreal_identity_b1":  # the identity phase runs without a reference embedding
            _dualreal_context(tr).reference = torch.zeros(1, 1, 1024, device="meta")
    elif method == "full_ft":
        tr.requires_grad_(True)
        params = list(tr.parameters())
    elif method == "sampling_base":
        batch = 2
    else:
        raise ValueError(method)
    if fp8:
        from dual_adapter.memory import store_fp8

        store_fp8(tr)
    if params:
        tr.enable_gradient_checkpointing()
    return tr, params, batch, T


def _wan_inputs(cfg, batch, T, device, dtype=torch.bfloat16):
    C, _, h, w = wan_latent_shape(cfg)
    x = torch.zeros(batch, C, T, h, w, device=device, dtype=dtype)
    emb = torch.zeros(batch, cfg["text_tokens"], cfg["model"]["text_dim"], device=device, dtype=dtype)
    t = torch.full((batch,), 500.0, device=device)
    return x, emb, t


def _wan_step(model, cfg, batch, T, device, train: bool):
    """One flow-matching training step's forward (``x_t = (1 - s) x0 + s eps``, target ``eps - x0``, MSE) or one
    CFG sampling step (batch 2 = conditional + unconditional in one call)."""
    x0, emb, t = _wan_inputs(cfg, batch, T, device)
    ctx = _dualreal_context(model)
    if ctx is not None and ctx.reference is not None:  # the reference embedding for W_cond, on the run's device
        ctx.reference = torch.zeros(1, 1, 1024, device=device)
    if not train:
        with torch.no_grad():
            return model(x0, t, emb, return_dict=False)[0]
    eps = torch.zeros_like(x0)
    s = 0.5
    pred = model((1 - s) * x0 + s * eps, t, emb, return_dict=False)[0]
    return ((pred.float() - (eps - x0).float()) ** 2).mean()


def _dualreal_context(model):
    """The DualReal patch's context of ``model``, or None when it carries none."""
    from dual_adapter.dualreal.patch import DABlock, find_context

    return find_context(model) if isinstance(model.blocks[0], DABlock) else None


def _dualreal_patch_params(model) -> list:
    """Every parameter of the DualReal patch on ``model`` (both phases' adapters and the StageBlender: the optimiser
    holds them all over a run)."""
    ctx = _dualreal_context(model)
    mods = [m for b in ctx.blocks for m in (b.adapters, b.controller) if m is not None]
    return [p for m in mods for p in m.parameters()]


def count_wan_flops(cfg, method: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model, params, batch, T = build_wan_method(cfg, method)
    out = {"batch": batch, "latent_frames": T, "tokens": batch * wan_tokens(cfg, T),
           "trainable_params": sum(p.numel() for p in params)}
    with FlopCounterMode(display=False) as fc:
        if params:
            _wan_step(model, cfg, batch, T, "meta", True).backward()
        else:
            _wan_step(model, cfg, batch, T, "meta", False)
    out["flops"] = fc.get_total_flops()
    if not params:
        with _OpCounter() as oc:
            _wan_step(model, cfg, batch, T, "meta", False)
        out["dispatched_ops"] = oc.n
    return out


def _block_bytes(model) -> list[int]:
    from dual_adapter.memory import frozen_bytes

    return [frozen_bytes([b]) for b in model.blocks]


def measure_wan_memory(cfg, method: str, fp8: bool = False) -> dict:
    """Peak memory of one training step of ``method`` on fake CPU tensors (bf16 autocast, CUDA's fp32
    LayerNorm, flash attention, gradient checkpointing), as :func:`measure_memory` does for CogVideoX, plus the
    optimiser state; ``fp8``: the frozen Linears stored in fp8 (the run itself is made with them)."""
    import gc

    from torch._subclasses.fake_tensor import FakeTensorMode

    fm = FakeTensorMode(allow_non_fake_inputs=True)
    model, params, batch, T = build_wan_method(cfg, method, fp8)
    with fm:
        model = model.to_empty(device="cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        weights = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad) + \
            sum(b.numel() * b.element_size() for b in model.buffers())
        mt = LiveMemory()
        mt.track(list(model.parameters()) + list(model.buffers()))
        with mt, flash_sdpa():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = _wan_step(model, cfg, batch, T, "cpu", True)
            gc.collect()
            fwd_kept = mt.current - weights - sum(p.numel() * p.element_size() for p in params)
            loss.backward()
            gc.collect()
            peak, after = mt.peak, mt.current
        blocks = _block_bytes(model)
        opt_params = _dualreal_patch_params(model) if method.startswith("dualreal") else params
        del loss
    trainable = sum(p.numel() for p in opt_params)
    res = dict(batch=batch, latent_frames=T, weights_gib=weights / GIB, trainable_params=trainable,
               fwd_kept_gib=fwd_kept / GIB, fwd_bwd_peak_gib=peak / GIB, after_backward_gib=after / GIB,
               block_frozen_gib=max(blocks) / GIB, blocks_frozen_gib=sum(blocks) / GIB)
    fused = _fused_adamw_default()
    for kind, key in (("adamw", "peak_gib_adamw"), ("adamw8bit", "peak_gib_adamw8bit")):
        state, temp = _optimizer_bytes(opt_params, kind, fused)
        res[f"optimizer_state_gib_{kind}"] = state / GIB
        res[key] = max(peak + state, after + state + temp) / GIB
    return res


def with_block_swap(mem: dict, n: int, blocks: int) -> dict:
    """The peaks of ``mem`` with the frozen weights of ``n`` of ``blocks`` (equal) blocks kept on the CPU: two of
    them are on the card at a time (the one running and the one copied ahead)."""
    per = mem["block_frozen_gib"]
    off = per * max(0, n - 2) if n < blocks else per * (blocks - 2)
    return {k: mem[k] - off for k in ("peak_gib_adamw", "peak_gib_adamw8bit")}


def swap_needed(mem: dict, blocks: int, card_gb: float) -> int | None:
    """Fewest blocks to swap for the 8-bit-AdamW peak to fit a ``card_gb`` GB card (less the reserve);
    None when even every block swapped does not fit."""
    room = (card_gb - CARD_RESERVE_GB) * 1e9 / GIB
    for n in range(0, blocks + 1):
        if with_block_swap(mem, n, blocks)["peak_gib_adamw8bit"] <= room:
            return n
    return None


def run_wan_config(name: str, memory: bool = True, entries=WAN_TRAIN) -> dict:
    cfg = WAN_CONFIGS[name]
    C, T, h, w = wan_latent_shape(cfg)
    L = cfg["model"]["num_layers"]
    out = {"frames": cfg["size"][0], "height": cfg["size"][1], "width": cfg["size"][2], "latent": [C, T, h, w],
           "visual_tokens": wan_tokens(cfg, T), "text_tokens": cfg["text_tokens"], "blocks": L,
           "width_d": cfg["model"]["num_attention_heads"] * cfg["model"]["attention_head_dim"]}
    for m in WAN_TRAIN + WAN_SAMPLE:
        t0 = time.perf_counter()
        r = count_wan_flops(cfg, m)
        if memory and m in entries:
            for fp8 in (False, True):
                mem = measure_wan_memory(cfg, m, fp8)
                mem["blocks_to_swap"] = {f"{gb}GB": swap_needed(mem, L, gb) for gb in CARDS_GB}
                mem["all_swapped"] = with_block_swap(mem, L, L)
                r["fp8" if fp8 else "bf16"] = mem
        r["seconds"] = round(time.perf_counter() - t0, 1)
        out[m] = r
        print(name, m, json.dumps({k: v for k, v in r.items() if not isinstance(v, dict)}), flush=True)
    base = out["lora_r64"]["flops"]
    for m in WAN_TRAIN:
        out[m]["flops_ratio_vs_lora_r64"] = out[m]["flops"] / base
    out["sampling_flops_ratio"] = out["sampling_dualreal"]["flops"] / out["sampling_base"]["flops"]
    out["sampling_ops_ratio"] = out["sampling_dualreal"]["dispatched_ops"] / out["sampling_base"]["dispatched_ops"]
    tr = _new_meta_wan(cfg)
    blocks = _block_bytes(tr)
    out["frozen_weights_gib"] = {"bf16": sum(p.numel() * 2 for p in tr.parameters()) / GIB}
    from dual_adapter.memory import store_fp8

    store_fp8(tr)
    out["frozen_weights_gib"]["fp8"] = sum(p.numel() * p.element_size() for p in tr.parameters()) / GIB + \
        sum(b.numel() * b.element_size() for b in tr.buffers()) / GIB
    # block swap's traffic per training step with gradient checkpointing (each swapped block copied in for the
    # forward and again for the recompute) and per sampling step (once), per swapped block
    out["swap_bytes_per_block"] = {"bf16": blocks[0], "fp8": _block_bytes(tr)[0]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="5b,2b,1.5-5b", help=f"comma-separated from {sorted(CONFIGS)}")
    p.add_argument("--no-memory", action="store_true", help="FLOPs and op counts only (seconds)")
    p.add_argument("--memory-configs", default=None, help="configs whose memory is measured (default: all given)")
    p.add_argument("--memory-entries", default=",".join(TRAIN), help="training entries whose memory is measured")
    p.add_argument("--cuda-check", default="dualreal_motion_b1",
                   help="entries whose forward is also run on fake CUDA tensors under CUDA autocast ('all' or a list)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/scale.json; Wan configs: "
                   "scale_wan.json)")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.config.split(",") if c.strip()]
    if names and all(c in WAN_CONFIGS for c in names):
        return _main_wan(args, names, p)
    for c in names:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}; choose from {sorted(CONFIGS)} or (not mixed) {sorted(WAN_CONFIGS)}")
    args.out = args.out or str(ROOT / "benchmarks" / "results" / "scale.json")
    t0 = time.perf_counter()
    mem_cfgs = names if args.memory_configs is None else [c.strip() for c in args.memory_configs.split(",")]
    entries = tuple(e.strip() for e in args.memory_entries.split(","))
    check = TRAIN if args.cuda_check == "all" else tuple(e.strip() for e in args.cuda_check.split(","))
    results = {n: run_config(n, not args.no_memory and n in mem_cfgs, entries, check) for n in names}
    doc = {"benchmark": "scale", "torch": torch.__version__, "note": __doc__.split("\n\n")[1].strip(),
           "gib": "2**30 bytes (targets in GB converted)", "targets": TARGETS,
           "seconds": round(time.perf_counter() - t0, 1), "results": results}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def _main_wan(args, names, p) -> int:
    t0 = time.perf_counter()
    mem_cfgs = names if args.memory_configs is None else [c.strip() for c in args.memory_configs.split(",")]
    entries = WAN_TRAIN if args.memory_entries == ",".join(TRAIN) else \
        tuple(e.strip() for e in args.memory_entries.split(","))
    results = {n: run_wan_config(n, not args.no_memory and n in mem_cfgs, entries) for n in names}
    doc = {"benchmark": "scale_wan", "torch": torch.__version__, "note": WAN_NOTE, "gib": "2**30 bytes",
           "cards_gb": CARDS_GB, "card_reserve_gb": CARD_RESERVE_GB, "seconds": round(time.perf_counter() - t0, 1),
           "results": results}
    path = Path(args.out or ROOT / "benchmarks" / "results" / "scale_wan.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


WAN_NOTE = ("Wan 2.1 / 2.2 transformers (diffusers WanTransformer3DModel, released configs) counted on meta / fake "
            "CPU tensors: one flow-matching training step (batch 1, bf16 autocast, gradient checkpointing, CUDA's "
            "fp32 LayerNorm, flash attention) per method, bf16 and fp8 frozen weights (the fake run made with them); "
            "block swap's peaks computed from the run (two swapped blocks on the card at a time); blocks_to_swap: "
            "fewest blocks for the 8-bit-AdamW peak to fit the card less card_reserve_gb; DualReal through the "
            "pack's Wan DualReal patch (DA-blocks inside each Wan block, StageBlender on freq_dim); full_ft: bf16 weights and gradients, "
            "optimiser state on every parameter, no fp32 master copy.")


if __name__ == "__main__":
    raise SystemExit(main())
