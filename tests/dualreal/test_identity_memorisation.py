"""End-to-end memorisation check of DualReal's identity phase on the ``mini``: photo files of one plain-coloured
sprite -> identity-only training -> single frames sampled with the identity prompt -> the sprite's colour.

Through the public paths: the CLI (``train-dualreal --motion-ratio 0`` then ``generate --frames 1``, files in and
out) and the nodes (Train DualReal -> Apply DualReal -> Sampler -> Decode). The base draws the unnamed subject in
its default colour (yellow, about 1.2 from blue in RGB); trained on the photos the sample must come within 0.35 of
the photos' colour. Sampled without guidance (cfg 1): at the guidance of 6 every method loses the colour on the
``mini``, a finding about the method at this scale (docs/results/identity_phase.md), not a path to test here.
"""
from __future__ import annotations

import pytest
import torch

from dual_adapter.miniworld import scorers as S
from dual_adapter.miniworld import world as W

pytestmark = pytest.mark.slow

PROMPT = "a * circle on a gray background"
SUBJECT = W.Subject("circle", "blue", "plain")
STEPS = 300  # the probe loss on the photos is within 3% of its 1000-step value by then (identity_phase.md)
GRAY = torch.tensor(W.BACKGROUNDS["gray"])


def _colour(frame: torch.Tensor) -> torch.Tensor:
    tr = S.track(frame[None], background=GRAY)
    assert tr.area[0] >= 3, "no sprite in the sample"
    return tr.main[0]


@pytest.fixture(scope="module")
def photos():
    return W.subject_photos(SUBJECT, n=4, seed=0)


@pytest.fixture(scope="module")
def target(photos):
    return torch.stack([_colour(p) for p in photos]).mean(0)


def test_cli_identity_phase_learns_the_photos_colour(tmp_path, photos, target, one_thread):
    from dual_adapter import media
    from dual_adapter.cli import main

    pdir = tmp_path / "photos"
    pdir.mkdir()
    for i, p in enumerate(photos):
        media.save_image(p, pdir / f"{i}.png")
    clip = media.write_video(W.motion_clips("orbit", n=1, seed=0)[0][0], tmp_path / "clip.webp")
    ada = tmp_path / "id.safetensors"
    assert main(["train-dualreal", "--model", "mini", "--subject", str(pdir), "--identity-prompt", PROMPT,
                 "--motion", str(clip), "--motion-prompt", "a shape orbiting on a gray background",
                 "--motion-ratio", "0", "--motion-batch", "1", "--steps", str(STEPS), "--warmup", str(STEPS // 10),
                 "--no-gradient-checkpointing", "--out", str(ada)]) == 0
    dist = {}
    for name, extra in (("base", []), ("dualreal", ["--dualreal", str(ada)])):
        for seed in (0, 1):
            f = tmp_path / f"{name}{seed}.webp"
            assert main(["generate", "--model", "mini", *extra, "--prompt", PROMPT, "--frames", "1", "--steps", "20",
                         "--cfg", "1", "--seed", str(seed), "--out", str(f), "--quiet"]) == 0
            dist[name, seed] = float((_colour(media.load_clip(f)[0][0]) - target).norm())
    assert min(dist["base", s] for s in (0, 1)) > 0.8, dist  # the base does not draw the subject's colour
    assert max(dist["dualreal", s] for s in (0, 1)) < 0.35, dist


def test_nodes_identity_phase_learns_the_photos_colour(tmp_path, monkeypatch, photos, target, one_thread):
    from dual_adapter.models import load_model
    from dual_adapter.patches import PatchedModel
    from nodes import bridge
    from nodes import core_nodes as C
    from nodes import dualreal_nodes as N

    monkeypatch.setattr(bridge, "output_dir", lambda: tmp_path)
    model = PatchedModel(load_model("mini"))
    clip = W.motion_clips("orbit", n=1, seed=0)[0][0]
    with torch.inference_mode():  # as ComfyUI runs nodes
        adapters, _ = N.DualRealTrain().train(model, photos, PROMPT, clip,
                                              "a shape orbiting on a gray background", steps=STEPS, lr=1e-3,
                                              motion_ratio=0.0, hidden_width=64, groups=7, form="official", seed=0,
                                              name="id", warmup_steps=STEPS // 10, checkpoint_every=0)
        (patched,) = N.DualRealApply().apply(model, adapters)
        (emb,) = C.TextEncode().encode(patched, PROMPT, "")
        for seed in (0, 1):
            (lat,) = C.Sampler().run(patched, emb, frames=1, steps=20, cfg=1.0, seed=seed)
            (frames,) = C.Decode().decode(patched, lat)
            d = float((_colour(frames[0]) - target).norm())
            assert d < 0.35, (seed, d)
