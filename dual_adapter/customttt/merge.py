"""CustomTTT's test-time-training merge, one definition for every backbone (docs/customttt.md).

Two teachers (base + one LoRA, each with its own prompt) denoise ``f`` sampler steps from Gaussian noise to
reference latents; the student (base + both LoRAs, all LoRA weights trainable) is then trained for a few steps
under the combined prompt on the backbone's denoising loss toward the references, ``L = w_a L_appearance +
w_m L_motion``. The result is one merged LoRA (:func:`ttt_merge`, written as named steps). Every choice the paper
leaves open is a field of :class:`~dual_adapter.customttt.config.TTTConfig` with a documented default.

What differs between backbones comes from the backbone: its sampler (:func:`dual_adapter.sampling.sample`), its
clean-latent estimate (:meth:`~dual_adapter.backbones.base.VideoBackbone.x0_from_prediction`) and its training
objective (:meth:`~dual_adapter.backbones.base.VideoBackbone.training_loss`: v-prediction on CogVideoX, flow
matching on Wan, epsilon on the U-Nets).

Merging two LoRAs into one file (:func:`merge_loras`): modules touched by one LoRA keep its ``(A, B)``; a
module touched by both gets the rank-concatenation ``A = [A_1; A_2]`` (dim 0), ``B = [s_1 B_1, s_2 B_2]``
(dim 1) with each scale ``s = strength * alpha / rank`` folded into ``B``, so that ``B A = s_1 B_1 A_1 + s_2 B_2
A_2`` exactly (the file's alpha equals its rank: scale 1).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from ..seeds import check_seed, derived_seed, seed_generator
from .config import REFERENCE_ALIASES, REFERENCES, Callback, TTTConfig, TTTResult

__all__ = ["merge_loras", "teacher_reference", "predicted_x0", "student_mode", "ttt_merge", "MergeInputs",
           "check_merge_inputs", "teacher_references", "build_student", "TTTObjective", "run_ttt", "merged_file"]


def merge_loras(loras: Sequence, strengths: Sequence[float] | None = None, metadata: Mapping | None = None):
    """Merge LoRAs into one diffusers-format :class:`~dual_adapter.lora.LoraFile` that applies exactly
    their sum (what stacking them with :class:`~dual_adapter.lora.LoraPatch` at these strengths does).

    Per module: one LoRA -> ``(A, s B)``; several -> ``A = cat([A_1, A_2, ...], dim 0)``,
    ``B = cat([s_1 B_1, s_2 B_2, ...], dim 1)``, ``s_k = strength_k * alpha_k / rank_k``, so
    ``B A = sum_k s_k B_k A_k`` and the merged rank of that module is the sum of the ranks. The file's
    alpha equals each module's rank (scale 1, the convention of :func:`dual_adapter.lora.save_lora`).
    Tensors are fp32; keys take the LoRAs' component prefix (``transformer`` on the DiTs, ``unet`` on the U-Nets).

    Raises:
        DualAdapterError: no LoRAs, non-LoraFile inputs, strengths of the wrong length, LoRAs of different
            components (a DiT and a U-Net LoRA), or two LoRAs whose shapes for the same module differ (trained on
            different models).
    """
    from ..lora import LoraFile

    loras = list(loras)
    if not loras:
        raise DualAdapterError("merge_loras needs at least one LoRA")
    for i, lf in enumerate(loras):
        if not isinstance(lf, LoraFile):
            raise DualAdapterError(f"LoRA {i}: expected a LoraFile (load_lora / train_lora), got {type(lf).__name__}")
    strengths = [1.0] * len(loras) if strengths is None else [float(s) for s in strengths]
    if len(strengths) != len(loras):
        raise DualAdapterError(f"strengths: {len(strengths)} values for {len(loras)} LoRAs")
    prefixes = sorted({lf.prefix for lf in loras})
    if len(prefixes) > 1:
        raise DualAdapterError(f"cannot merge LoRAs of different models: their keys start with {prefixes}")
    prefix = prefixes[0]
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for lf, st in zip(loras, strengths):
        ranks, alphas = lf.ranks, lf.alphas
        for mod in lf.modules:
            a = lf.tensor(mod, "A").detach().float().cpu()
            b = lf.tensor(mod, "B").detach().float().cpu()
            s = st * float(alphas.get(mod, ranks[mod])) / ranks[mod]
            prev = parts.setdefault(mod, [])
            if prev and (prev[0][0].shape[1] != a.shape[1] or prev[0][1].shape[0] != b.shape[0]):
                raise DualAdapterError(f"cannot merge: {mod} maps {a.shape[1]} -> {b.shape[0]} in {lf.name!r} but "
                                       f"{prev[0][0].shape[1]} -> {prev[0][1].shape[0]} in another LoRA "
                                       f"(trained on different models)")
            prev.append((a, b * s))
    sd: dict[str, torch.Tensor] = {}
    for mod, ab in sorted(parts.items()):
        sd[f"{prefix}.{mod}.lora_A.weight"] = torch.cat([a for a, _ in ab], 0).contiguous()
        sd[f"{prefix}.{mod}.lora_B.weight"] = torch.cat([b for _, b in ab], 1).contiguous()
    md = dict(metadata or {})
    ranks = {mod: int(sum(a.shape[0] for a, _ in ab)) for mod, ab in parts.items()}
    return LoraFile.from_state_dict(sd, md, alphas={m: float(r) for m, r in ranks.items()})


class _StopSampling(Exception):
    pass


def predicted_x0(backbone, prediction: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate ``x0`` from a denoiser output at ``x_t`` (``abar = alphas_cumprod[t]``, a scalar
    or broadcastable): ``sqrt(abar) x_t - sqrt(1 - abar) v`` for v-prediction (CogVideoX),
    ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` for epsilon-prediction (the U-Nets)."""
    abar = abar.to(x_t.device, torch.float32)
    if getattr(backbone, "prediction_type", "v_prediction") == "epsilon":
        return (x_t - (1 - abar).sqrt() * prediction) / abar.sqrt()
    return abar.sqrt() * x_t - (1 - abar).sqrt() * prediction


