"""Resume with ``steps`` at or below the step the run already reached says so (it used to train nothing and
report success), and leaves the run's files as they were; a finished run is not continued at all."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError, InterruptedByUser

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_past_the_target_says_so(tiny, out_dir, monkeypatch):
    from dual_adapter.patches import PatchedModel
    from nodes import dualreal_nodes as N

    kw = dict(model=PatchedModel(tiny), subject=torch.rand(1, 64, 96, 3), identity_prompt="dog *",
              motion=torch.rand(9, 64, 96, 3), motion_prompt="a dog runs", steps=3, lr=1e-3, motion_ratio=0.5,
              hidden_width=4, groups=1, form="zero_init", seed=0, name="done", warmup_steps=0, checkpoint_every=1,
              reference_encoder="none")

    class StopAt2(N.bridge.Progress):  # the queue's Cancel after step 2: the checkpoint of step 2 is kept
        def __call__(self, step, total, info):
            if step == 2:
                raise InterruptedByUser("cancelled")
            return super().__call__(step, total, info)

    with torch.inference_mode():
        with monkeypatch.context() as mp, pytest.raises(InterruptedByUser):
            mp.setattr(N.bridge, "Progress", StopAt2)
            N.DualRealTrain().train(**kw)
        folder = out_dir / "runs" / "dualreal" / "done_00001_"
        before = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "config.json"}
        for steps in (2, 1):
            with pytest.raises(DualAdapterError, match=r"already at step 2.*steps=%d.*above 2" % steps):
                N.DualRealTrain().train(**dict(kw, steps=steps, resume=True))
        assert {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "config.json"} == before
        N.DualRealTrain().train(**dict(kw, resume=True))  # steps above the step reached: it finishes
        with pytest.raises(DualAdapterError, match="no stopped run named 'done' to continue"):  # a finished run
            N.DualRealTrain().train(**dict(kw, steps=4, resume=True))
