"""Cancel shows in the node: where training stopped, the loss so far (text and curve) and what was kept.

Outside ComfyUI the queue's interrupt check is a no-op, so these tests stand in for it (the same function the
node calls) and capture what the node would show (``bridge.progress_text`` and the progress bar's preview)."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import InterruptedByUser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def cancel_after(monkeypatch):
    """Cancel once the running bar has seen ``n`` losses; returns the texts shown under the node."""
    from nodes import bridge

    bars, shown = [], []
    init = bridge.Progress.__init__

    def remember(self, *a, **k):
        init(self, *a, **k)
        bars.append(self)

    def arm(n):
        def check():
            if bars and len(bars[-1].losses) >= n:
                raise InterruptedByUser("cancelled")
        monkeypatch.setattr(bridge, "throw_if_interrupted", check)
        return shown

    monkeypatch.setattr(bridge.Progress, "__init__", remember)
    monkeypatch.setattr(bridge, "progress_text", shown.append)
    return arm


def test_train_dualreal_cancel_shows_step_loss_and_how_to_resume(tiny, out_dir, cancel_after):
    from dual_adapter.dualreal import load_adapters
    from dual_adapter.patches import PatchedModel
    from nodes import dualreal_nodes as N

    shown = cancel_after(3)
    with torch.inference_mode(), pytest.raises(InterruptedByUser):
        N.DualRealTrain().train(PatchedModel(tiny), torch.rand(1, 64, 96, 3), "dog *", torch.rand(9, 64, 96, 3),
                                "a dog runs", steps=10, lr=1e-3, motion_ratio=0.5, hidden_width=4, groups=1,
                                form="zero_init", seed=0, name="stop", warmup_steps=0, checkpoint_every=0,
                                reference_encoder="none")
    assert len(shown) == 1, shown
    assert shown[0].startswith("cancelled at step 3/10 (loss ")
    run = out_dir / "runs" / "dualreal" / "stop_00001_"
    assert f"checkpoint kept: checkpoint.safetensors in {run}" in shown[0] and "resume = true" in shown[0]
    assert load_adapters(run / "checkpoint.safetensors").meta["steps"] == 3


def test_cancel_notice_shows_the_loss_curve_as_the_node_preview():
    from nodes import bridge

    class Bar:
        sent = None

        def update_absolute(self, value, total=None, preview=None):
            Bar.sent = (value, total, preview)

    recs = [{"step": k, "loss": 1.0 / k} for k in range(1, 30)]
    text = bridge.cancel_notice("step", recs, 400, "x.partial.safetensors", Bar())
    assert text == "cancelled at step 29/400 (loss 0.0345); checkpoint kept: x.partial.safetensors"
    value, total, (kind, image, size) = Bar.sent
    assert (value, total, kind) == (29, 400, "PNG") and image.size[0] > 100
    assert "before the first step" in bridge.cancel_notice("step", [], 400, "-", Bar())