def student_mode(model: nn.Module, dropout: float) -> None:
    """The TTT student's mode, the same on every backbone: the base in eval mode (no dropout of its own), LoRA
    dropout ``dropout`` active when > 0."""
    from ..lora import lora_modules

    model.eval()
    if dropout > 0:
        for m in lora_modules(model).values():
            for d in m.lora_dropout.values():
                d.train(True)


@torch.no_grad()
def teacher_reference(bundle, lora, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None = None, *,
                      teacher_steps: int = 5, teacher_schedule: int = 25, scheduler: str = "ddim", cfg: float = 6.0,
                      seed: int = 0, num_frames: int | None = None, height: int | None = None,
                      width: int | None = None, reference: str = "x0_pred", patches: Sequence = (),
                      callback: Callback | None = None) -> tuple[torch.Tensor, int]:
    """A teacher's reference latent (CustomTTT sup): base + ``lora`` denoises the first ``teacher_steps`` of a
    ``teacher_schedule``-step schedule from Gaussian noise ``seed`` with CFG. One definition for every backbone
    (CogVideoX, Wan, and the U-Nets through :func:`dual_adapter.customttt.unet.teacher_reference`;
    docs/customttt.md).

    Uses :func:`dual_adapter.sampling.sample` and stops it after ``teacher_steps`` steps: ``z_f`` is the latent
    after step ``f``, which sits at ``t_f = timesteps[f]``, the timestep the sampler would denoise it at next
    (DDIM 25 on a 1000-step schedule: ``f = 5`` gives ``t_f = 761`` with leading spacing, 799 with trailing;
    on Wan ``t_f = 1000 sigma_f`` of its flow schedule, ``ddim`` taken as its Euler sampler).

    Args:
        bundle: a CogVideoX bundle or any :class:`~dual_adapter.backbones.base.VideoBackbone`.
        lora: a :class:`~dual_adapter.lora.LoraFile` or None (the base model as teacher; U-Net LoRAs come in
            ``patches``).
        prompt_embeds, negative_embeds: ``[1, L, D]`` text embeddings.
        reference: ``"x0_pred"`` (default): the teacher's clean estimate at ``z_f``, one extra guided teacher
            call at ``(z_f, t_f)`` turned into ``x0`` by the backbone's
            :meth:`~dual_adapter.backbones.base.VideoBackbone.x0_from_prediction` (``sqrt(abar) z_f - sqrt(1 -
            abar) v`` for v-prediction, ``(z_f - sqrt(1 - abar) eps) / sqrt(abar)`` for epsilon, ``z_f - sigma v``
            for flow matching); or
            ``"z_f_renoised"`` / ``"z_f_as_x0"`` / ``"z_f"`` (the latent after ``f`` steps itself; see
            :class:`TTTConfig` for how each is used).

    Returns:
        ``(z, t_f)``: the reference in the scaled latent space and the backbone's layout (CogVideoX, Wan
        ``[1, F, C, h, w]``, U-Nets ``[1, C, F, h, w]``) and the timestep it sits at: ``t_f`` for the ``z_f``
        references, 0 for ``x0_pred`` (clean) and when the schedule was run to the end.

    Raises:
        DualAdapterError: bad steps / schedule / sizes.
    """
    from ..backbones import as_backbone
    from ..lora import LoraPatch
    from ..patches import patched_copy
    from ..sampling import sample

    bb = as_backbone(bundle)

    if not 1 <= int(teacher_steps) <= int(teacher_schedule):
        raise DualAdapterError(f"teacher_steps={teacher_steps} must be between 1 and teacher_schedule={teacher_schedule}")
    reference = REFERENCE_ALIASES.get(reference, reference)
    if reference not in REFERENCES:
        raise DualAdapterError(f"reference={reference!r}: expected one of {REFERENCES}")
    pt = list(patches or ()) + ([LoraPatch(lora, 1.0, name="teacher")] if lora is not None else [])
    f = int(teacher_steps)
    box: dict = {}

    def cb(step, total, info):
        if callback is not None:
            callback(step, f, {"phase": "teacher"})
        if step >= f:
            box["z"] = info["latents"]
            raise _StopSampling

    out = None
    try:
        out = sample(getattr(bb, "bundle", bundle), prompt_embeds, negative_embeds, num_frames=num_frames, height=height, width=width,
                     steps=int(teacher_schedule), cfg=float(cfg), seed=int(seed), scheduler=scheduler, patches=pt,
                     callback=cb)
    except _StopSampling:
        pass
    z = box.get("z", out)
    sch = bb.make_scheduler(scheduler)
    sch.set_timesteps(int(teacher_schedule))
    t_f = int(sch.timesteps[f]) if f < len(sch.timesteps) else 0
    # the sampler pads 1.5 models' latents at the front while it runs; drop that padding
    f_dim = bb.latent_layout.index("F")
    T = bb.latent_frames(num_frames or bb.default_size[0])
    extra = max(0, z.shape[f_dim] - T)
    z_out = z.narrow(f_dim, extra, z.shape[f_dim] - extra).detach()
    if reference == "x0_pred" and t_f > 0:
        with torch.no_grad(), bb.use("denoiser") as base:
            model = patched_copy(base, pt)
            t = sch.timesteps[f: f + 1].to(z.device)
            if cfg > 1.0:
                neg = negative_embeds if negative_embeds is not None else None
                if neg is None:
                    neg = bb.encode_prompt("")
                text = torch.cat([neg.to(z.device, z.dtype), prompt_embeds.to(z.device, z.dtype)])
                v_u, v_c = bb.predict(torch.cat([z, z]), t.expand(2), text, denoiser=model).float().chunk(2)
                v = v_u + float(cfg) * (v_c - v_u)
            else:
                v = bb.predict(z, t, prompt_embeds.to(z.device, z.dtype), denoiser=model).float()
        x0 = bb.x0_from_prediction(sch, v, z.float(), sch.timesteps[f])
        z_out = x0.narrow(f_dim, extra, x0.shape[f_dim] - extra).to(z.dtype)
        t_f = 0
    return z_out, t_f


