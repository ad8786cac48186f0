"""StageBlender readout: each weight group's identity weight at each denoising step (paper Fig. 7).

The controller's output depends on the noisy latent and the timestep, so the readout runs the real
sampler with the adapters applied and records ``alpha`` (= w_id per group) at every model call.
With classifier-free guidance the positive (prompted) branch is reported.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import DualAdapterError
from .checkpoint import DualRealAdapterSet
from .controller import group_ranges
from .patch import DualRealPatch

__all__ = ["stageblender_readout", "plot_stageblender"]


def stageblender_readout(
    bundle,
    adapters: DualRealAdapterSet,
    prompt_embeds: torch.Tensor | str,
    *,
    reference: Any = None,
    negative_embeds: torch.Tensor | None = None,
    seed: int = 0,
    steps: int = 50,
    cfg: float = 6.0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str = "dpm",
    callback: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Sample once and record the StageBlender's identity weights.

    Args:
        adapters: trained adapters with a controller.
        prompt_embeds: ``[1, L, D_text]`` or a prompt string (encoded with the bundle's T5).
        reference: reference embedding / CLIP vision output (as for :class:`DualRealPatch`), or None.
        seed, steps, cfg, num_frames, height, width, scheduler: as :func:`dual_adapter.sampling.sample`.

    Returns:
        ``{"timesteps": [S] ints, "identity_weight": [S][n] floats in [0, 0.2] (w_id per group),
        "motion_weight": [S][n] (0.2 - w_id), "groups": n, "group_blocks": [(first, last+1)] per group,
        "mean_identity_weight": [S], "prompt": str | None, "seed": int}``.

    Raises:
        DualAdapterError: the adapters have no controller (fixed weights: nothing to read).
    """
    from ..backbones import as_backbone
    from ..sampling import sample

    if not isinstance(adapters, DualRealAdapterSet):
        raise DualAdapterError(f"adapters must be a DualRealAdapterSet, got {type(adapters).__name__}")
    if not adapters.config.controller:
        raise DualAdapterError("these DualReal adapters have no StageBlender controller (fixed weights "
                               "w_id = w_mo = 0.1): there is nothing to read out")
    prompt = None
    if isinstance(prompt_embeds, str):
        prompt = prompt_embeds
        prompt_embeds = as_backbone(bundle).encode_prompt(prompt)
    rec: list = []
    timesteps: list = []

    def cb(i, total, info):
        timesteps.append(int(info.get("timestep", i)))
        if callback is not None:
            callback(i, total, info)

    patch = DualRealPatch(adapters, reference, recorder=rec)
    sample(bundle, prompt_embeds, negative_embeds, num_frames=num_frames, height=height, width=width, steps=steps,
           cfg=cfg, seed=seed, scheduler=scheduler, patches=[patch], callback=cb)
    rows = []
    for a in rec:  # [B, n]; CFG batches [negative; positive]
        rows.append(a[a.shape[0] // 2:].mean(0) if cfg > 1.0 else a.mean(0))
    W = torch.stack(rows) if rows else torch.zeros(0, adapters.config.groups)
    S = adapters.config.scale
    cfgc = adapters.config
    return {
        "timesteps": timesteps,
        "identity_weight": W.tolist(),
        "motion_weight": (S - W).tolist(),
        "mean_identity_weight": W.mean(1).tolist() if len(rows) else [],
        "groups": cfgc.groups,
        "group_blocks": group_ranges(cfgc.num_blocks, cfgc.groups),
        "prompt": prompt,
        "seed": int(seed),
    }


def group_label(k: int, a: int | None, b: int | None) -> str:
    """Legend label of group ``k`` (0-based) covering blocks ``a`` .. ``b - 1``: ``"group 2 (blocks 2-3)"``,
    ``"group 1 (block 0)"`` for a one-block group."""
    if a is None or b is None:
        return f"group {k + 1}"
    return f"group {k + 1} (block {a})" if b - a == 1 else f"group {k + 1} (blocks {a}-{b - 1})"


def plot_stageblender(readout: dict, title: str = "StageBlender identity weights") -> torch.Tensor:
    """Plot a readout like the paper's Fig. 7: identity weight per group vs denoising step
    (shallow groups blue, the deepest red, the mean as an orange dashed line).

    Returns:
        IMAGE ``[1, H, W, 3]`` float 0..1.
    """
    import numpy as np

    from ..plots import figure_to_image, new_figure

    W = np.asarray(readout["identity_weight"], dtype=float)
    if W.ndim != 2 or W.shape[0] == 0:
        raise DualAdapterError("StageBlender readout is empty (no denoising step recorded)")
    S, n = W.shape
    x = np.arange(1, S + 1)
    fig = new_figure(7.2, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    blocks = readout.get("group_blocks") or [(None, None)] * n
    for k in range(n):
        deepest = k == n - 1 and n > 1
        shade = 0.35 + 0.6 * (k / max(n - 2, 1)) if not deepest else 1.0
        color = (0.85, 0.1, 0.1) if deepest else (0.1, 0.25 + 0.3 * (1 - shade), shade)
        a, b = blocks[k] if k < len(blocks) else (None, None)
        label = group_label(k, a, b)
        ax.plot(x, W[:, k], color=color, lw=1.4, label=label)
    ax.plot(x, W.mean(1), color="orange", lw=2.0, ls="--", label="mean")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("identity weight w_id")
    lo, hi = float(W.min()), float(W.max())
    pad = max(1e-3, 0.1 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(0.2, hi + pad) if hi + pad > lo - pad else 0.2)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return figure_to_image(fig)
