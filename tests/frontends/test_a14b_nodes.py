"""Wan 2.2 A14B in the pack's nodes (docs/wan.md "Wan 2.2 A14B"): Train Motion LoRA and Train DualReal train one
set per expert (each on the timesteps its expert serves), Save writes both files with one counter, Load finds the
twin, Apply puts each half on its own expert; a one-file LoRA applies to both experts; a pair on a one-transformer
model is refused."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDARY = 875.0
CLIP = {"class_type": "DualAdapterLoadClip", "inputs": {"path": "examples/guitar.mp4", "frames": 9, "fps": 8.0,
                                                         "height": 64, "width": 64}}
PHOTOS = {"class_type": "DualAdapterLoadPhotos", "inputs": {"path": "examples/dog", "height": 64, "width": 64}}


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _run(wf, classes):
    from dual_adapter.graph import run_workflow

    return run_workflow(wf, classes)


class _Calls:
    """The timesteps each expert runs at."""

    def __init__(self, bb):
        self.seen = {"high_noise": [], "low_noise": []}
        self.handles = [bb.get_denoiser(n).register_forward_pre_hook(self._hook(n), with_kwargs=True)
                        for n in self.seen]

    def _hook(self, name):
        def hook(_m, args, kwargs):
            self.seen[name].extend(float(x) for x in kwargs["timestep"].reshape(-1))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def test_motion_lora_per_expert_train_save_load_apply_sample(classes, out_dir, tmp_path):
    from dual_adapter.experts import PerExpert
    from dual_adapter.patches import PerDenoiser

    model = classes["DualAdapterLoadVideoModel"]().load("tiny-wan-a14b")[0]
    clip = classes["DualAdapterLoadClip"]().load(**CLIP["inputs"])[0]
    calls = _Calls(model.bundle)
    try:
        out = classes["DualAdapterTrainMotionLoRA"]().train(
            model, clip, "a dog is running", preset="tap", rank=4, alpha=4.0, dropout=0.0, learning_rate=1e-2,
            steps=2, seed=0, name="a14b_tap", gradient_checkpointing=False, preview_every=0)
    finally:
        calls.close()
    # each expert trained on the timesteps it serves
    assert calls.seen["high_noise"] and min(calls.seen["high_noise"]) >= BOUNDARY
    assert calls.seen["low_noise"] and max(calls.seen["low_noise"]) < BOUNDARY
    lora = out[0]
    assert isinstance(lora, PerExpert) and set(lora.by_name) == {"high_noise", "low_noise"}
    hi, lo = lora.by_name["high_noise"], lora.by_name["low_noise"]
    assert set(hi.state_dict) == set(lo.state_dict)
    assert any(not torch.equal(hi.state_dict[k], lo.state_dict[k]) for k in hi.state_dict)
    runs = out_dir / "runs" / "lora"
    assert sorted(p.name for p in runs.glob("a14b_tap_*_/*.safetensors")) == [
        "a14b_tap_high_noise.safetensors", "a14b_tap_low_noise.safetensors"]

    # Save: two files, one counter; Load: either file finds its twin
    saved = classes["DualAdapterSaveLoRA"]().save(lora, filename_prefix="a14b/tap", folder="output",
                                                  precision="fp32")
    files = sorted(p.name for p in (out_dir / "loras" / "a14b").iterdir())
    assert files == ["tap_high_noise_00001_.safetensors", "tap_low_noise_00001_.safetensors"], files
    assert saved["result"][0].endswith("tap_high_noise_00001_.safetensors")
    again = classes["DualAdapterSaveLoRA"]().save(lora, filename_prefix="a14b/tap", folder="output")
    assert again["result"][0].endswith("tap_high_noise_00002_.safetensors")
    loaded = classes["DualAdapterLoadLoRA"]().load("output/loras/a14b/tap_low_noise_00001_.safetensors")[0]
    assert isinstance(loaded, PerExpert) and set(loaded.by_name) == {"high_noise", "low_noise"}
    for n in ("high_noise", "low_noise"):
        assert all(torch.equal(loaded.by_name[n].state_dict[k], lora.by_name[n].state_dict[k])
                   for k in lora.by_name[n].state_dict)

    # Apply: each half on its expert, in the sampler
    applied = classes["DualAdapterApplyLoRA"]().apply(model, loaded, 1.0)[0]
    per = applied.patches[-1]
    assert isinstance(per, PerDenoiser) and per.by_name["high_noise"].lora is loaded.by_name["high_noise"]
    emb = classes["DualAdapterTextEncode"]().encode(model, "a dog * is running")[0]
    sampler = classes["DualAdapterSampler"]()
    base = sampler.run(model, emb, steps=4, cfg=3.0, seed=7, scheduler="euler")[0]["samples"]
    both = sampler.run(applied, emb, steps=4, cfg=3.0, seed=7, scheduler="euler")[0]["samples"]
    assert not torch.equal(both, base)
    # the high-noise half alone changes only the steps the high-noise expert serves: zero the low half
    only_hi = PerExpert({"high_noise": loaded.by_name["high_noise"]})
    hi_only = sampler.run(classes["DualAdapterApplyLoRA"]().apply(model, only_hi, 1.0)[0], emb, steps=4, cfg=3.0,
                          seed=7, scheduler="euler")[0]["samples"]
    assert not torch.equal(hi_only, base) and not torch.equal(hi_only, both)

    # a one-file LoRA applies to both experts; a pair on one-transformer Wan is refused by name
    one = classes["DualAdapterApplyLoRA"]().apply(model, hi, 1.0)[0].patches[-1]
    assert not isinstance(one, PerDenoiser)
    wan = classes["DualAdapterLoadVideoModel"]().load("tiny-wan")[0]
    with pytest.raises(DualAdapterError, match="one set per Wan 2.2 A14B expert"):
        classes["DualAdapterApplyLoRA"]().apply(wan, loaded, 1.0)


def test_dualreal_per_expert_train_save_load_apply_sample(classes, out_dir):
    from dual_adapter.experts import PerExpert
    from dual_adapter.patches import PerDenoiser

    model = classes["DualAdapterLoadVideoModel"]().load("tiny-wan-a14b")[0]
    clip = classes["DualAdapterLoadClip"]().load(**CLIP["inputs"])[0]
    photos = classes["DualAdapterLoadPhotos"]().load(**PHOTOS["inputs"])[0]
    calls = _Calls(model.bundle)
    try:
        adapters, curve = classes["DualRealTrain"]().train(
            model, photos, "dog *", clip, "a dog is running", steps=2, lr=1e-3, motion_ratio=0.5, hidden_width=8,
            groups=0, form="official", seed=0, name="a14b_dr", warmup_steps=0, checkpoint_every=0, preview_every=0)
    finally:
        calls.close()
    assert min(calls.seen["high_noise"]) >= BOUNDARY and max(calls.seen["low_noise"]) < BOUNDARY
    assert isinstance(adapters, PerExpert) and set(adapters.by_name) == {"high_noise", "low_noise"}
    assert all(a.meta.get("reference_encoder") == "tiny" for a in adapters.by_name.values())  # built-in, as tiny-wan
    assert curve.shape[0] == 1
    runs = out_dir / "runs" / "dualreal"
    assert sorted(p.name for p in runs.glob("a14b_dr_*_/*.safetensors")) == [
        "a14b_dr_high_noise.safetensors", "a14b_dr_low_noise.safetensors"]

    classes["DualRealSave"]().save(adapters, "a14b/dr")
    files = sorted(p.name for p in (out_dir / "dualreal" / "a14b").iterdir())
    assert files == ["dr_high_noise_00001_.safetensors", "dr_low_noise_00001_.safetensors"], files
    loaded = classes["DualRealLoad"]().load("output/dualreal/a14b/dr_high_noise_00001_.safetensors")[0]
    assert isinstance(loaded, PerExpert) and set(loaded.by_name) == {"high_noise", "low_noise"}
    # a training run's final file finds its twin in the sibling run folder
    run_file = next(runs.glob("a14b_dr_low_noise_*_/a14b_dr_low_noise.safetensors"))
    from dual_adapter.experts import pair_files

    assert set(pair_files(run_file)) == {"high_noise", "low_noise"}

    applied = classes["DualRealApply"]().apply(model, loaded, reference_image=photos)[0]
    assert isinstance(applied.patches[-1], PerDenoiser)
    emb = classes["DualAdapterTextEncode"]().encode(model, "a dog * is running")[0]
    sampler = classes["DualAdapterSampler"]()
    base = sampler.run(model, emb, steps=4, cfg=3.0, seed=7, scheduler="euler")[0]["samples"]
    lat = sampler.run(applied, emb, steps=4, cfg=3.0, seed=7, scheduler="euler")[0]["samples"]
    assert lat.shape == base.shape and not torch.equal(lat, base)
    frames = classes["DualAdapterVAEDecode"]().decode(model, {"samples": lat})[0]
    assert frames.shape == (9, 64, 64, 3)
    wan = classes["DualAdapterLoadVideoModel"]().load("tiny-wan")[0]
    with pytest.raises(DualAdapterError, match="one set per Wan 2.2 A14B expert"):
        classes["DualRealApply"]().apply(wan, loaded)