def _renoised_loss(model, sched, z_f: torch.Tensor, t_f: int, prompt_embeds: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor) -> torch.Tensor:
    """``reference="z_f_renoised"`` (see :class:`TTTConfig`): ``z_f`` (the backbone's layout) is a sample at ``t_f``;
    re-noise it forward to ``t > t_f`` (``q(x_t | x_{t_f})``), then the student's DDIM step from ``t`` back to
    ``t_f`` should give ``z_f``. Returns the per-sample loss ``[1]``."""
    from ..backbones import backbone_for

    bb = backbone_for(model)
    z = bb.pad_latent_frames(z_f, model).float()
    e = bb.pad_latent_frames(eps, model).to(z.device, torch.float32)
    ac = sched.alphas_cumprod.to(z.device, torch.float32)
    t = t.to(z.device).long()
    a_t, a_f = ac[t].view(-1, *([1] * (z.ndim - 1))), ac[int(t_f)]
    r = a_t / a_f
    x_t = r.sqrt() * z + (1 - r).sqrt() * e
    pred = bb.predict(x_t.to(z_f.dtype), t, prompt_embeds, denoiser=model).float()
    x0 = predicted_x0(bb, pred, x_t, a_t)
    eps_hat = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    z_hat = a_f.sqrt() * x0 + (1 - a_f).sqrt() * eps_hat
    return ((z_hat - z) ** 2).flatten(1).mean(1)


