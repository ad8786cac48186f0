"""CustomTTT on Wan (docs/customttt.md, docs/wan.md): prompt influence per Wan block (the text enters through each
block's cross-attention ``attn2``), layer-selective LoRAs on the chosen blocks, and the TTT merge, all through the
same code as on CogVideoX; the CLI and the nodes take ``tiny-wan``."""
from __future__ import annotations

import json

import pytest
import torch

from dual_adapter import customttt as C
from dual_adapter.errors import DualAdapterError

from helpers import random_lora

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPTS = {"appearance": "a photo of a dog * sitting on the grass", "motion": "a car is turning on a road"}
PROMPTS = dict(appearance_prompt="a photo of dog *", motion_prompt="a car is turning", prompt="dog * is turning")


@pytest.fixture(scope="module")
def wan():
    from dual_adapter.models import load_backbone

    return load_backbone("tiny-wan")


def test_influence_per_wan_block_and_all_blocks_is_the_full_concept(wan):
    res = C.prompt_influence(wan, CONCEPTS, "", timesteps=(300, 700), seeds=(0,), top_k=1)
    n = len(wan.blocks())
    assert res.groups == [[i] for i in range(n)] and res.settings["num_blocks"] == n == 4
    for c in CONCEPTS:
        assert len(res.scores[c]) == n and all(torch.isfinite(torch.tensor(res.scores[c])))
        assert res.concept_shift[c] > 0 and len(res.recommended[c]) == 1
    assert len({round(s, 6) for s in res.scores["appearance"]}) > 1  # the blocks differ
    full = C.prompt_influence(wan, CONCEPTS, "", groups=[list(range(n))], timesteps=(500,), seeds=(0,), top_k=1)
    for c in CONCEPTS:  # the concept at every block is the concept prediction
        assert full.scores[c][0] == pytest.approx(1.0, abs=1e-6)
        assert full.closeness[c][0] == pytest.approx(1.0, abs=1e-3)


def test_a_wan_block_whose_cross_attention_is_zeroed_has_zero_influence():
    from dual_adapter.backbones import wan as W

    bb = W.build_tiny()
    out = bb.denoiser.blocks[2].attn2.to_out[0]
    with torch.no_grad():
        out.weight.zero_()
        out.bias.zero_()
    res = C.prompt_influence(bb, CONCEPTS, "", timesteps=(400,), seeds=(0, 1), top_k=1)
    for c in CONCEPTS:
        assert res.scores[c][2] == 0.0 and res.closeness[c][2] == pytest.approx(0.0, abs=1e-9)
        assert all(abs(res.scores[c][i]) > 1e-6 for i in (0, 1, 3))


def test_influence_space_x0_is_the_flow_clean_estimate(wan):
    sched = wan.noise_scheduler()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 3, 4, 8, 8, generator=g), torch.randn(1, 3, 4, 8, 8, generator=g)
    t = torch.tensor([250])
    x_t = wan.noisy_latents(sched, x0, eps, t)
    assert torch.allclose(x_t, 0.75 * x0 + 0.25 * eps, atol=1e-6)
    # the exact velocity eps - x0 gives back x0
    assert torch.allclose(wan.x0_from_prediction(sched, eps - x0, x_t, t), x0, atol=1e-5)


