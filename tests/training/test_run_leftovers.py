"""A finished training node leaves what the CLI leaves: no ``.partial`` checkpoint or ``.state`` optimiser file
(those are read only to resume an interrupted run), through the same library functions as the CLI
(``dualreal.finalize_run``, ``runs.RunFolder``)."""
from __future__ import annotations

import torch

PROMPT = "a person is playing guitar"


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and
                  (".partial." in p.name or "state." in p.name or p.name == "checkpoint.safetensors"))


def test_train_dualreal_node_leaves_the_final_file_not_its_checkpoints(tiny, out_dir, one_thread):
    from dual_adapter.dualreal import load_adapters
    from dual_adapter.patches import PatchedModel
    from nodes import dualreal_nodes as N

    with torch.inference_mode():
        adapters, _ = N.DualRealTrain().train(
            PatchedModel(tiny), torch.rand(1, 64, 96, 3), "dog *", torch.rand(9, 64, 96, 3), PROMPT, steps=3, lr=1e-3,
            motion_ratio=0.5, hidden_width=8, groups=2, form="zero_init", seed=0, name="run", warmup_steps=0,
            checkpoint_every=1)
    assert _leftovers(out_dir) == []
    final = out_dir / "runs" / "dualreal" / "run_00001_" / "run.safetensors"
    assert load_adapters(final).meta["steps"] == 3 == adapters.meta["steps"]


def test_lora_training_nodes_leave_no_state_file(tiny, out_dir, one_thread):
    from dual_adapter.patches import PatchedModel
    from nodes import customttt_nodes as C
    from nodes import lora_nodes as L

    model = PatchedModel(tiny)
    clip = torch.rand(9, 64, 96, 3)
    with torch.inference_mode():
        L.TrainMotionLoRA().train(model, clip, PROMPT, rank=4, steps=2)
        C.DualAdapterTrainSelectiveLoRA().train(model, "appearance", "a photo of a dog *", rank=4, steps=2,
                                                photos=torch.rand(2, 64, 96, 3))
        C.DualAdapterTrainSelectiveLoRA().train(model, "motion", PROMPT, preset="tap", rank=4, steps=2, clip=clip)
    assert _leftovers(out_dir) == []
    kept = sorted(p.relative_to(out_dir / "runs" / "lora").as_posix()
                  for p in (out_dir / "runs" / "lora").rglob("*.safetensors"))
    assert kept == ["motion_lora_00001_/motion_lora.safetensors", "selective_lora_00001_/selective_lora.safetensors",
                    "selective_lora_00002_/selective_lora.safetensors"], kept  # the final files