def _inject_trainable(model, lf, name: str, dropout: float) -> list[nn.Parameter]:
    """Add LoRA file ``lf`` to ``model`` as trainable peft adapter ``name`` with its weights and scales."""
    from ..lora import LoraSpec, check_compatible, inject_lora, lora_modules

    check_compatible(lf, model)
    ranks, alphas = lf.ranks, lf.alphas
    spec = LoraSpec(rank=int(lf.rank), alpha=float(lf.alpha), dropout=float(dropout), targets=list(lf.targets) or None,
                    blocks=None)
    params = inject_lora(model, spec, name, trainable=True, target_names=lf.modules,
                         rank_pattern={m: r for m, r in ranks.items() if r != lf.rank},
                         alpha_pattern={m: a for m, a in alphas.items() if a != lf.alpha})
    layers = lora_modules(model, name)
    with torch.no_grad():
        for mod in lf.modules:
            m = layers[mod]
            for half, d in (("A", m.lora_A), ("B", m.lora_B)):
                w = d[name].weight
                w.copy_(lf.tensor(mod, half).to(w.device, w.dtype))
            want = alphas[mod] / ranks[mod]
            if abs(m.scaling[name] - want) > 1e-6 * max(1.0, abs(want)):
                raise DualAdapterError(f"internal: LoRA scale of {mod} is {m.scaling[name]}, expected {want}")
    return params


def _adapter_file(model, name: str):
    """The peft adapter ``name`` of ``model`` as a LoraFile with its scale folded into lora_B (alpha = rank)."""
    from ..lora import LoraFile, lora_modules, lora_state_dict

    sd = lora_state_dict(model, name, fold=True)  # keys with the backbone's prefix (transformer / unet)
    layers = lora_modules(model, name)
    return LoraFile.from_state_dict(sd, {}, alphas={mod: float(m.r[name]) for mod, m in layers.items()})


def _merged_metadata(merged, bb, *, appearance, motion, prompts: dict, config: TTTConfig, steps_done: int,
                     completed: bool, base_model: str | None) -> dict:
    from ..lora import LoraSpec, lora_metadata

    spec = LoraSpec(rank=int(merged.rank), alpha=float(merged.rank), dropout=0.0,
                    targets=list(merged.targets) or ["attn1.to_q"], blocks=merged.blocks)

    def src(lf):
        return dict(file=lf.path, rank=int(lf.rank), targets=list(lf.targets), blocks=lf.blocks,
                    modules=len(lf.modules))

    cfg = asdict(config)
    cfg["renoise_timesteps"] = list(cfg["renoise_timesteps"])
    cfg["betas"] = list(cfg["betas"])
    return lora_metadata(spec, bb.denoiser, base_model=base_model, method="CustomTTT", preset="custom",
                         prompt=prompts["combined"], prompts=prompts,
                         sources={"appearance": src(appearance), "motion": src(motion)},
                         merge="rank-concatenation (A: cat dim 0, B: cat dim 1, scales folded into B)",
                         ttt=dict(cfg, steps_done=int(steps_done), completed=bool(completed)))


# --------------------------------------------------------------------------------------------
# the TTT merge, step by step: inputs, teacher references, student, objective, loop, merged file


@dataclass
class MergeInputs:
    """Step 1 of :func:`ttt_merge`: the checked inputs (backbone, LoRAs, prompts and their embeddings, sizes)."""

    bb: object
    config: TTTConfig
    loras: dict
    prompts: dict
    embeds: dict
    size: tuple[int, int, int]
    appearance_frames: int
    patches: list


