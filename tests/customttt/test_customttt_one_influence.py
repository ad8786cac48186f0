"""One prompt influence for every backbone (docs/customttt.md): on AnimateDiff it scores the U-Net's text layers
(the blocks with a cross-attention) through the same code as the DiTs, and the U-Net rows read it."""
from __future__ import annotations

import pytest

from dual_adapter import customttt as C
from dual_adapter.customttt import unet as CU

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ad():
    from dual_adapter.models import load_backbone

    return load_backbone("tiny-animatediff")


def test_influence_on_a_unet_scores_its_text_layers_and_all_of_them_is_the_concept(ad):
    names = [b.name for b in C.text_blocks(ad)]
    assert names == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.2",
                     "up_blocks.3"]
    for space in C.SPACES:
        full = C.prompt_influence(ad, "a photo of a tiger", "a photo of a koala", groups=[list(range(7))],
                                  timesteps=(500,), seeds=(0,), top_k=1, space=space)
        assert full.scores["concept"][0] == pytest.approx(1.0, abs=1e-6)
    res = C.prompt_influence(ad, "a photo of a tiger", "a photo of a koala", timesteps=(700, 300), seeds=(0,),
                             space="v", top_k=1)
    rows = CU.prompt_influence(ad, "a photo of a tiger", "a photo of a koala", timesteps=(700, 300))
    assert [r["name"] for r in rows] == names
    assert [r["influence"] for r in rows] == res.closeness["concept"]
