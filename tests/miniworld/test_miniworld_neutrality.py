"""Is the prompt a customized row samples with neutral on the untrained base? Measured on the shipped mini: what
"a * <shape> orbiting on a gray background" draws before any training (docs/results/miniworld.md, "Baselines").

Measured (12 samples per prompt, cfg 6, 20 DPM steps): every placeholder tried ("*", "shape", the unknown word
"sks") and every verb ("orbiting", "zigzagging", "bouncing", "staying still", the unknown "glorping") draws a
yellow sprite in 12 of 12 samples with "star"; the open-set motion score against the orbit and against its mirror
image is 0.00-0.03 for every one of them. So the prompt is neutral about the direction of the held-out motions but
not about colour: no placeholder in the mini's vocabulary leaves the colour open, and the benchmark reports each
method's gain over the base sampled with the same prompt (``base_placeholder``) rather than raw scores.
"""
from __future__ import annotations

import pytest

from dual_adapter.miniworld import world as W
from dual_adapter.miniworld.baselines import neutrality_rows

N = 6
DIRECTION_TOL = 0.1  # measured: 0.00-0.03 against either direction (12 samples per prompt)


@pytest.fixture(scope="module")
def rows():
    from dual_adapter.models import load_model

    return neutrality_rows(load_model("mini"), shapes=tuple(W.HELD_OUT_SUBJECTS[s].shape for s in W.HELD_OUT_SUBJECTS),
                           n=N, steps=20, cfg=6.0, seed=0)


def test_placeholder_prompt_prefers_no_direction(rows):
    for r in rows:
        a, b = r["motion"]["orbit"], r["motion"]["orbit mirrored"]
        assert a <= DIRECTION_TOL and b <= DIRECTION_TOL and abs(a - b) <= DIRECTION_TOL, r


def test_placeholder_prompt_prefers_one_colour(rows):
    """Not neutral: one colour in at least 5 of 6 samples for every subject's shape (measured: yellow, 12 of 12
    for the star), where a neutral prompt would spread over the subjects' three colours."""
    for r in rows:
        top = max(r["colour"].values())
        assert top >= 5 / N - 1e-6, r
