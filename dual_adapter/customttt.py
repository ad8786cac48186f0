"""CustomTTT on CogVideoX: prompt-influence analysis, layer-selective LoRAs, test-time-training merge.

docs/customttt.md (CustomTTT, Bi et al.). Three parts:

1. **Prompt influence** (paper): which transformer blocks carry a concept? CogVideoX has no
   cross-attention; text reaches a block only through its joint attention over ``[text; visual]``
   tokens, and the text tokens are carried (and updated) from block to block. "Injecting the concept
   prompt at block *i* only" is therefore defined here as: the text stream *entering* block *i* is the
   one the concept prompt produces at that block, while every other block receives the text stream the
   neutral prompt produces there (both taken from full reference runs on the same noisy latent and
   timestep). See :func:`prompt_influence` for the score.
2. **Layer-selective LoRAs** (paper): an appearance LoRA trained on subject photos (1-frame videos) and
   a motion LoRA trained on clips, each only on the blocks the analysis picked. Training is
   :func:`dual_adapter.lora.train_lora` with ``LoraSpec(blocks=...)``; :func:`selective_spec` and
   :func:`selective_train_config` give this method's defaults, :func:`train_selective_lora` wraps both.
3. **TTT merge** (sup): two teachers (base + one LoRA, each with its own prompt) denoise ``f`` sampler
   steps from Gaussian noise to reference latents ``z_f``; the student (base + both LoRAs, all LoRA
   weights trainable) is then trained for a few steps under the combined prompt on the CogVideoX
   denoising loss toward the references, ``L = w_a L_appearance + w_m L_motion``. The result is one
   merged LoRA in the diffusers format of :mod:`dual_adapter.lora` (:func:`ttt_merge`). Every choice the
   paper leaves open is a field of :class:`TTTConfig` with a documented default.

Merging two LoRAs into one file (:func:`merge_loras`): modules touched by one LoRA keep its
``(A, B)``; a module touched by both gets the rank-concatenation ``A = [A_1; A_2]`` (dim 0),
``B = [s_1 B_1, s_2 B_2]`` (dim 1) with each scale ``s = strength * alpha / rank`` folded into ``B``,
so that ``B A = s_1 B_1 A_1 + s_2 B_2 A_2`` exactly (the file's alpha equals its rank: scale 1).

Size: prompt influence, selective training and the merge for CogVideoX are still one module; it becomes
a ``customttt/`` package together with ``customttt_unet.py``, once the two share one ``prompt_influence`` and
one ``ttt_merge``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import DualAdapterError
from .lora import parse_blocks  # noqa: F401  (re-exported: CustomTTT selects blocks)
from .seeds import check_seed, derived_seed, seed_generator

log = logging.getLogger(__name__)

__all__ = [
    "InfluenceResult",
    "prompt_influence",
    "make_groups",
    "parse_blocks",
    "selective_spec",
    "selective_train_config",
    "train_selective_lora",
    "TTTConfig",
    "TTTResult",
    "teacher_reference",
    "merge_loras",
    "ttt_merge",
    "SPACES",
    "REFERENCES",
]

#: Prediction spaces in which prompt influence is measured.
SPACES = ("x0", "v")
#: What the student is trained toward in the TTT merge (see :class:`TTTConfig`); the first is the default.
REFERENCES = ("x0_pred", "z_f_renoised", "z_f_as_x0")
#: Older names still accepted: ``"z_f"`` was ``"z_f_as_x0"`` (the default before the x0 prediction).
REFERENCE_ALIASES = {"z_f": "z_f_as_x0"}

Callback = Callable[[int, int, dict], None]


# --------------------------------------------------------------------------------------------
# small helpers




def make_groups(num_blocks: int, group_size: int = 1, groups: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """The block groups the influence analysis scores.

    ``groups`` (explicit lists of block indices) wins; otherwise contiguous groups of ``group_size``
    blocks (the last one may be shorter): ``make_groups(30, 6)`` -> 5 groups of 6.

    Raises:
        DualAdapterError: group_size < 1, empty groups or indices out of range.
    """
    if groups is not None:
        out = [sorted(set(int(b) for b in g)) for g in groups]
        if not out or any(not g for g in out):
            raise DualAdapterError(f"groups={groups!r}: expected non-empty lists of block indices")
        bad = sorted({b for g in out for b in g if not 0 <= b < num_blocks})
        if bad:
            raise DualAdapterError(f"groups: blocks {bad} out of range (the model has {num_blocks} blocks)")
        return out
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise DualAdapterError(f"group_size={group_size!r}: must be an integer >= 1")
    return [list(range(s, min(s + group_size, num_blocks))) for s in range(0, num_blocks, group_size)]


def _fmt_blocks(blocks: Sequence[int]) -> str:
    """[0,1,2,5] -> '0-2,5'."""
    b = sorted(blocks)
    out, i = [], 0
    while i < len(b):
        j = i
        while j + 1 < len(b) and b[j + 1] == b[j] + 1:
            j += 1
        out.append(str(b[i]) if i == j else f"{b[i]}-{b[j]}")
        i = j + 1
    return ",".join(out)


# --------------------------------------------------------------------------------------------
# prompt influence


class _InfluenceState:
    """Shared by the block wrappers of one influence run (what to record / inject / replay)."""

    def __init__(self, n: int):
        self.n = n
        self.mode = "plain"  # "record" | "inject"
        self.record_hidden = False
        self.text: list = [None] * n  # text stream entering each block (recorded)
        self.hidden: list = [None] * (n + 1)  # visual stream entering each block; [n] = output of the last
        self.override: list = [None] * n  # text stream to feed each block (inject)
        self.replay: list | None = None  # neutral visual streams, for blocks before the first injected one
        self.start = 0


class _InfluenceBlock(nn.Module):
    """Wraps one CogVideoX block: records its inputs, or replaces its text-stream input."""

    def __init__(self, inner: nn.Module, index: int, state: _InfluenceState):
        super().__init__()
        self.inner = inner
        self.index = index
        self.state = state

    def forward(self, hidden_states, encoder_hidden_states, temb=None, image_rotary_emb=None, attention_kwargs=None):
        st, i = self.state, self.index
        if st.mode == "record":
            st.text[i] = encoder_hidden_states
            if st.record_hidden:
                st.hidden[i] = hidden_states
        elif st.mode == "inject":
            if i < st.start:  # identical to the neutral run up to the first injected block: replay it
                return st.replay[i + 1], encoder_hidden_states
            encoder_hidden_states = st.override[i]
        h, e = self.inner(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
                          image_rotary_emb=image_rotary_emb, attention_kwargs=attention_kwargs)
        if st.mode == "record" and st.record_hidden and i == st.n - 1:
            st.hidden[st.n] = h
        return h, e


class _InfluencePatch:
    """Model patch: wrap every block of a (weight-sharing) copy in :class:`_InfluenceBlock`."""

    def __init__(self, state: _InfluenceState):
        self.state = state

    def apply(self, transformer) -> None:
        from .backbones import backbone_for

        for b in backbone_for(transformer).blocks(transformer):
            transformer.set_submodule(b.name, _InfluenceBlock(b.module, b.index, self.state))


@dataclass
class InfluenceResult:
    """What :func:`prompt_influence` returns.

    Attributes:
        groups: the scored block groups (lists of block indices).
        concepts: concept name -> prompt (e.g. ``{"appearance": "dog *", "motion": "a car is turning"}``).
        neutral_prompt: the prompt every non-injected block sees.
        scores: concept -> per-group influence score (projection, see :func:`prompt_influence`); 1 = injecting
            there alone moves the prediction all the way to the full-concept prediction, 0 = not at all.
        closeness: concept -> per-group ``1 - ||p_i - p_c|| / ||p_n - p_c||`` (1 = reaches the concept
            prediction; negative = ends farther from it than the neutral prediction).
        concept_shift: concept -> RMS of ``p_c - p_n`` per latent element (how much the prompt matters at all).
        recommended: concept -> sorted blocks of its ``top_k`` highest-scoring groups (the LoRA blocks).
        top_k: groups per recommendation.
        settings: space, timesteps, seeds, video size, model name.
    """

    groups: list[list[int]]
    concepts: dict[str, str]
    neutral_prompt: str
    scores: dict[str, list[float]]
    closeness: dict[str, list[float]]
    concept_shift: dict[str, float]
    recommended: dict[str, list[int]]
    top_k: int
    settings: dict = field(default_factory=dict)

    def ranking(self, concept: str) -> list[int]:
        """Group indices sorted by decreasing score for ``concept``."""
        s = self.scores[concept]
        return sorted(range(len(s)), key=lambda g: (-s[g], g))

    def table(self) -> str:
        """A plain-text table: one row per group with each concept's score, closeness and rank, then the
        recommended block sets (ready for ``train-lora --blocks``)."""
        names = list(self.concepts)
        ranks = {c: {g: r + 1 for r, g in enumerate(self.ranking(c))} for c in names}
        st = self.settings
        lines = [f"Prompt influence ({st.get('space', 'x0')}-prediction, {len(self.groups)} groups, "
                 f"{st.get('draws', '?')} draws; neutral prompt {self.neutral_prompt!r})"]
        for c in names:
            lines.append(f"  {c}: {self.concepts[c]!r}  (concept shift RMS {self.concept_shift[c]:.4g})")
        head = f"{'group':>5}  {'blocks':<10}" + "".join(f"  {c[:14] + ' score':>20}  {'close':>6}  {'rank':>4}"
                                                          for c in names)
        lines += [head, "-" * len(head)]
        for g, blocks in enumerate(self.groups):
            row = f"{g:>5}  {_fmt_blocks(blocks):<10}"
            for c in names:
                mark = "*" if set(blocks) <= set(self.recommended[c]) and g in self.ranking(c)[:self.top_k] else " "
                row += f"  {self.scores[c][g]:>19.4f}{mark}  {self.closeness[c][g]:>6.3f}  {ranks[c][g]:>4}"
            lines.append(row)
        lines.append("")
        for c in names:
            lines.append(f"recommended {c} blocks (top {self.top_k}): {','.join(map(str, self.recommended[c]))}")
        return "\n".join(lines)

    def plot(self) -> torch.Tensor:
        """Bar chart of the scores per group and concept (recommended groups outlined) -> IMAGE ``[1, H, W, 3]``."""
        import numpy as np

        from .plots import figure_to_image, new_figure

        names = list(self.concepts)
        n = len(self.groups)
        fig = new_figure(max(6.4, 0.35 * n * max(1, len(names)) + 2), 3.8)
        ax = fig.add_subplot(1, 1, 1)
        w = 0.8 / max(1, len(names))
        x = np.arange(n)
        for k, c in enumerate(names):
            top = set(self.ranking(c)[:self.top_k])
            bars = ax.bar(x + (k - (len(names) - 1) / 2) * w, self.scores[c], w, color=f"C{k}")
            for g, b in enumerate(bars):
                if g in top:
                    b.set_edgecolor("black")
                    b.set_linewidth(2.0)
        ax.set_xticks(x)
        ax.set_xticklabels([_fmt_blocks(g) for g in self.groups], rotation=90 if n > 16 else 0, fontsize=8)
        ax.set_xlabel("block group (outlined: recommended)")
        ax.set_ylabel("influence score")
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_title("Prompt influence: concept injected at one group only")
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor=f"C{k}", label=f"{c}: {self.concepts[c][:30]}") for k, c in enumerate(names)],
                  fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        return figure_to_image(fig)

    def to_dict(self) -> dict:
        """JSON-serialisable form (everything above)."""
        return asdict(self)


def _influence_inputs(bundle, *, timesteps, seeds, latents, num_frames, height, width, sched):
    """The draws: ``[(x_t [1,F,C,h,w], t [1])]`` on the bundle's device (``bundle``: a backbone)."""
    bb = bundle
    if latents is not None:
        if not torch.is_tensor(latents) or latents.ndim not in (4, 5):
            raise DualAdapterError(f"latents must be scaled video latents [N, F, C, h, w] (or [F, C, h, w]), got "
                                   f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}")
        lat = latents[None] if latents.ndim == 4 else latents
        if lat.shape[2] != bb.latent_channels:
            raise DualAdapterError(f"latents have {lat.shape[2]} channels, the model takes {bb.latent_channels}")
        lat = bb.pad_latent_frames(lat.detach().float().cpu())
        shape = (1,) + tuple(lat.shape[1:])
    else:
        f0, h0, w0 = bb.default_size
        num_frames, height, width = int(num_frames or f0), int(height or h0), int(width or w0)
        bb.check_video_size(num_frames, height, width)
        T = bb.latent_frames(num_frames)
        p_t = bb.time_patch()
        if T % p_t:
            T += p_t - T % p_t
        s = bb.vae_scale
        shape = (1, T, bb.latent_channels, height // s, width // s)
        lat = None
    draws = []
    n_train = sched.config.num_train_timesteps
    for k, seed in enumerate(seeds):
        g = seed_generator(seed, name="seeds")
        x0 = lat[k % lat.shape[0]: k % lat.shape[0] + 1] if lat is not None else torch.randn(shape, generator=g)
        for t in timesteps:
            t = int(t)
            if not 0 <= t < n_train:
                raise DualAdapterError(f"timestep {t} out of range 0..{n_train - 1}")
            eps = torch.randn(shape, generator=g)
            tt = torch.tensor([t])
            x_t = sched.add_noise(x0, eps, tt)
            draws.append((x_t.to(bundle.device, bundle.dtype), tt.to(bundle.device)))
    return draws, shape


@torch.no_grad()
def prompt_influence(
    bundle,
    concepts: Mapping[str, str] | str,
    neutral_prompt: str = "",
    *,
    group_size: int = 1,
    groups: Sequence[Sequence[int]] | None = None,
    timesteps: Sequence[int] = (250, 500, 750),
    seeds: Sequence[int] = (0, 1),
    latents: torch.Tensor | None = None,
    space: str = "x0",
    top_k: int = 2,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    patches: Sequence = (),
    callback: Callback | None = None,
) -> InfluenceResult:
    """Prompt-influence analysis (CustomTTT, paper): how far injecting a concept prompt at one block
    group alone moves the model's prediction toward the full-concept prediction.

    For every draw ``d`` (a noise seed x a timestep: ``x_t = add_noise(x_0, eps, t)`` with ``x_0`` from
    ``latents`` or ``N(0, I)``) three kinds of predictions are made with the same ``x_t`` and ``t``:

      * ``p_n``: neutral prompt at every block; ``p_c``: concept prompt at every block;
      * ``p_g``: the text stream entering each block of group ``g`` is the one the concept run has there,
        every other block gets the one the neutral run has there (the text tokens' own updates inside a
        block are discarded: each block's text input comes from a reference run).

    Predictions are in ``space`` (``"x0"``: ``x0_pred = get_velocity(v, x_t, t)``; ``"v"``: the raw
    output). With ``d_g = p_g - p_n`` and ``d_c = p_c - p_n`` summed over all draws and elements:

        ``score_g = <d_g, d_c> / ||d_c||^2``            (projection; the table's main column)
        ``closeness_g = 1 - ||p_g - p_c|| / ||d_c||``

    Injecting at every block gives exactly ``p_c`` (score 1, closeness 1); a block whose text
    input does not matter scores 0. Scores are deterministic for fixed seeds. The recommended set
    for a concept is the union of its ``top_k`` best groups.

    Cost: per draw, one neutral run, then per concept one full run plus one run per group (blocks
    before the group's first block are replayed from the neutral run, not recomputed). Memory: the
    neutral run's per-block visual stream is kept for one draw (``L x tokens x D``).

    Args:
        bundle: the model. concepts: ``{"appearance": "dog *", "motion": "a car is turning"}`` or one prompt
            (named ``"concept"``). neutral_prompt: what the other blocks see (default the empty prompt).
        group_size / groups: score contiguous groups of ``group_size`` blocks, or explicit groups.
        timesteps: integer timesteps in ``[0, 1000)``. seeds: noise seeds (draws = seeds x timesteps).
        latents: optional clean latents ``[N, F, C, h, w]`` (e.g. an encoded subject photo or clip) used as
            ``x_0`` (seed ``k`` uses ``latents[k % N]``); default Gaussian ``x_0`` of the video size.
        space: ``"x0"`` (default) or ``"v"``. top_k: groups per recommended set (the authors use 2 layers).
        num_frames, height, width: video size without ``latents`` (default the model's).
        patches: model patches to analyse on top of (e.g. LoRAs already applied).
        callback: ``callback(k, total, info)`` after every forward pass; may raise to stop.

    Returns:
        :class:`InfluenceResult`.

    Raises:
        DualAdapterError: empty or identical prompts (a concept that does not change the prediction),
            bad groups, timesteps, space, top_k or sizes.
    """
    from .backbones import as_backbone
    from .patches import patched_copy

    bb = as_backbone(bundle)
    if isinstance(concepts, str):
        concepts = {"concept": concepts}
    concepts = dict(concepts or {})
    if not concepts:
        raise DualAdapterError("prompt_influence needs at least one concept prompt")
    for name, p in concepts.items():
        if not isinstance(p, str) or not p.strip():
            raise DualAdapterError(f"concept prompt {name!r} must be a non-empty string")
    if not isinstance(neutral_prompt, str):
        raise DualAdapterError("neutral_prompt must be a string (may be empty)")
    if space not in SPACES:
        raise DualAdapterError(f"space={space!r}: expected one of {SPACES}")
    timesteps, seeds = list(timesteps), list(seeds)
    if not timesteps or not seeds:
        raise DualAdapterError("prompt_influence needs at least one timestep and one seed")
    n = len(bb.blocks())
    grp = make_groups(n, group_size, groups)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(grp):
        raise DualAdapterError(f"top_k={top_k!r}: must be between 1 and the number of groups ({len(grp)})")
    sched = bb.noise_scheduler()
    draws, shape = _influence_inputs(bb, timesteps=timesteps, seeds=seeds, latents=latents,
                                     num_frames=num_frames, height=height, width=width, sched=sched)
    names = list(concepts)
    emb = bb.encode_prompt([neutral_prompt] + [concepts[c] for c in names])
    e_n = emb[:1]
    e_c = {c: emb[k + 1: k + 2] for k, c in enumerate(names)}

    state = _InfluenceState(n)
    with bb.use("denoiser") as base:
        model = patched_copy(base, list(patches or ()) + [_InfluencePatch(state)])
        def pred(x_t, t, e):
            v = bb.predict(x_t, t, e, denoiser=model).float()
            if space == "v":
                return v
            return sched.get_velocity(v, x_t.float(), t).float()  # x0_pred = sqrt(abar) x_t - sqrt(1-abar) v

        num = {c: [0.0] * len(grp) for c in names}
        dist2 = {c: [0.0] * len(grp) for c in names}
        den = {c: 0.0 for c in names}
        total = len(draws) * (1 + len(names) * (1 + len(grp)))
        k = 0

        def tick(info):
            nonlocal k
            k += 1
            if callback is not None:
                callback(k, total, info)

        try:
            for x_t, t in draws:
                state.mode, state.record_hidden = "record", True
                p_n = pred(x_t, t, e_n)
                text_n = list(state.text)
                hidden_n = list(state.hidden)
                tick({"run": "neutral"})
                for c in names:
                    state.mode, state.record_hidden = "record", False
                    p_c = pred(x_t, t, e_c[c])
                    text_c = list(state.text)
                    tick({"run": c})
                    d_c = (p_c - p_n).double()
                    den[c] += float((d_c * d_c).sum())
                    for gi, g in enumerate(grp):
                        gs = set(g)
                        state.mode = "inject"
                        state.override = [text_c[j] if j in gs else text_n[j] for j in range(n)]
                        state.start, state.replay = min(g), hidden_n
                        p_g = pred(x_t, t, e_n)
                        num[c][gi] += float(((p_g - p_n).double() * d_c).sum())
                        dist2[c][gi] += float(((p_g - p_c).double() ** 2).sum())
                        tick({"run": c, "group": gi})
        finally:
            state.mode = "plain"
            state.text, state.hidden, state.override, state.replay = [None] * n, [None] * (n + 1), [None] * n, None

    n_el = len(draws) * math.prod(shape)
    scores, close, shift = {}, {}, {}
    for c in names:
        if not den[c] > 1e-20 * n_el:
            raise DualAdapterError(f"concept prompt {concepts[c]!r} ({c}) gives the same prediction as the neutral prompt "
                                   f"{neutral_prompt!r}: nothing to measure; use prompts that differ")
        scores[c] = [num[c][g] / den[c] for g in range(len(grp))]
        close[c] = [1.0 - math.sqrt(dist2[c][g] / den[c]) for g in range(len(grp))]
        shift[c] = math.sqrt(den[c] / n_el)
    res = InfluenceResult(groups=grp, concepts=concepts, neutral_prompt=neutral_prompt, scores=scores, closeness=close,
                          concept_shift=shift, recommended={}, top_k=top_k,
                          settings=dict(space=space, timesteps=[int(t) for t in timesteps], seeds=[int(s) for s in seeds],
                                        draws=len(draws), latent_shape=list(shape), from_latents=latents is not None,
                                        model=getattr(bundle, "name", None), num_blocks=n))
    for c in names:
        res.recommended[c] = sorted({b for gi in res.ranking(c)[:top_k] for b in grp[gi]})
    return res


# --------------------------------------------------------------------------------------------
# layer-selective LoRAs


def selective_spec(kind: str, blocks: Sequence[int] | str | None, *, rank: int = 32, alpha: float | None = None,
                   dropout: float = 0.1, targets: str | Sequence[str] | None = None):
    """The :class:`~dual_adapter.lora.LoraSpec` of a CustomTTT LoRA on the chosen blocks only.

    Defaults (authors, sup): rank 32, dropout 0.1. Targets: ``"full"`` (attention q, k, v, out) for both
    kinds, because the authors' LoRAs adapt whole attention layers; a motion LoRA may use ``"tap"``
    (docs/tap.md). alpha defaults to rank (scale 1).

    Args:
        kind: ``"appearance"`` or ``"motion"`` (recorded by the caller; both have the same default targets).
        blocks: block indices (or ``"2,6"``); None = all blocks (not layer-selective).

    Raises:
        DualAdapterError: unknown kind, bad blocks, rank, alpha or dropout.
    """
    from .lora import LoraSpec, resolve_targets

    if kind not in ("appearance", "motion"):
        raise DualAdapterError(f"kind={kind!r}: expected 'appearance' or 'motion'")
    b = parse_blocks(blocks) if isinstance(blocks, str) or blocks is None else sorted(set(int(x) for x in blocks))
    spec = LoraSpec(rank=int(rank), alpha=float(alpha if alpha is not None else rank), dropout=float(dropout),
                    targets=resolve_targets(targets or "full"), blocks=b)
    spec.validate()
    return spec


def selective_train_config(kind: str, optimizer: str = "adamw", **overrides):
    """:class:`~dual_adapter.training.TrainConfig` for a layer-selective LoRA.

    ``optimizer="lion"`` gives the authors' setting exactly (sup): Lion betas (0.9, 0.99), weight decay
    0.1, 500 steps, lr 1e-5 (appearance) / 5e-5 (motion); it needs the ``lion-pytorch`` package.
    ``optimizer="adamw"`` (default: works without extra packages) uses the usual Lion -> AdamW
    conversion (learning rate x10, weight decay /10): lr 1e-4 / 5e-4, weight decay 1e-2, betas
    (0.9, 0.999). Both: constant schedule, no warm-up, grad clip 1.0.

    Raises:
        DualAdapterError: unknown kind or optimizer.
    """
    from .training import TrainConfig

    if kind not in ("appearance", "motion"):
        raise DualAdapterError(f"kind={kind!r}: expected 'appearance' or 'motion'")
    lion_lr = 1e-5 if kind == "appearance" else 5e-5
    if optimizer == "lion":
        kw = dict(lr=lion_lr, betas=(0.9, 0.99), weight_decay=0.1)
    elif optimizer in ("adamw", "adamw8bit", "auto"):
        kw = dict(lr=lion_lr * 10, betas=(0.9, 0.999), weight_decay=1e-2)
    else:
        raise DualAdapterError(f"optimizer={optimizer!r}: expected adamw, adamw8bit, auto or lion")
    kw.update(steps=500, optimizer=optimizer, lr_schedule="constant", warmup_steps=0, grad_clip=1.0)
    kw.update(overrides)
    cfg = TrainConfig(**kw)
    cfg.validate()
    return cfg


def train_selective_lora(bundle, kind: str, blocks: Sequence[int] | str | None, *, prompt: str,
                         photos: Sequence[torch.Tensor] | None = None, clips: Sequence[torch.Tensor] | None = None,
                         spec=None, cfg=None, **train_kw):
    """Train a layer-selective appearance LoRA (on ``photos``, each a 1-frame video) or motion LoRA (on
    ``clips``): :func:`dual_adapter.lora.train_lora` with :func:`selective_spec` / :func:`selective_train_config`
    defaults. Extra keywords go to ``train_lora`` (callback, checkpoint_path, num_frames, patches...).

    Returns:
        ``(LoraFile, TrainResult)``; the file's metadata records ``customttt_kind``.

    Raises:
        DualAdapterError: an appearance LoRA without photos, a motion LoRA without clips, or what
            ``train_lora`` raises.
    """
    from .lora import train_lora

    if kind == "appearance" and not photos:
        raise DualAdapterError("an appearance LoRA needs subject photos (photos=)")
    if kind == "motion" and not clips:
        raise DualAdapterError("a motion LoRA needs motion clips (clips=)")
    spec = spec if spec is not None else selective_spec(kind, blocks)
    if spec.blocks is None and blocks is not None:
        spec = copy.deepcopy(spec)
        spec.blocks = parse_blocks(blocks) if isinstance(blocks, str) else list(blocks)
    cfg = cfg if cfg is not None else selective_train_config(kind)
    lf, res = train_lora(bundle, clips=clips if kind == "motion" else None, photos=photos if kind == "appearance" else None,
                         prompt=prompt, spec=spec, cfg=cfg, **train_kw)
    lf.metadata["customttt_kind"] = kind
    return lf, res


# --------------------------------------------------------------------------------------------
# merging LoRA files exactly


def merge_loras(loras: Sequence, strengths: Sequence[float] | None = None, metadata: Mapping | None = None):
    """Merge LoRAs into one diffusers-format :class:`~dual_adapter.lora.LoraFile` that applies exactly
    their sum (what stacking them with :class:`~dual_adapter.lora.LoraPatch` at these strengths does).

    Per module: one LoRA -> ``(A, s B)``; several -> ``A = cat([A_1, A_2, ...], dim 0)``,
    ``B = cat([s_1 B_1, s_2 B_2, ...], dim 1)``, ``s_k = strength_k * alpha_k / rank_k``, so
    ``B A = sum_k s_k B_k A_k`` and the merged rank of that module is the sum of the ranks. The file's
    alpha equals each module's rank (scale 1, the convention of :func:`dual_adapter.lora.save_lora`).
    Tensors are fp32.

    Raises:
        DualAdapterError: no LoRAs, non-LoraFile inputs, strengths of the wrong length, or two LoRAs whose
            shapes for the same module differ (trained on different models).
    """
    from .lora import LoraFile

    loras = list(loras)
    if not loras:
        raise DualAdapterError("merge_loras needs at least one LoRA")
    for i, lf in enumerate(loras):
        if not isinstance(lf, LoraFile):
            raise DualAdapterError(f"LoRA {i}: expected a LoraFile (load_lora / train_lora), got {type(lf).__name__}")
    strengths = [1.0] * len(loras) if strengths is None else [float(s) for s in strengths]
    if len(strengths) != len(loras):
        raise DualAdapterError(f"strengths: {len(strengths)} values for {len(loras)} LoRAs")
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for lf, st in zip(loras, strengths):
        ranks, alphas = lf.ranks, lf.alphas
        for mod in lf.modules:
            a = lf.state_dict[f"transformer.{mod}.lora_A.weight"].detach().float().cpu()
            b = lf.state_dict[f"transformer.{mod}.lora_B.weight"].detach().float().cpu()
            s = st * float(alphas.get(mod, ranks[mod])) / ranks[mod]
            prev = parts.setdefault(mod, [])
            if prev and (prev[0][0].shape[1] != a.shape[1] or prev[0][1].shape[0] != b.shape[0]):
                raise DualAdapterError(f"cannot merge: {mod} maps {a.shape[1]} -> {b.shape[0]} in {lf.name!r} but "
                                       f"{prev[0][0].shape[1]} -> {prev[0][1].shape[0]} in another LoRA "
                                       f"(trained on different models)")
            prev.append((a, b * s))
    sd: dict[str, torch.Tensor] = {}
    for mod, ab in sorted(parts.items()):
        sd[f"transformer.{mod}.lora_A.weight"] = torch.cat([a for a, _ in ab], 0).contiguous()
        sd[f"transformer.{mod}.lora_B.weight"] = torch.cat([b for _, b in ab], 1).contiguous()
    md = dict(metadata or {})
    ranks = {mod: int(sum(a.shape[0] for a, _ in ab)) for mod, ab in parts.items()}
    return LoraFile.from_state_dict(sd, md, alphas={m: float(r) for m, r in ranks.items()})


# --------------------------------------------------------------------------------------------
# TTT merge


@dataclass
class TTTConfig:
    """Options of the TTT merge (CustomTTT sup; every choice the paper leaves open is named here).

    Teachers (appearance teacher = base + appearance LoRA + appearance prompt; motion teacher = base +
    motion LoRA + motion prompt):
        teacher_steps: ``f``, sampler steps each teacher runs from Gaussian noise (authors: 5).
        teacher_schedule: length of the sampler schedule those ``f`` steps are taken from (authors' DDIM 25):
            the reference is the latent after the first ``f`` of ``teacher_schedule`` steps (``f ==
            teacher_schedule`` gives the fully denoised teacher sample).
        teacher_scheduler: ``"ddim"`` (authors) or ``"dpm"``.
        teacher_cfg: guidance scale of the teachers. Authors: 9 on AnimateDiff; default 6, the CogVideoX
            value (what the papers on this backbone sample with).
        negative_prompt: the teachers' CFG negative prompt (default empty).
        teacher_seed: seed of the teachers' initial noise.
        shared_teacher_noise: both teachers start from the same noise (default True: their references share
            a layout, so the student is not asked to reconcile two unrelated compositions).
        appearance_frames: video length of the appearance teacher; None = the student's (default). 1 = a
            1-frame reference, as the appearance LoRA was trained on photos.
    Student (base + both LoRAs, all LoRA weights trainable, base frozen, combined prompt):
        reference: what the loss is toward (docs/customttt.md). After ``f = 5`` of 25 DDIM steps ``z_f``
            sits at ``t_f ~ 799`` (``abar ~ 0.006``: about ``0.08 x_0 + 1.0 noise``), so it is no clean sample.
            ``"x0_pred"`` (default): the teacher's clean-latent estimate at ``z_f`` (one extra guided teacher
            call), ``x0 = sqrt(abar_f) z_f - sqrt(1 - abar_f) v``, used as ``x_0`` of the CogVideoX objective:
            each step draws ``eps`` and ``t ~ U[t_lo, t_hi)``, ``x_t = add_noise(x0, eps, t)``, loss
            ``mean(1/(1-abar_t) (x0_student - x0)^2)`` (:func:`dual_adapter.training.diffusion_loss`).
            ``"z_f_renoised"``: ``z_f`` taken as what it is, a sample at ``t_f``; each step re-noises it
            forward to ``t ~ U[max(t_f + 1, t_lo), t_hi)`` with ``q(x_t | x_{t_f})``:
            ``x_t = sqrt(abar_t/abar_f) z_f + sqrt(1 - abar_t/abar_f) eps``, and the student's deterministic
            DDIM step from ``t`` back to ``t_f`` must land on ``z_f``: ``z_hat = sqrt(abar_f) x0_student +
            sqrt(1 - abar_f) eps_student``, loss ``mean((z_hat - z_f)^2)``. ``"z_f_as_x0"``: the literal reading
            used before, ``z_f`` treated as the clean sample ``x_0`` of the standard objective (the student
            learns to output the teachers' still-noisy latents). ``"z_f"`` is accepted as its old name.
            When the teachers run the whole schedule (``f == teacher_schedule``) all three coincide.
        renoise_timesteps: ``(t_lo, t_hi)``, the range of the re-noising timestep (default ``(0, 1000)``: the
            full range of the standard objective; ``z_f_renoised`` starts above ``t_f``).
        w_appearance, w_motion: ``L = w_a L_appearance + w_m L_motion`` (authors: 1 and 1, a plain sum).
        regenerate_references: draw new teacher noise and re-run both teachers every step (default False:
            the references are computed once; True costs ``2 f`` teacher calls per step).
        dropout: LoRA dropout during TTT (default 0).
    Optimiser (the shared loop, :func:`dual_adapter.training.train_loop`):
        steps: TTT steps (authors 30). optimizer: ``"adamw"`` (default: no extra package) or ``"lion"``
            (authors: Lion lr 1e-6, betas (0.9, 0.99), weight decay 0.1; needs ``lion-pytorch``; see
            :meth:`authors`). The AdamW defaults use the usual Lion -> AdamW conversion: lr x10 (1e-5),
            weight decay /10 (1e-2). Constant learning rate, no warm-up, grad clip 1.0.
        seed: seeds the re-noising draws. gradient_checkpointing, mixed_precision: as in TrainConfig.
        checkpoint_every: with a checkpoint path, rewrite the merged LoRA every N steps (and on stop).
        eval_draws: if > 0, the combined loss is also measured on this many fixed draws before and after
            TTT (reported in ``TTTResult.eval``).
    Video size: num_frames, height, width (default the model's).
    """

    steps: int = 30
    teacher_steps: int = 5
    teacher_schedule: int = 25
    teacher_scheduler: str = "ddim"
    teacher_cfg: float = 6.0
    negative_prompt: str = ""
    teacher_seed: int = 0
    shared_teacher_noise: bool = True
    appearance_frames: int | None = None
    reference: str = "x0_pred"
    renoise_timesteps: tuple[int, int] = (0, 1000)
    w_appearance: float = 1.0
    w_motion: float = 1.0
    regenerate_references: bool = False
    dropout: float = 0.0
    optimizer: str = "adamw"
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    checkpoint_every: int = 10
    eval_draws: int = 0
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None

    @classmethod
    def authors(cls, **overrides) -> "TTTConfig":
        """The authors' setting (sup): Lion lr 1e-6, betas (0.9, 0.99), weight decay 0.1, 30 steps, DDIM 25,
        f = 5, CFG 9 (on AnimateDiff)."""
        kw = dict(optimizer="lion", lr=1e-6, betas=(0.9, 0.99), weight_decay=0.1, steps=30, teacher_steps=5,
                  teacher_schedule=25, teacher_scheduler="ddim", teacher_cfg=9.0)
        kw.update(overrides)
        return cls(**kw)

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`DualAdapterError` naming the first invalid field."""
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.steps) or self.steps < 0:
            raise DualAdapterError(f"steps={self.steps!r}: must be an integer >= 0")
        if not is_int(self.teacher_schedule) or self.teacher_schedule < 1:
            raise DualAdapterError(f"teacher_schedule={self.teacher_schedule!r}: must be an integer >= 1")
        if not is_int(self.teacher_steps) or not 1 <= self.teacher_steps <= self.teacher_schedule:
            raise DualAdapterError(f"teacher_steps={self.teacher_steps!r}: must be between 1 and teacher_schedule "
                                   f"({self.teacher_schedule})")
        if self.teacher_scheduler not in ("ddim", "dpm"):
            raise DualAdapterError(f"teacher_scheduler={self.teacher_scheduler!r}: expected ddim or dpm")
        if not (isinstance(self.teacher_cfg, (int, float)) and self.teacher_cfg >= 1.0):
            raise DualAdapterError(f"teacher_cfg={self.teacher_cfg!r}: must be >= 1 (1 = no guidance)")
        self.reference = REFERENCE_ALIASES.get(self.reference, self.reference)
        if self.reference not in REFERENCES:
            raise DualAdapterError(f"reference={self.reference!r}: expected one of {REFERENCES}")
        try:
            lo, hi = (int(v) for v in self.renoise_timesteps)
        except (TypeError, ValueError):
            raise DualAdapterError(f"renoise_timesteps={self.renoise_timesteps!r}: expected (t_lo, t_hi)") from None
        if not 0 <= lo < hi <= num_train_timesteps:
            raise DualAdapterError(f"renoise_timesteps={self.renoise_timesteps!r}: need 0 <= t_lo < t_hi <= "
                                   f"{num_train_timesteps}")
        for k in ("w_appearance", "w_motion"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DualAdapterError(f"{k}={v!r}: must be a finite number >= 0")
        if self.w_appearance == 0 and self.w_motion == 0 and self.steps > 0:
            raise DualAdapterError("w_appearance and w_motion are both 0: nothing to train")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise DualAdapterError(f"dropout={self.dropout!r}: must be in [0, 1)")
        if self.appearance_frames is not None and (not is_int(self.appearance_frames) or self.appearance_frames < 1):
            raise DualAdapterError(f"appearance_frames={self.appearance_frames!r}: must be None or 4k+1 frames")
        if not is_int(self.eval_draws) or self.eval_draws < 0:
            raise DualAdapterError(f"eval_draws={self.eval_draws!r}: must be an integer >= 0")
        self.train_config().validate()

    def train_config(self):
        """The shared loop's :class:`~dual_adapter.training.TrainConfig` for these options."""
        from .training import TrainConfig

        return TrainConfig(steps=int(self.steps), lr=float(self.lr), betas=tuple(self.betas),
                           weight_decay=float(self.weight_decay), optimizer=self.optimizer, lr_schedule="constant",
                           warmup_steps=0, grad_clip=float(self.grad_clip), mixed_precision=self.mixed_precision,
                           gradient_checkpointing=bool(self.gradient_checkpointing), seed=int(self.seed),
                           checkpoint_every=int(self.checkpoint_every))


@dataclass
class TTTResult:
    """What :func:`ttt_merge` returns.

    Attributes:
        lora: the merged LoRA (:class:`~dual_adapter.lora.LoraFile`, diffusers format, scale folded).
        train: the shared loop's :class:`~dual_adapter.training.TrainResult` (per-step ``loss``,
            ``loss_appearance``, ``loss_motion``).
        references: ``{"appearance": z, "motion": z}`` reference latents ``[1, F, C, h, w]`` (CPU; empty when
            ``steps == 0``), with ``reference_timestep`` the timestep ``z_f`` sits at (0 = clean).
        eval: with ``eval_draws > 0``: ``{"before": {...}, "after": {...}}`` combined / per-concept losses on
            fixed draws.
        seconds: ``{"teachers": s, "ttt": s, "total": s}`` wall time.
        student: the trained student transformer (only with ``keep_student=True``).
    """

    lora: object
    train: object
    references: dict = field(default_factory=dict)
    reference_timestep: int | None = None
    eval: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    student: object | None = None


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
    from .lora import lora_modules

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
    (CogVideoX here, the U-Nets through :func:`dual_adapter.customttt_unet.teacher_reference`; docs/customttt.md).

    Uses :func:`dual_adapter.sampling.sample` and stops it after ``teacher_steps`` steps: ``z_f`` is the latent
    after step ``f``, which sits at ``t_f = timesteps[f]``, the timestep the sampler would denoise it at next
    (DDIM 25 on a 1000-step schedule: ``f = 5`` gives ``t_f = 761`` with leading spacing, 799 with trailing).

    Args:
        bundle: a CogVideoX bundle or any :class:`~dual_adapter.backbones.base.VideoBackbone`.
        lora: a :class:`~dual_adapter.lora.LoraFile` or None (the base model as teacher; U-Net LoRAs come in
            ``patches``).
        prompt_embeds, negative_embeds: ``[1, L, D]`` text embeddings.
        reference: ``"x0_pred"`` (default): the teacher's clean estimate at ``z_f``, one extra guided teacher
            call at ``(z_f, t_f)`` turned into ``x0`` by :func:`predicted_x0` (``sqrt(abar) z_f - sqrt(1 - abar)
            v`` for v-prediction, ``(z_f - sqrt(1 - abar) eps) / sqrt(abar)`` for epsilon); or
            ``"z_f_renoised"`` / ``"z_f_as_x0"`` / ``"z_f"`` (the latent after ``f`` steps itself; see
            :class:`TTTConfig` for how each is used).

    Returns:
        ``(z, t_f)``: the reference in the scaled latent space and the backbone's layout (CogVideoX
        ``[1, F, C, h, w]``, U-Nets ``[1, C, F, h, w]``) and the timestep it sits at: ``t_f`` for the ``z_f``
        references, 0 for ``x0_pred`` (clean) and when the schedule was run to the end.

    Raises:
        DualAdapterError: bad steps / schedule / sizes.
    """
    from .backbones import as_backbone
    from .lora import LoraPatch
    from .patches import patched_copy
    from .sampling import sample

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
        ac = sch.alphas_cumprod[t_f].float()
        with torch.no_grad(), bb.use("denoiser") as base:
            model = patched_copy(base, pt)
            t = torch.tensor([t_f], device=z.device)
            if cfg > 1.0:
                neg = negative_embeds if negative_embeds is not None else None
                if neg is None:
                    neg = bb.encode_prompt("")
                text = torch.cat([neg.to(z.device, z.dtype), prompt_embeds.to(z.device, z.dtype)])
                v_u, v_c = bb.predict(torch.cat([z, z]), t.expand(2), text, denoiser=model).float().chunk(2)
                v = v_u + float(cfg) * (v_c - v_u)
            else:
                v = bb.predict(z, t, prompt_embeds.to(z.device, z.dtype), denoiser=model).float()
        x0 = predicted_x0(bb, v, z.float(), ac)
        z_out = x0.narrow(f_dim, extra, x0.shape[f_dim] - extra).to(z.dtype)
        t_f = 0
    return z_out, t_f


def _renoised_loss(model, sched, z_f: torch.Tensor, t_f: int, prompt_embeds: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor) -> torch.Tensor:
    """``reference="z_f_renoised"`` (see :class:`TTTConfig`): ``z_f`` (the backbone's layout) is a sample at ``t_f``;
    re-noise it forward to ``t > t_f`` (``q(x_t | x_{t_f})``), then the student's DDIM step from ``t`` back to
    ``t_f`` should give ``z_f``. Returns the per-sample loss ``[1]``."""
    from .backbones import backbone_for

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
    from .lora import LoraSpec, check_compatible, inject_lora, lora_modules

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
                w.copy_(lf.state_dict[f"transformer.{mod}.lora_{half}.weight"].to(w.device, w.dtype))
            want = alphas[mod] / ranks[mod]
            if abs(m.scaling[name] - want) > 1e-6 * max(1.0, abs(want)):
                raise DualAdapterError(f"internal: LoRA scale of {mod} is {m.scaling[name]}, expected {want}")
    return params


def _adapter_file(model, name: str):
    """The peft adapter ``name`` of ``model`` as a LoraFile with its scale folded into lora_B (alpha = rank)."""
    from .lora import LoraFile, lora_modules, lora_state_dict

    sd = lora_state_dict(model, name)
    layers = lora_modules(model, name)
    for mod, m in layers.items():
        k = f"transformer.{mod}.lora_B.weight"
        sd[k] = sd[k].float() * float(m.scaling[name])
        sd[f"transformer.{mod}.lora_A.weight"] = sd[f"transformer.{mod}.lora_A.weight"].float()
    return LoraFile.from_state_dict(sd, {}, alphas={mod: float(m.r[name]) for mod, m in layers.items()})


def _merged_metadata(merged, bundle, *, appearance, motion, prompts: dict, config: TTTConfig, steps_done: int,
                     completed: bool, base_model: str | None) -> dict:
    from .lora import LoraSpec, lora_metadata

    spec = LoraSpec(rank=int(merged.rank), alpha=float(merged.rank), dropout=0.0,
                    targets=list(merged.targets) or ["attn1.to_q"], blocks=merged.blocks)

    def src(lf):
        return dict(file=lf.path, rank=int(lf.rank), targets=list(lf.targets), blocks=lf.blocks,
                    modules=len(lf.modules))

    cfg = asdict(config)
    cfg["renoise_timesteps"] = list(cfg["renoise_timesteps"])
    cfg["betas"] = list(cfg["betas"])
    return lora_metadata(spec, bundle.denoiser, base_model=base_model, method="CustomTTT", preset="custom",
                         prompt=prompts["combined"], prompts=prompts,
                         sources={"appearance": src(appearance), "motion": src(motion)},
                         merge="rank-concatenation (A: cat dim 0, B: cat dim 1, scales folded into B)",
                         ttt=dict(cfg, steps_done=int(steps_done), completed=bool(completed)))


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
    (docs/customttt.md, sup).

    1. References: the appearance teacher (base + ``appearance`` under ``appearance_prompt``) and the motion
       teacher (base + ``motion`` under ``motion_prompt``) each run ``f = config.teacher_steps`` sampler steps
       from Gaussian noise (:func:`teacher_reference`), giving ``z_f^a`` and ``z_f^m``.
    2. Student: a weight-sharing copy of the transformer with both LoRAs as separate trainable adapters
       (``appearance``, ``motion``; base weights frozen and never modified).
    3. ``config.steps`` steps of the shared loop (:func:`dual_adapter.training.train_loop`); each step re-noises
       both references with fresh noise and minimises ``L = w_a L_a + w_m L_m`` under the combined ``prompt``.
       By default (``config.reference = "x0_pred"``) the references are the teachers' x0 predictions at step f
       and each term is the CogVideoX objective (:func:`dual_adapter.training.diffusion_loss`) at
       ``t ~ U[renoise_timesteps)``; ``"z_f_renoised"`` and ``"z_f_as_x0"`` are the other named choices
       (:class:`TTTConfig`).
    4. Output: both trained adapters merged into one LoRA (:func:`merge_loras`: rank concatenation where they
       share a module), so applying it reproduces the student exactly.

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
            a diverged loss, ``optimizer="lion"`` without ``lion-pytorch``.
        InterruptedByUser: from the callback.
    """
    from .backbones import as_backbone
    from .lora import LoraFile, check_compatible, lora_modules
    from .patches import shallow_copy_module
    from .training import diffusion_loss, train_loop

    t_start = time.time()
    bundle = as_backbone(bundle)  # the model, through the backbone interface
    config = copy.deepcopy(config) if config is not None else TTTConfig()
    sched = bundle.noise_scheduler()
    config.validate(int(sched.config.num_train_timesteps))
    for what, lf in (("appearance", appearance), ("motion", motion)):
        if not isinstance(lf, LoraFile):
            raise DualAdapterError(f"{what} LoRA: expected a LoraFile (from load_lora / train_lora), got "
                                   f"{type(lf).__name__}")
        check_compatible(lf, bundle.denoiser)
    for what, p in (("appearance_prompt", appearance_prompt), ("motion_prompt", motion_prompt), ("prompt", prompt)):
        if not isinstance(p, str) or not p.strip():
            raise DualAdapterError(f"{what} must be a non-empty string")
    f0, h0, w0 = bundle.default_size
    nf, h, w = int(config.num_frames or f0), int(config.height or h0), int(config.width or w0)
    bundle.check_video_size(nf, h, w)
    nf_a = int(config.appearance_frames or nf)
    bundle.check_video_size(nf_a, h, w)
    cfg = config.train_config()
    if config.steps > 0:  # fail on a missing optimiser package before the teachers run
        from .training import make_optimizer

        make_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    prompts = {"appearance": appearance_prompt, "motion": motion_prompt, "combined": prompt,
               "negative": config.negative_prompt}
    base_name = base_model or getattr(bundle, "name", None)
    f = int(config.teacher_steps)
    total = (2 * f if config.steps > 0 else 0) + int(config.steps)

    emb = bundle.encode_prompt([prompt, appearance_prompt, motion_prompt, config.negative_prompt])
    e_comb, e_app, e_mot, e_neg = emb[0:1], emb[1:2], emb[2:3], emb[3:4]

    # ---- teachers
    refs: dict[str, torch.Tensor] = {}
    t_ref: int | None = None

    def make_refs(noise_seed: int, report: bool) -> None:
        nonlocal t_ref
        for k, (name, lf, e, frames) in enumerate((("appearance", appearance, e_app, nf_a),
                                                   ("motion", motion, e_mot, nf))):
            seed = noise_seed if config.shared_teacher_noise else derived_seed(noise_seed, k)
            cb = None
            if report and callback is not None:
                off = k * f
                cb = (lambda s, _t, info, off=off: callback(off + s, total, {"phase": f"teacher_{name}"}))  # noqa: E731
            z, t_ref = teacher_reference(bundle, lf, e, e_neg, teacher_steps=f, teacher_schedule=config.teacher_schedule,
                                         scheduler=config.teacher_scheduler, cfg=float(config.teacher_cfg), seed=seed,
                                         num_frames=frames, height=h, width=w, reference=config.reference,
                                         patches=patches, callback=cb)
            refs[name] = z

    t0 = time.time()
    if config.steps > 0:
        make_refs(check_seed(config.teacher_seed, "teacher_seed"), True)
    t_teachers = time.time() - t0

    # ---- the student
    model = shallow_copy_module(bundle.denoiser)
    for p in patches or ():
        p.apply(model)
    params = _inject_trainable(model, appearance, "appearance", config.dropout)
    params += _inject_trainable(model, motion, "motion", config.dropout)
    student_mode(model, config.dropout)
    if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing") and config.steps > 0:
        model.enable_gradient_checkpointing()
    lo, hi = (int(v) for v in config.renoise_timesteps)
    weights = {"appearance": float(config.w_appearance), "motion": float(config.w_motion)}

    renoised = config.reference == "z_f_renoised" and bool(t_ref)
    if renoised and max(lo, int(t_ref) + 1) >= hi:
        raise DualAdapterError(f"reference='z_f_renoised': z_f sits at t_f={t_ref}, so renoise_timesteps={config.renoise_timesteps} "
                               f"leaves no timestep above it; raise t_hi")

    def combined_loss(gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        names = [n for n in ("appearance", "motion") if weights[n] > 0]
        x0s = [refs[n] for n in names]
        if renoised:
            tt = torch.randint(max(lo, int(t_ref) + 1), hi, (len(names),), generator=gen)
        else:
            tt = torch.randint(lo, hi, (len(names),), generator=gen)
        eps = [torch.randn(x.shape, generator=gen, dtype=torch.float32) for x in x0s]
        if renoised:
            per = torch.cat([_renoised_loss(model, sched, x, int(t_ref), e_comb, tt[i: i + 1], eps[i])
                             for i, x in enumerate(x0s)])
        elif len(x0s) == 2 and x0s[0].shape == x0s[1].shape:  # one batched forward
            per = diffusion_loss(model, sched, torch.cat(x0s), e_comb, timesteps=tt, noise=torch.cat(eps), reduce=False)
        else:
            per = torch.cat([diffusion_loss(model, sched, x, e_comb, timesteps=tt[i: i + 1], noise=eps[i], reduce=False)
                             for i, x in enumerate(x0s)])
        loss = sum(weights[n] * per[i] for i, n in enumerate(names))
        info = {f"loss_{n}": float(per[i].detach()) for i, n in enumerate(names)}
        return loss, info

    @torch.no_grad()
    def evaluate() -> dict:
        g = seed_generator(config.seed, 7_654_321)
        acc: dict[str, float] = {}
        for _ in range(int(config.eval_draws)):
            loss, info = combined_loss(g)
            acc["loss"] = acc.get("loss", 0.0) + float(loss) / config.eval_draws
            for k, v in info.items():
                acc[k] = acc.get(k, 0.0) + v / config.eval_draws
        return acc

    def make_file(steps_done: int, completed: bool):
        merged = merge_loras([_adapter_file(model, "appearance"), _adapter_file(model, "motion")])
        merged.metadata = _merged_metadata(merged, bundle, appearance=appearance, motion=motion, prompts=prompts,
                                           config=config, steps_done=steps_done, completed=completed,
                                           base_model=base_name)
        return merged

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    from .lora import train_state_path
    from .training import save_train_state

    def on_checkpoint(step, optimizer, lr_schedule, losses):
        if ckpt is not None:
            make_file(step, step >= cfg.steps).save(ckpt, overwrite=True)
            save_train_state(train_state_path(ckpt), optimizer, lr_schedule, step, extra={"losses": list(losses)})

    resume_state, start_losses = None, []
    if resume:
        if ckpt is None or not train_state_path(ckpt).is_file():
            raise DualAdapterError(f"nothing to resume: no state file "
                                   f"{str(train_state_path(ckpt)) if ckpt is not None else '(no checkpoint_path)'!r}")
        from .io import read_safetensors_metadata

        resume_state = train_state_path(ckpt)
        start_losses = list((read_safetensors_metadata(resume_state).get("extra") or {}).get("losses") or [])
    previewer = None
    if preview is not None and preview.enabled and config.steps > 0:
        from .previews import Previewer, backbone_renderer

        pemb = bundle.encode_prompt(preview.prompt) if preview.prompt else e_comb
        previewer = Previewer(preview, backbone_renderer(bundle, pemb, preview, height=h, width=w,
                                                         negative_embeds=e_neg)).bind(model)

    def step_fn(step: int, gen: torch.Generator):
        if config.regenerate_references and step > 0:
            make_refs(derived_seed(config.teacher_seed, 1000 * step), False)
        return combined_loss(gen)

    def cb(step, tot, rec):
        if callback is not None:
            callback((2 * f) + step, total, dict(rec, phase="ttt"))

    dev = next(bundle.denoiser.parameters()).device
    ev: dict = {}
    offloaded = []
    if getattr(bundle, "device", "cpu") != "cpu" and not getattr(bundle, "cpu_offload", False) and config.steps > 0:
        # prompts are encoded and the teachers never decode: free T5 and the VAE for the student
        for part in ("text_encoder", "vae"):
            m = getattr(bundle, part, None)
            if m is not None and next(m.parameters()).device.type != "cpu":
                offloaded.append((part, next(m.parameters()).device))
        bundle.release(*[p for p, _ in offloaded])
    t1 = time.time()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            if config.eval_draws and config.steps > 0:
                ev["before"] = evaluate()
            result = train_loop([{"params": params}], step_fn, cfg, device_type=dev.type, callback=cb,
                                on_checkpoint=on_checkpoint, resume_state=resume_state, start_losses=start_losses,
                                preview=previewer)
            if config.eval_draws and config.steps > 0:
                ev["after"] = evaluate()
    finally:
        for part, d in offloaded:
            getattr(bundle, part).to(d)
    t_ttt = time.time() - t1
    model.eval()
    if config.dropout > 0:
        for m in lora_modules(model).values():
            for d in m.lora_dropout.values():
                d.train(False)
    lf = make_file(result.steps_done, result.completed)
    return TTTResult(lora=lf, train=result, references={k: v.detach().cpu() for k, v in refs.items()},
                     reference_timestep=t_ref, eval=ev,
                     seconds={"teachers": t_teachers, "ttt": t_ttt, "total": time.time() - t_start},
                     student=model if keep_student else None)
