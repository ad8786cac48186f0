"""Write reference clips of paths outside the world's motion list, for ``miniworld benchmark --motion-clips``.

    python benchmarks/miniworld_path_clips.py OUT_DIR

writes ``OUT_DIR/orbit_ccw/`` (the orbit mirrored left-right: counter-clockwise) and ``OUT_DIR/square_loop/``
(a clockwise square loop), three GIF clips each, drawn by other sprites (never a held-out subject's shape and
texture) at random offsets with :func:`dual_adapter.miniworld.world.render_path`.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from dual_adapter import media
from dual_adapter.miniworld import world as W
from dual_adapter.miniworld.baselines import mirrored


def square_loop(frames: int = W.FRAMES, half: float = 0.2) -> torch.Tensor:
    """A clockwise square loop from the top middle, at constant speed over (T-1)/T of it (like the orbit)."""
    pts = torch.tensor([[0, -half], [half, -half], [half, half], [-half, half], [-half, -half], [0, -half]])
    lens = (pts[1:] - pts[:-1]).norm(dim=1)
    cum = torch.cat([torch.zeros(1), lens.cumsum(0)])
    out = []
    for k in range(frames):
        s = float(cum[-1]) * k / frames
        i = min(int((cum <= s).sum()) - 1, len(lens) - 1)
        out.append(pts[i] + (pts[i + 1] - pts[i]) * (s - float(cum[i])) / float(lens[i]))
    return torch.stack(out) + 0.5


def main(out: str) -> None:
    sprites = [W.Subject("square", "green", "plain"), W.Subject("cross", "blue", "striped"),
               W.Subject("circle", "red", "checkered")]
    for name, path in (("orbit_ccw", mirrored(W.trajectory("orbit"))), ("square_loop", square_loop())):
        rng = random.Random(5)
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (s, size) in enumerate(zip(sprites, ("large", "small", "large"))):
            v = W.render_path(s, path, size, "gray", offset=(rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)))
            media.write_video(v, folder / f"{i}.gif", fps=8, overwrite=True)
        print(f"wrote {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "output/path_clips")
