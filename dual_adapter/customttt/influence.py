"""CustomTTT's prompt-influence analysis, one definition for every backbone (docs/customttt.md).

Which blocks carry a concept? "Injecting the concept prompt at block *i* only" is defined here as: the text
entering block *i* is the one the concept prompt produces there, while every other block receives what the
neutral prompt produces there (both taken from full reference runs on the same noisy latent and timestep).
What differs between backbones comes from the backbone (:class:`~dual_adapter.backbones.base.VideoBackbone`):

* **which blocks**: the blocks text enters (``BlockInfo.has_text``): every block of a DiT (CogVideoX, Wan),
  the U-Net blocks with a cross-attention (CustomTTT's "layers", 7 on SD1.5 / AnimateDiff);
* **where text enters a block**: the block's text argument (:meth:`~VideoBackbone.text_argument`). On
  CogVideoX text reaches a block only through its joint attention over ``[text; visual]`` tokens and the text
  tokens are carried (and updated) from block to block, so the injected stream is the one the concept run
  carries into that block; on Wan and the U-Nets every block's cross-attention reads the same text
  embedding, so injecting is giving that block's cross-attention the concept embedding;
* **how a block's text contribution is measured**: the prediction in ``space`` (``x0``: the backbone's
  clean-latent estimate :meth:`~VideoBackbone.x0_from_prediction`; ``v``: the denoiser's own output), at
  ``x_t`` made by the backbone's forward process (:meth:`~VideoBackbone.noisy_latents`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import DualAdapterError
from ..seeds import seed_generator
from .config import SPACES, Callback

__all__ = ["InfluenceResult", "prompt_influence", "make_groups", "text_blocks"]




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


def text_blocks(backbone, denoiser: nn.Module | None = None) -> list:
    """The blocks text enters, in forward order (:class:`~dual_adapter.backbones.base.BlockInfo`): the units
    prompt influence scores and block indices of layer-selective LoRAs count on a U-Net; every block of a DiT."""
    return [b for b in backbone.blocks(denoiser) if b.has_text]


class _InfluenceState:
    """Shared by the block wrappers of one influence run (what to record / inject / replay)."""

    def __init__(self, n: int):
        self.n = n
        self.mode = "plain"  # "record" | "inject"
        self.record_outputs = False
        self.text: list = [None] * n  # text entering each block (recorded)
        self.outputs: list = [None] * n  # what each block returned (recorded)
        self.override: list = [None] * n  # text to feed each block (inject)
        self.replay: list | None = None  # neutral outputs, for blocks before the first injected one
        self.start = 0

    def clear(self) -> None:
        self.mode = "plain"
        self.text, self.outputs, self.override, self.replay = [None] * self.n, [None] * self.n, [None] * self.n, None


class _InfluenceBlock(nn.Module):
    """Wraps one block: records its text input and output, or replaces its text input (the block's text argument
    is ``keyword`` or, when passed by position, ``args[position]``)."""

    def __init__(self, inner: nn.Module, index: int, state: _InfluenceState, keyword: str, position: int | None):
        super().__init__()
        self.inner = inner
        self.index = index
        self.state = state
        self.keyword = keyword
        self.position = position

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # what the denoiser asks its block (a U-Net: ``has_cross_attention``)
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        st, i = self.state, self.index
        by_key = self.keyword in kwargs or self.position is None or len(args) <= self.position
        if st.mode == "record":
            st.text[i] = kwargs.get(self.keyword) if by_key else args[self.position]
        elif st.mode == "inject":
            if i < st.start:  # identical to the neutral run up to the first injected block: replay it
                return st.replay[i]
            if by_key:
                kwargs[self.keyword] = st.override[i]
            else:
                args = args[:self.position] + (st.override[i],) + args[self.position + 1:]
        out = self.inner(*args, **kwargs)
        if st.mode == "record" and st.record_outputs:
            st.outputs[i] = out
        return out


class _InfluencePatch:
    """Model patch: wrap every text block of a (weight-sharing) copy in :class:`_InfluenceBlock`."""

    def __init__(self, backbone, state: _InfluenceState):
        self.backbone = backbone
        self.state = state

    def apply(self, denoiser) -> None:
        keyword, position = self.backbone.text_argument()
        for j, b in enumerate(text_blocks(self.backbone, denoiser)):
            denoiser.set_submodule(b.name, _InfluenceBlock(b.module, j, self.state, keyword, position))


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

        from ..plots import figure_to_image, new_figure

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


def _influence_inputs(bb, *, timesteps, seeds, latents, num_frames, height, width, sched):
    """The draws: ``[(x_t, t [1])]`` on the backbone's device (``x_t`` in its latent layout)."""
    c_dim = bb.latent_layout.index("C")
    if latents is not None:
        if not torch.is_tensor(latents) or latents.ndim not in (4, 5):
            raise DualAdapterError(f"latents must be scaled video latents in the model's layout ({bb.latent_layout}, "
                                   f"or without the batch axis), got "
                                   f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}")
        lat = latents[None] if latents.ndim == 4 else latents
        if lat.shape[c_dim] != bb.latent_channels:
            raise DualAdapterError(f"latents have {lat.shape[c_dim]} channels, the model takes {bb.latent_channels}")
        lat = bb.pad_latent_frames(lat.detach().float().cpu())
        shape = (1,) + tuple(lat.shape[1:])
    else:
        f0, h0, w0 = bb.default_size
        num_frames, height, width = int(num_frames or f0), int(height or h0), int(width or w0)
        bb.check_video_size(num_frames, height, width)
        shape = tuple(bb.latent_shape(1, num_frames, height, width))
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
            x_t = bb.noisy_latents(sched, x0, eps, tt)
            draws.append((x_t.to(bb.device, bb.dtype), tt.to(bb.device)))
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

    Blocks are the blocks text enters (:func:`text_blocks`: every block of a DiT, the cross-attention
    blocks of a U-Net), numbered 0.. in forward order. For every draw ``d`` (a noise seed x a timestep:
    ``x_t`` = the backbone's :meth:`~dual_adapter.backbones.base.VideoBackbone.noisy_latents` of ``x_0`` from
    ``latents`` or ``N(0, I)``; on Wan timestep ``t`` is the noise level ``sigma = t / 1000``) three kinds of
    predictions are made with the same ``x_t`` and ``t``:

      * ``p_n``: neutral prompt at every block; ``p_c``: concept prompt at every block;
      * ``p_g``: the text entering each block of group ``g`` is the one the concept run has there, every
        other block gets the one the neutral run has there (on CogVideoX the text tokens' own updates inside
        a block are discarded: each block's text input comes from a reference run; on Wan and the U-Nets this
        is the concept embedding in the cross-attention of the group's blocks).

    Predictions are in ``space`` (``"x0"``: the backbone's clean-latent estimate
    :meth:`~dual_adapter.backbones.base.VideoBackbone.x0_from_prediction`; ``"v"``: the raw output: v on
    CogVideoX, epsilon on the U-Nets, the flow velocity on Wan). With ``d_g = p_g - p_n`` and ``d_c = p_c - p_n`` summed over all draws and elements:

        ``score_g = <d_g, d_c> / ||d_c||^2``            (projection; the table's main column)
        ``closeness_g = 1 - ||p_g - p_c|| / ||d_c||``

    Injecting at every block gives exactly ``p_c`` (score 1, closeness 1); a block whose text
    input does not matter scores 0. Scores are deterministic for fixed seeds. The recommended set
    for a concept is the union of its ``top_k`` best groups.

    Cost: per draw, one neutral run, then per concept one full run plus one run per group (blocks
    before the group's first block are replayed from the neutral run, not recomputed). Memory: the
    neutral run's per-block outputs are kept for one draw (``L x tokens x D``).

    Args:
        bundle: the model. concepts: ``{"appearance": "dog *", "motion": "a car is turning"}`` or one prompt
            (named ``"concept"``). neutral_prompt: what the other blocks see (default the empty prompt).
        group_size / groups: score contiguous groups of ``group_size`` blocks, or explicit groups.
        timesteps: integer timesteps in ``[0, 1000)``. seeds: noise seeds (draws = seeds x timesteps).
        latents: optional clean latents in the model's layout (``[N, F, C, h, w]`` on the DiTs, ``[N, C, F, h,
            w]`` on the U-Nets; e.g. an encoded subject photo or clip) used as
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
    from ..backbones import as_backbone
    from ..patches import patched_copy

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
    n = len(text_blocks(bb))
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
        model = patched_copy(base, list(patches or ()) + [_InfluencePatch(bb, state)])
        def pred(x_t, t, e):
            v = bb.predict(x_t, t, e, denoiser=model).float()
            if space == "v":
                return v
            return bb.x0_from_prediction(sched, v, x_t.float(), t).float()

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
                state.mode, state.record_outputs = "record", True
                p_n = pred(x_t, t, e_n)
                text_n = list(state.text)
                out_n = list(state.outputs)
                tick({"run": "neutral"})
                for c in names:
                    state.mode, state.record_outputs = "record", False
                    p_c = pred(x_t, t, e_c[c])
                    text_c = list(state.text)
                    tick({"run": c})
                    d_c = (p_c - p_n).double()
                    den[c] += float((d_c * d_c).sum())
                    for gi, g in enumerate(grp):
                        gs = set(g)
                        state.mode = "inject"
                        state.override = [text_c[j] if j in gs else text_n[j] for j in range(n)]
                        state.start, state.replay = min(g), out_n
                        p_g = pred(x_t, t, e_n)
                        num[c][gi] += float(((p_g - p_n).double() * d_c).sum())
                        dist2[c][gi] += float(((p_g - p_c).double() ** 2).sum())
                        tick({"run": c, "group": gi})
        finally:
            state.clear()

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


