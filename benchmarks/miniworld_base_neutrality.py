"""What the untrained mini draws for the prompts customized rows sample with (docs/results/miniworld.md, Baselines).

    python benchmarks/miniworld_base_neutrality.py [--cfg 6] [--n 12]

Prints, per prompt "a <placeholder> <shape> <verb> on a gray background" (placeholders *, shape, sks; verbs
orbiting, zigzagging, bouncing, staying still, glorping; the three held-out subjects' shapes), the colours drawn,
the motion classes and the open-set motion score against the orbit and its mirror image.
"""
from __future__ import annotations

import argparse

from dual_adapter.models import load_model
from dual_adapter.miniworld import world as W
from dual_adapter.miniworld.baselines import neutrality_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--placeholders", default="*,shape,sks")
    ap.add_argument("--verbs", default="orbiting,zigzagging,bouncing,staying still,glorping")
    a = ap.parse_args()
    shapes = tuple(s.shape for s in W.HELD_OUT_SUBJECTS.values())
    bundle = load_model("mini")
    print("| prompt | cfg | colours | motion classes | vs orbit | vs mirrored orbit |\n|---|---|---|---|---|---|")
    for p in a.placeholders.split(","):
        for v in a.verbs.split(","):
            for r in neutrality_rows(bundle, (p,), (v,), shapes, n=a.n, cfg=a.cfg):
                fmt = lambda d: ", ".join(f"{k} {x * r['n']:.0f}" for k, x in sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
                print(f"| {r['prompt']} | {r['cfg']:g} | {fmt(r['colour'])} | {fmt(r['motion_class'])} | "
                      f"{r['motion']['orbit']:.2f} | {r['motion']['orbit mirrored']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