def check_merge_inputs(bundle, appearance, motion, *, appearance_prompt: str, motion_prompt: str, prompt: str,
                       config: TTTConfig | None, patches: Sequence = ()) -> MergeInputs:
    """Check the LoRAs, prompts, sizes and options against the model, then encode the four prompts (combined,
    appearance, motion, negative) in one batch.

    Raises:
        DualAdapterError: see :func:`ttt_merge`.
    """
    from ..backbones import as_backbone
    from ..lora import LoraFile, check_compatible

    bb = as_backbone(bundle)  # the model, through the backbone interface
    config = copy.deepcopy(config) if config is not None else TTTConfig()
    sched = bb.noise_scheduler()
    config.validate(int(sched.config.num_train_timesteps))
    if config.reference == "z_f_renoised" and not hasattr(sched, "alphas_cumprod"):
        raise DualAdapterError(f"reference='z_f_renoised' re-noises along a DDPM schedule (alphas_cumprod); "
                               f"{getattr(bb, 'family', bb.kind)} trains on flow matching: use reference='x0_pred' "
                               f"(the default) or 'z_f_as_x0'")
    loras = {}
    for what, lf in (("appearance", appearance), ("motion", motion)):
        if not isinstance(lf, LoraFile):
            raise DualAdapterError(f"{what} LoRA: expected a LoraFile (from load_lora / train_lora), got "
                                   f"{type(lf).__name__}")
        check_compatible(lf, bb.denoiser)
        loras[what] = lf.with_prefix(bb.lora_prefix)  # the denoiser's component name (transformer / unet)
    for what, p in (("appearance_prompt", appearance_prompt), ("motion_prompt", motion_prompt), ("prompt", prompt)):
        if not isinstance(p, str) or not p.strip():
            raise DualAdapterError(f"{what} must be a non-empty string")
    f0, h0, w0 = bb.default_size
    nf, h, w = int(config.num_frames or f0), int(config.height or h0), int(config.width or w0)
    bb.check_video_size(nf, h, w)
    nf_a = int(config.appearance_frames or nf)
    bb.check_video_size(nf_a, h, w)
    if config.steps > 0:  # fail on a missing optimiser package before the teachers run
        from ..training import make_optimizer

        make_optimizer([nn.Parameter(torch.zeros(1))], config.train_config())
    prompts = {"appearance": appearance_prompt, "motion": motion_prompt, "combined": prompt,
               "negative": config.negative_prompt}
    emb = bb.encode_prompt([prompt, appearance_prompt, motion_prompt, config.negative_prompt])
    embeds = {"combined": emb[0:1], "appearance": emb[1:2], "motion": emb[2:3], "negative": emb[3:4]}
    return MergeInputs(bb, config, loras, prompts, embeds, (nf, h, w), nf_a, list(patches or ()))