def test_selective_lora_on_chosen_wan_blocks(wan):
    spec = C.selective_spec("motion", "1,3", rank=2, targets="full")
    assert spec.target_modules(wan.denoiser) and all(m.split(".")[1] in ("1", "3")
                                                    for m in spec.target_modules(wan.denoiser))
    clip = torch.rand(9, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    lf, res = C.train_selective_lora(wan, "motion", "1,3", prompt="a car is turning", clips=[clip],
                                     spec=spec, cfg=C.selective_train_config("motion", steps=2))
    assert lf.blocks == [1, 3] and lf.metadata["customttt_kind"] == "motion" and res.steps_done == 2


def test_ttt_merge_on_wan_lowers_its_loss_and_changes_only_the_lora_weights(wan):
    a = random_lora(wan, [0, 1], ["attn1.to_q", "attn2.to_k"], 1)
    m = random_lora(wan, [1, 2], ["attn1.to_q", "attn1.to_v"], 2)
    base = {k: v.clone() for k, v in wan.denoiser.state_dict().items()}
    exact = C.ttt_merge(wan, a, m, config=C.TTTConfig(steps=0), **PROMPTS).lora
    cfg = C.TTTConfig(steps=12, teacher_steps=2, teacher_schedule=4, lr=3e-3, eval_draws=3, gradient_checkpointing=False)
    res = C.ttt_merge(wan, a, m, config=cfg, **PROMPTS)
    assert res.eval["after"]["loss"] < res.eval["before"]["loss"], res.eval
    assert res.references["appearance"].shape == (1, 3, 4, 8, 8) and res.reference_timestep == 0
    assert all(torch.equal(v, base[k]) for k, v in wan.denoiser.state_dict().items())  # the base is untouched
    lf = res.lora
    assert sorted(lf.state_dict) == sorted(exact.state_dict) and lf.blocks == [0, 1, 2]
    assert any(not torch.equal(lf.state_dict[k], exact.state_dict[k]) for k in lf.state_dict)  # the LoRA trained
    assert lf.metadata["method"] == "CustomTTT" and lf.metadata["base_config"]["num_layers"] == 4


def test_z_f_renoised_is_refused_on_flow_matching(wan):
    a = random_lora(wan, [0], ["attn1.to_q"], 1)
    with pytest.raises(DualAdapterError, match="flow matching.*x0_pred"):
        C.ttt_merge(wan, a, a, config=C.TTTConfig(steps=1, reference="z_f_renoised"), **PROMPTS)


def test_cli_prompt_influence_and_ttt_merge_take_tiny_wan(wan, tmp_path, capsys):
    from dual_adapter.cli import main
    from dual_adapter.lora import load_lora

    js = tmp_path / "influence.json"
    assert main(["prompt-influence", "--model", "tiny-wan", "--appearance-prompt", "a photo of dog *",
                 "--timesteps", "500", "--seeds", "0", "--top-k", "1", "--json", str(js), "--quiet"]) == 0
    assert "train-lora --blocks" in capsys.readouterr().out
    assert json.loads(js.read_text())["groups"] == [[0], [1], [2], [3]]
    a, m = tmp_path / "a.safetensors", tmp_path / "m.safetensors"
    random_lora(wan, [0, 1], ["attn1.to_q"], 1).save(a)
    random_lora(wan, [2], ["attn1.to_k"], 2).save(m)
    out = tmp_path / "merged.safetensors"
    assert main(["ttt-merge", "--model", "tiny-wan", "--appearance", str(a), "--appearance-prompt", "dog *",
                 "--motion", str(m), "--motion-prompt", "a car is turning", "--prompt", "dog * is turning",
                 "--steps", "2", "--teacher-steps", "1", "--teacher-schedule", "2", "--eval-draws", "1",
                 "--out", str(out), "--run-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    lf = load_lora(out)
    assert lf.metadata["method"] == "CustomTTT" and lf.blocks == [0, 1, 2]


def test_nodes_prompt_influence_and_ttt_merge_take_a_wan_model(wan, classes, out_dir):
    from dual_adapter.lora import LoraFile
    from dual_adapter.patches import PatchedModel

    model = PatchedModel(wan)
    with torch.inference_mode():
        r = classes["DualAdapterPromptInfluence"]().analyse(model, "a photo of dog *", "a car is turning", "",
                                                            group_size=2, top_k=1, timesteps="500", seeds="0")
    table, plot, app_blocks, mot_blocks = r["result"]
    assert "recommended" in table and len(C.parse_blocks(app_blocks)) == 2 and plot.shape[-1] == 3
    a = random_lora(wan, [0], ["attn2.to_v"], 1)
    m = random_lora(wan, [0, 3], ["attn2.to_v"], 2)
    with torch.inference_mode():
        lf, _ = classes["DualAdapterTTTMerge"]().merge(model, a, "dog *", m, "a car is turning", "dog * turning",
                                                       steps=2, teacher_steps=1, learning_rate=1e-3,
                                                       teacher_schedule=2)
    assert isinstance(lf, LoraFile) and lf.ranks["blocks.0.attn2.to_v"] == 8 and lf.blocks == [0, 3]
