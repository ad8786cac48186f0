"""The StageBlender controller and the split of blocks into weight groups (docs/dualreal.md,
paper eqs. 7-12, built in the released code's form).

Input: the patch-embedded ``[text; visual]`` tokens before block 0, max-pooled over tokens
(``pool [B, D]``), and the model's timestep embedding ``temb [B, T]`` (T = 512 on 5B)::

    c = Linear(D -> T)(pool)
    shift, scale, gate = Linear(T -> 3T)(SiLU(temb))
    f = LayerNorm(c) * (1 + scale) + shift
    f = Linear(4T -> T)(GELU_tanh(Linear(T -> 4T)(f))) + gate * c
    z = Sigmoid(Linear(128 -> n)(ReLU(Linear(T -> 128)(ReLU(f)))))      (last Linear zero-initialised)
    alpha = 0.2 * z                                                     ([B, n], each in [0, 0.2])

Block ``i`` uses ``w_id = alpha[:, g(i)]`` and ``w_mo = 0.2 - alpha[:, g(i)]``; at init both are 0.1.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import DualAdapterError

__all__ = ["StageBlender", "block_groups", "group_ranges", "AUTHORS_CONTROLLER_KEYS"]

# the released code's sub-module names -> ours (used when importing the authors' adapter.pth)
AUTHORS_CONTROLLER_KEYS = {
    "channel_encoder.0": "pool_proj",
    "timestep_encoder.1": "time_mod",
    "norm": "norm",
    "fuse_proj": "mlp_in",
    "fuse_proj_down": "mlp_out",
    "fusion_net.1": "head_hidden",
    "fusion_net.3": "head_out",
}


def block_groups(num_blocks: int, groups: int) -> list[int]:
    """The weight group of each block: ``g(i) = floor(i * n / L)``.

    Groups are contiguous, non-empty, in depth order, and their sizes differ by at most one
    (42 blocks / 7 groups -> 6 blocks each, as in the paper; 30 / 7 -> sizes 5 and 4).

    Returns:
        ``[L]`` list of group indices in ``0..n-1``.

    Raises:
        DualAdapterError: ``groups < 1`` or more groups than blocks.
    """
    L, n = int(num_blocks), int(groups)
    if L < 1:
        raise DualAdapterError(f"num_blocks={num_blocks}: must be >= 1")
    if n < 1 or n > L:
        raise DualAdapterError(f"groups={groups}: must be between 1 and the model's block count ({L})")
    return [i * n // L for i in range(L)]


def group_ranges(num_blocks: int, groups: int) -> list[tuple[int, int]]:
    """``[(first_block, last_block_exclusive)]`` for each group (see :func:`block_groups`)."""
    g = block_groups(num_blocks, groups)
    out = []
    for k in range(int(groups)):
        idx = [i for i, gi in enumerate(g) if gi == k]
        out.append((idx[0], idx[-1] + 1))
    return out


class StageBlender(nn.Module):
    """StageBlender controller: per-sample identity weights ``alpha [B, n]`` in ``[0, scale]``.

    Args:
        dim: transformer width D. time_dim: timestep-embedding width T.
        groups: weight groups n. hidden: head width (128). scale: w_id + w_mo (0.2).

    ``forward(pool [B, D], temb [B, T]) -> alpha [B, n]``; the motion weight is ``scale - alpha``.
    """

    def __init__(self, dim: int, time_dim: int, groups: int = 7, hidden: int = 128, scale: float = 0.2):
        super().__init__()
        self.groups = int(groups)
        self.scale = float(scale)
        self.pool_proj = nn.Linear(dim, time_dim)
        self.time_mod = nn.Linear(time_dim, 3 * time_dim)
        self.norm = nn.LayerNorm(time_dim, eps=1e-5, elementwise_affine=True)
        self.mlp_in = nn.Linear(time_dim, 4 * time_dim)
        self.mlp_out = nn.Linear(4 * time_dim, time_dim)
        self.head_hidden = nn.Linear(time_dim, hidden)
        self.head_out = nn.Linear(hidden, self.groups)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)

    def forward(self, pool: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        c = self.pool_proj(pool)
        shift, scale, gate = self.time_mod(F.silu(temb)).chunk(3, dim=-1)
        f = self.norm(c) * (1 + scale) + shift
        f = self.mlp_out(F.gelu(self.mlp_in(f), approximate="tanh")) + gate * c
        z = torch.sigmoid(self.head_out(F.relu(self.head_hidden(F.relu(f)))))
        return self.scale * z