def teacher_references(inp: MergeInputs, noise_seed: int, callback: Callback | None = None,
                       total: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """Step 2: each teacher (base + its LoRA under its own prompt) runs ``f`` sampler steps from noise
    ``noise_seed`` (both the same noise with ``shared_teacher_noise``, else ``derived_seed(noise_seed, k)``):
    :func:`teacher_reference`. Returns ``({"appearance": z, "motion": z}, t_f)``; ``callback`` sees the
    teachers' ``2 f`` steps (of ``total``)."""
    c = inp.config
    f = int(c.teacher_steps)
    nf, h, w = inp.size
    refs: dict[str, torch.Tensor] = {}
    t_ref = 0
    for k, (name, frames) in enumerate((("appearance", inp.appearance_frames), ("motion", nf))):
        seed = noise_seed if c.shared_teacher_noise else derived_seed(noise_seed, k)
        cb = None if callback is None else _TeacherProgress(callback, k * f, total, f"teacher_{name}")
        refs[name], t_ref = teacher_reference(
            inp.bb, inp.loras[name], inp.embeds[name], inp.embeds["negative"], teacher_steps=f,
            teacher_schedule=c.teacher_schedule, scheduler=c.teacher_scheduler, cfg=float(c.teacher_cfg), seed=seed,
            num_frames=frames, height=h, width=w, reference=c.reference, patches=inp.patches, callback=cb)
    return refs, t_ref


class _TeacherProgress:
    """A teacher's step ``s`` reported as step ``offset + s`` of the whole merge."""

    def __init__(self, callback: Callback, offset: int, total: int, phase: str):
        self.callback, self.offset, self.total, self.phase = callback, offset, total, phase

    def __call__(self, s, _total, info=None):
        self.callback(self.offset + s, self.total, {"phase": self.phase})


def build_student(inp: MergeInputs) -> tuple[nn.Module, list[nn.Parameter]]:
    """Step 3: a weight-sharing copy of the denoiser (under the patches) with both LoRAs as separate trainable
    peft adapters ``appearance`` and ``motion`` (their weights and scales; the base frozen and never modified),
    in :func:`student_mode`."""
    from ..patches import shallow_copy_module

    c = inp.config
    model = shallow_copy_module(inp.bb.denoiser)
    for p in inp.patches:
        p.apply(model)
    params = _inject_trainable(model, inp.loras["appearance"], "appearance", c.dropout)
    params += _inject_trainable(model, inp.loras["motion"], "motion", c.dropout)
    student_mode(model, c.dropout)
    if c.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing") and c.steps > 0:
        model.enable_gradient_checkpointing()
    return model, params


class TTTObjective:
    """Step 4: the student's loss ``L = w_a L_appearance + w_m L_motion`` under the combined prompt (see
    :class:`TTTConfig` for each ``reference``); one draw of the re-noising timesteps and noise per call."""

    def __init__(self, inp: MergeInputs, model: nn.Module, refs: dict, t_ref: int):
        c = inp.config
        self.inp, self.model, self.refs, self.t_ref = inp, model, refs, t_ref
        self.sched = inp.bb.noise_scheduler()
        self.lo, self.hi = (int(v) for v in c.renoise_timesteps)
        self.weights = {"appearance": float(c.w_appearance), "motion": float(c.w_motion)}
        self.renoised = c.reference == "z_f_renoised" and bool(t_ref)
        if self.renoised and max(self.lo, int(t_ref) + 1) >= self.hi:
            raise DualAdapterError(f"reference='z_f_renoised': z_f sits at t_f={t_ref}, so renoise_timesteps="
                                   f"{c.renoise_timesteps} leaves no timestep above it; raise t_hi")

    def loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """``(L, {"loss_appearance": .., "loss_motion": ..})`` at one draw from ``gen``."""
        from ..training import diffusion_loss

        model, sched, text = self.model, self.sched, self.inp.embeds["combined"]
        names = [n for n in ("appearance", "motion") if self.weights[n] > 0]
        x0s = [self.refs[n] for n in names]
        lo = max(self.lo, int(self.t_ref) + 1) if self.renoised else self.lo
        tt = torch.randint(lo, self.hi, (len(names),), generator=gen)
        eps = [torch.randn(x.shape, generator=gen, dtype=torch.float32) for x in x0s]
        if self.renoised:
            per = torch.cat([_renoised_loss(model, sched, x, int(self.t_ref), text, tt[i: i + 1], eps[i])
                             for i, x in enumerate(x0s)])
        elif len(x0s) == 2 and x0s[0].shape == x0s[1].shape:  # one batched forward
            per = diffusion_loss(model, sched, torch.cat(x0s), text, timesteps=tt, noise=torch.cat(eps), reduce=False)
        else:
            per = torch.cat([diffusion_loss(model, sched, x, text, timesteps=tt[i: i + 1], noise=eps[i], reduce=False)
                             for i, x in enumerate(x0s)])
        loss = sum(self.weights[n] * per[i] for i, n in enumerate(names))
        return loss, {f"loss_{n}": float(per[i].detach()) for i, n in enumerate(names)}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The mean combined and per-concept losses over ``eval_draws`` fixed draws."""
        c = self.inp.config
        g = seed_generator(c.seed, 7_654_321)
        acc: dict[str, float] = {}
        for _ in range(int(c.eval_draws)):
            loss, info = self.loss(g)
            acc["loss"] = acc.get("loss", 0.0) + float(loss) / c.eval_draws
            for k, v in info.items():
                acc[k] = acc.get(k, 0.0) + v / c.eval_draws
        return acc

    def step(self, step: int, gen: torch.Generator):
        """One TTT step's loss (the shared loop's ``step_fn``); with ``regenerate_references`` both teachers run
        again first, from new noise."""
        c = self.inp.config
        if c.regenerate_references and step > 0:
            self.refs, self.t_ref = teacher_references(self.inp, derived_seed(c.teacher_seed, 1000 * step))
        return self.loss(gen)


class _Checkpoints:
    """Rewrites the merged LoRA and the student's state file beside it (the shared loop's ``on_checkpoint``)."""

    def __init__(self, path: Path | None, make_file, final_step: int):
        self.path, self.make_file, self.final_step = path, make_file, final_step

    def __call__(self, step, optimizer, lr_schedule, losses):
        from ..lora import train_state_path
        from ..training import save_train_state

        if self.path is not None:
            self.make_file(step, step >= self.final_step).save(self.path, overwrite=True)
            save_train_state(train_state_path(self.path), optimizer, lr_schedule, step,
                             extra={"losses": list(losses)})


class _LoopProgress:
    """A TTT step reported after the teachers' ``offset`` steps."""

    def __init__(self, callback: Callback | None, offset: int, total: int):
        self.callback, self.offset, self.total = callback, offset, total

    def __call__(self, step, tot, rec):
        if self.callback is not None:
            self.callback(self.offset + step, self.total, dict(rec, phase="ttt"))


