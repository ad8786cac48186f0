"""Every file a Save node writes can be picked by the matching Load node in the next queue (its list is read
again, as ComfyUI does for each queue), and each Load node lists only files it can load."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _choices(cls, name):
    return cls.INPUT_TYPES()["required"][name][0]


def _listed_name(path: Path, out_dir: Path) -> str:
    return "output/" + path.resolve().relative_to(out_dir.resolve()).as_posix()


@pytest.mark.parametrize("prefix", ["dualreal", "runs/star", "dualreal/star_orbit"])
def test_save_dualreal_then_load_dualreal(out_dir, prefix):
    from nodes import dualreal_nodes as N

    (adapters,) = N.DualRealLoad().load("examples/dualreal_tiny_dog_guitar.safetensors")
    path = Path(N.DualRealSave().save(adapters, prefix)["ui"]["text"][0])
    assert path.is_relative_to(out_dir / "dualreal")
    name = _listed_name(path, out_dir)
    assert name in _choices(N.DualRealLoad, "adapters_name")
    (again,) = N.DualRealLoad().load(name)
    assert again.config == adapters.config


def test_a_training_runs_checkpoint_is_listed_but_not_its_optimiser_state(out_dir):
    from nodes import dualreal_nodes as N

    runs = out_dir / "dualreal"
    runs.mkdir()
    (adapters,) = N.DualRealLoad().load("examples/dualreal_tiny_dog_guitar.safetensors")
    from dual_adapter.dualreal import save_adapters

    save_adapters(adapters, runs / "r_00001_.partial.safetensors")
    (runs / "r_00001_.state.safetensors").write_bytes(b"x")
    names = _choices(N.DualRealLoad, "adapters_name")
    assert "output/dualreal/r_00001_.partial.safetensors" in names
    assert not any(n.endswith(".state.safetensors") for n in names)


def _cog_lora():
    from dual_adapter.lora import LoraFile

    k = "transformer.transformer_blocks.0.attn1.to_q"
    return LoraFile({f"{k}.lora_A.weight": torch.zeros(2, 64), f"{k}.lora_B.weight": torch.zeros(64, 2)},
                    rank=2, alpha=2.0, targets=["attn1.to_q"], blocks=[0])


def _unet_lora():
    from dual_adapter.unet_motion import UNetLora

    k = "unet.down_blocks.0.motion_modules.0.to_q"
    return UNetLora({f"{k}.lora_A.weight": torch.zeros(2, 8), f"{k}.lora_B.weight": torch.zeros(8, 2)},
                    {"backbone": "unet3d", "role": "motion"}, name="m")


def test_save_lora_then_load_lora_of_both_kinds(out_dir):
    from nodes import lora_nodes as LN
    from nodes.old_names import NODE_CLASS_MAPPINGS as OLD

    cog = Path(LN.SaveLoRA().save(_cog_lora(), "tap/orbit", folder="output")["result"][0])
    unet = Path(OLD["DualAdapterUNetSaveLoRA"]().run_old_name(lora=_unet_lora(), filename_prefix="motion")["result"][0])
    assert unet.is_relative_to(out_dir / "unet_lora")  # the old name writes where it wrote
    cog_name, unet_name = _listed_name(cog, out_dir), _listed_name(unet, out_dir)
    listed = _choices(LN.LoadLoRA, "lora_name")
    assert cog_name in listed and unet_name in listed  # one Load LoRA for every backbone
    assert LN.LoadLoRA().load(cog_name)[0].rank == 2
    loaded = LN.LoadLoRA().load(unet_name)[0]  # one LoraFile type for every backbone; a U-Net's keys start unet.
    assert type(loaded).__name__ == "LoraFile" and loaded.prefix == "unet"


def test_train_then_load_through_the_run_folder(tiny, out_dir, one_thread):
    """What a Train node finished is listed by its Load node from the run folder and loads to the same weights; a
    stopped run's checkpoint is listed, its state file is not; files written before run folders are still listed."""
    from dual_adapter.dualreal import save_adapters
    from dual_adapter.errors import InterruptedByUser
    from dual_adapter.patches import PatchedModel
    from nodes import bridge
    from nodes import dualreal_nodes as N
    from nodes import lora_nodes as LN

    kw = dict(subject=torch.rand(1, 64, 96, 3), identity_prompt="dog *", motion=torch.rand(9, 64, 96, 3),
              motion_prompt="a dog runs", steps=2, lr=1e-3, motion_ratio=0.5, hidden_width=4, groups=1,
              form="zero_init", seed=0, name="r", warmup_steps=0, checkpoint_every=1)
    with torch.inference_mode():
        adapters, _ = N.DualRealTrain().train(PatchedModel(tiny), **kw)

        class StopAt1(bridge.Progress):
            def __call__(self, step, total=None, info=None, preview=None):
                if step == 1:
                    raise InterruptedByUser("cancelled")
                return super().__call__(step, total, info, preview)

        real = N.bridge.Progress
        N.bridge.Progress = StopAt1
        try:
            with pytest.raises(InterruptedByUser):
                N.DualRealTrain().train(PatchedModel(tiny), **dict(kw, steps=3))
        finally:
            N.bridge.Progress = real
    (out_dir / "dualreal").mkdir()
    save_adapters(adapters, out_dir / "dualreal" / "old_00001_.safetensors")  # a file from before run folders
    names = _choices(N.DualRealLoad, "adapters_name")
    final, stopped = "output/runs/dualreal/r_00001_/r.safetensors", "output/runs/dualreal/r_00002_/checkpoint.safetensors"
    assert final in names and stopped in names and "output/dualreal/old_00001_.safetensors" in names
    assert not any(n.endswith("state.safetensors") for n in names)
    (again,) = N.DualRealLoad().load(final)
    assert all(torch.equal(v, again.state_dict[k]) for k, v in adapters.state_dict.items())
    assert N.DualRealLoad().load(stopped)[0].meta["steps"] == 1

    lf, _ = LN.TrainMotionLoRA().train(PatchedModel(tiny), torch.rand(9, 64, 96, 3), "a dog runs", rank=2,
                                       alpha=2.0, steps=1, name="t", gradient_checkpointing=False)
    name = "output/runs/lora/t_00001_/t.safetensors"
    assert name in _choices(LN.LoadLoRA, "lora_name")
    back = LN.LoadLoRA().load(name)[0]
    assert all(torch.equal(v, back.state_dict[k]) for k, v in lf.state_dict.items())

    from dual_adapter.backbones import load_backbone

    ul, _ = LN.TrainMotionLoRA().train(PatchedModel(load_backbone("tiny-unet3d")), torch.rand(2, 32, 32, 3),
                                       "a car turns", rank=2, alpha=2.0, steps=1, name="u")
    name = "output/runs/lora/u_00001_/u.safetensors"
    assert name in _choices(LN.LoadLoRA, "lora_name")
    assert LN.LoadLoRA().load(name)[0].rank == 2
