"""One seed range across the pack's nodes: ComfyUI's own (0 .. 0xffffffffffffffff), and the largest seed runs."""
from __future__ import annotations

import json

import torch

SEED_MAX = 0xFFFFFFFFFFFFFFFF  # what ComfyUI's own KSampler allows


def _seed_inputs():
    import nodes

    for cname, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, s in (spec.get(section) or {}).items():
                if "seed" in name and s[0] == "INT":
                    yield cname, name, s[1]


def test_every_seed_input_takes_comfyuis_range():
    found = list(_seed_inputs())
    assert len(found) >= 8
    bad = [(c, n, o.get("min"), o.get("max")) for c, n, o in found if (o.get("min"), o.get("max")) != (0, SEED_MAX)]
    assert not bad, f"seed inputs with another range than 0 .. 2**64-1: {bad}"


def test_largest_seed_trains_and_plots(tiny, out_dir):
    """The two DualReal nodes that took at most 2**31-1 run with the largest seed the widget now allows."""
    from dual_adapter.patches import PatchedModel
    from nodes import dualreal_nodes as N

    model = PatchedModel(tiny)
    g = torch.Generator().manual_seed(0)
    subject = torch.rand(1, 64, 96, 3, generator=g)
    motion = torch.rand(9, 64, 96, 3, generator=g)
    with torch.inference_mode():
        adapters, _ = N.DualRealTrain().train(model, subject, "dog *", motion, "a dog runs", steps=1, lr=1e-3,
                                              motion_ratio=0.5, hidden_width=4, groups=1, form="zero_init",
                                              seed=SEED_MAX, name="bigseed", warmup_steps=0, reference_encoder="none")
        img, js = N.DualRealStageBlenderPlot().plot(model, adapters, "dog *", seed=SEED_MAX, steps=1, cfg=1.0)
    assert img.ndim == 4 and json.loads(js)