def _resume_state(ckpt: Path | None, resume: bool):
    """``(state file, losses so far)`` of the run to resume, or ``(None, [])``."""
    from ..lora import train_state_path

    if not resume:
        return None, []
    if ckpt is None or not train_state_path(ckpt).is_file():
        raise DualAdapterError(f"nothing to resume: no state file "
                               f"{str(train_state_path(ckpt)) if ckpt is not None else '(no checkpoint_path)'!r}")
    from ..io import read_safetensors_metadata

    state = train_state_path(ckpt)
    return state, list((read_safetensors_metadata(state).get("extra") or {}).get("losses") or [])


def run_ttt(inp: MergeInputs, objective: TTTObjective, params, checkpoint: _Checkpoints, *, callback=None,
            resume: bool = False, preview=None, offset: int = 0, total: int = 0):
    """Step 5: the TTT loop (:func:`dual_adapter.training.train_loop`), with the text encoder and the VAE moved
    off the accelerator meanwhile (prompts are encoded, the teachers never decode) and the objective measured
    before and after when ``eval_draws > 0``. Returns ``(TrainResult, eval dict)``."""
    from ..training import train_loop

    bb, c = inp.bb, inp.config
    cfg = c.train_config()
    resume_state, start_losses = _resume_state(checkpoint.path, resume)
    previewer = None
    if preview is not None and preview.enabled and c.steps > 0:
        from ..previews import Previewer, backbone_renderer

        pemb = bb.encode_prompt(preview.prompt) if preview.prompt else inp.embeds["combined"]
        previewer = Previewer(preview, backbone_renderer(bb, pemb, preview, height=inp.size[1], width=inp.size[2],
                                                         negative_embeds=inp.embeds["negative"])).bind(objective.model)
    dev = next(bb.denoiser.parameters()).device
    ev: dict = {}
    with bb.released("text_encoder", "vae", when=c.steps > 0), torch.inference_mode(False), torch.enable_grad():
        if c.eval_draws and c.steps > 0:
            ev["before"] = objective.evaluate()
        result = train_loop([{"params": params}], objective.step, cfg, device_type=dev.type,
                            callback=_LoopProgress(callback, offset, total), on_checkpoint=checkpoint,
                            resume_state=resume_state, start_losses=start_losses, preview=previewer)
        if c.eval_draws and c.steps > 0:
            ev["after"] = objective.evaluate()
    return result, ev


def merged_file(inp: MergeInputs, model: nn.Module, steps_done: int, completed: bool, base_model: str | None):
    """Step 6: both trained adapters merged into one LoRA (:func:`merge_loras`: rank concatenation where they share
    a module, scales folded into B), so applying it reproduces the student exactly; metadata records the
    sources, prompts and settings."""
    merged = merge_loras([_adapter_file(model, "appearance"), _adapter_file(model, "motion")])
    merged.metadata = _merged_metadata(merged, inp.bb, appearance=inp.loras["appearance"],
                                       motion=inp.loras["motion"], prompts=inp.prompts, config=inp.config,
                                       steps_done=steps_done, completed=completed, base_model=base_model)
    return merged


class _MergedFile:
    """``make_file(steps_done, completed)`` for the checkpoints: :func:`merged_file` of the student."""

    def __init__(self, inp: MergeInputs, model: nn.Module, base_model: str | None):
        self.inp, self.model, self.base_model = inp, model, base_model

    def __call__(self, steps_done: int, completed: bool):
        return merged_file(self.inp, self.model, steps_done, completed, self.base_model)


def ttt_merge(
    bundle,
    appearance,
    motion,
    *,
    appearance_prompt: str,
    motion_prompt: str,
    prompt: str,
    config: TTTConfig | None = None,
    patches: Sequence = (),
    callback: Callback | None = None,
    checkpoint_path: str | Path | None = None,
    base_model: str | None = None,
    keep_student: bool = False,
    resume: bool = False,
    preview=None,
) -> TTTResult:
    """CustomTTT's test-time-training merge of an appearance LoRA and a motion LoRA into one LoRA
    (docs/customttt.md, sup), on every backbone (CogVideoX, Wan, the U-Nets: AnimateDiff's published recipe is
    this function with :meth:`dual_adapter.customttt.unet.CustomTTTUNetConfig.ttt_config`). The steps, each a
    function of this module:

    1. :func:`check_merge_inputs`: LoRAs, prompts, sizes, options; the prompts encoded.
    2. :func:`teacher_references`: the appearance teacher (base + ``appearance`` under ``appearance_prompt``) and
       the motion teacher (base + ``motion`` under ``motion_prompt``) each run ``f = config.teacher_steps`` sampler
       steps from Gaussian noise (:func:`teacher_reference`).
    3. :func:`build_student`: a weight-sharing copy of the denoiser with both LoRAs as separate trainable adapters
       (``appearance``, ``motion``; base weights frozen and never modified).
    4. :class:`TTTObjective`: each step re-noises both references with fresh noise and measures
       ``L = w_a L_a + w_m L_m`` under the combined ``prompt``. By default (``config.reference = "x0_pred"``) the
       references are the teachers' x0 predictions at step f and each term is the backbone's training objective
       (:func:`dual_adapter.training.diffusion_loss`: CogVideoX's v-prediction loss, Wan's flow-matching loss, the
       U-Nets' epsilon loss) at a
       timestep drawn from ``renoise_timesteps``; ``"z_f_renoised"`` (DDPM schedules only) and ``"z_f_as_x0"`` are
       the other named choices (:class:`TTTConfig`).
    5. :func:`run_ttt`: ``config.steps`` steps of the shared loop (:func:`dual_adapter.training.train_loop`).
    6. :func:`merged_file`: both trained adapters merged into one LoRA (:func:`merge_loras`: rank concatenation
       where they share a module), so applying it reproduces the student exactly.

    With ``config.steps == 0`` no teacher runs and the result is the exact merge of the two inputs.

    Args:
        bundle: the model. appearance, motion: :class:`~dual_adapter.lora.LoraFile` s (their blocks may be
            disjoint or overlap; their alpha / rank scales are honoured).
        appearance_prompt, motion_prompt: the prompts each LoRA was trained with (teachers' prompts).
        prompt: the combined prompt (student), e.g. ``"dog * is turning on a road"``.
        config: :class:`TTTConfig` (default: its documented defaults).
        patches: model patches under everything (teachers and student).
        callback: ``callback(k, total, info)``: ``2 f`` teacher steps then one per TTT step; may raise
            InterruptedByUser to stop (the checkpoint, if any, keeps what was learned).
        checkpoint_path: ``.safetensors`` file for the merged LoRA, rewritten every ``checkpoint_every`` steps,
            at the end and when the run stops; its state file (:func:`dual_adapter.lora.train_state_path`: the
            student's weights, optimiser, schedule, step, losses) goes beside it.
        base_model: name recorded in the metadata (default ``bundle.name``).
        keep_student: also return the trained student transformer.
        resume: continue the interrupted run of ``checkpoint_path`` from its state file (the teachers run again:
            same seeds, same references), so the result equals an uninterrupted run's.
        preview: :class:`~dual_adapter.previews.PreviewOptions` (a validation video of the student every
            ``every`` steps; default prompt: ``prompt``), or None.

    Returns:
        :class:`TTTResult`.

    Raises:
        DualAdapterError: bad config or prompts, LoRAs that do not fit the model, sizes the model cannot take,
            ``reference="z_f_renoised"`` on a flow-matching backbone, a diverged loss, ``optimizer="lion"`` without
            ``lion-pytorch``.
        InterruptedByUser: from the callback.
    """
    from ..lora import lora_modules

    t_start = time.time()
    inp = check_merge_inputs(bundle, appearance, motion, appearance_prompt=appearance_prompt,
                             motion_prompt=motion_prompt, prompt=prompt, config=config, patches=patches)
    c = inp.config
    base_name = base_model or getattr(inp.bb, "name", None)
    f = int(c.teacher_steps)
    total = (2 * f if c.steps > 0 else 0) + int(c.steps)

    t0 = time.time()
    refs, t_ref = {}, None
    if c.steps > 0:
        refs, t_ref = teacher_references(inp, check_seed(c.teacher_seed, "teacher_seed"), callback, total)
    t_teachers = time.time() - t0

    model, params = build_student(inp)
    objective = TTTObjective(inp, model, refs, t_ref)
    make_file = _MergedFile(inp, model, base_name)
    ckpt = _Checkpoints(Path(checkpoint_path) if checkpoint_path else None, make_file, c.steps)
    t1 = time.time()
    result, ev = run_ttt(inp, objective, params, ckpt, callback=callback, resume=resume, preview=preview,
                         offset=2 * f, total=total)
    t_ttt = time.time() - t1
    model.eval()
    if c.dropout > 0:
        for m in lora_modules(model).values():
            for d in m.lora_dropout.values():
                d.train(False)
    lf = make_file(result.steps_done, result.completed)
    return TTTResult(lora=lf, train=result, references={k: v.detach().cpu() for k, v in objective.refs.items()},
                     reference_timestep=objective.t_ref, eval=ev,
                     seconds={"teachers": t_teachers, "ttt": t_ttt, "total": time.time() - t_start},
                     student=model if keep_student else None)
