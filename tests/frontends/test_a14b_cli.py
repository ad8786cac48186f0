"""Wan 2.2 A14B on the command line (docs/wan.md "Wan 2.2 A14B"): train-lora and train-dualreal train one set per
expert and write X_high_noise / X_low_noise.safetensors; generate --lora / --dualreal take either file of a pair
and find its twin (or both, a strength each); a one-expert-less file applies to both experts."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
CLIP = str(ROOT / "examples" / "guitar.mp4")
SIZE = ["--frames", "9", "--height", "64", "--width", "64"]


@pytest.fixture(scope="module")
def a14b():
    from dual_adapter.backbones import load_backbone

    return load_backbone("tiny-wan-a14b")


def _gen_args(**kw):
    base = dict(lora=[], dualreal=None, reference_image=None, reference_embedding=None,
                dualreal_reference_encoder=None, dualreal_identity_scale=1.0, dualreal_motion_scale=1.0,
                dualreal_fixed_weights=None, quiet=True)
    return argparse.Namespace(**{**base, **kw})


def test_train_lora_per_expert_then_generate_with_either_file(a14b, tmp_path, capsys):
    from dual_adapter import lora as L
    from dual_adapter.cli import main
    from dual_adapter.commands.lora import generate_patches
    from dual_adapter.patches import PerDenoiser

    out = tmp_path / "tap.safetensors"
    cmd = ["train-lora", "--model", "tiny-wan-a14b", "--motion", CLIP, "--prompt", "a person is playing guitar",
           "--steps", "2", "--rank", "4", "--dropout", "0", "--checkpoint-every", "0", *SIZE, "--out", str(out),
           "--quiet"]
    assert main(cmd) == 0, capsys.readouterr().err
    hi, lo = tmp_path / "tap_high_noise.safetensors", tmp_path / "tap_low_noise.safetensors"
    assert hi.is_file() and lo.is_file() and not out.exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "lora").iterdir()) == [
        "tap_high_noise_00001_", "tap_low_noise_00001_"]  # one run folder per expert
    a, b = L.load_lora(hi), L.load_lora(lo)
    assert set(a.state_dict) == set(b.state_dict)
    assert any(not torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    capsys.readouterr()
    assert main(cmd) == 2 and "already exist" in capsys.readouterr().err  # never overwritten

    # either file finds its twin; each half goes to its expert
    for given in (lo, hi):
        (p,) = generate_patches(_gen_args(lora=[str(given)]), a14b)
        assert isinstance(p, PerDenoiser) and set(p.by_name) == {"high_noise", "low_noise"}
        for n, f in (("high_noise", hi), ("low_noise", lo)):
            got = p.by_name[n].lora.state_dict
            assert all(torch.equal(got[k], L.load_lora(f).state_dict[k]) for k in got)
    # both given: one pair, a strength each
    (p,) = generate_patches(_gen_args(lora=[f"{hi}:0.5", f"{lo}:0.25"]), a14b)
    assert p.by_name["high_noise"].strength == 0.5 and p.by_name["low_noise"].strength == 0.25
    # a file of no expert applies to both experts (a plain patch)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(hi.read_bytes())
    (p,) = generate_patches(_gen_args(lora=[str(plain)]), a14b)
    assert not isinstance(p, PerDenoiser)
    # the twin missing: its own expert only
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "x_high_noise.safetensors").write_bytes(hi.read_bytes())
    (p,) = generate_patches(_gen_args(lora=[str(alone / "x_high_noise.safetensors")]), a14b)
    assert p.by_name["low_noise"] is None and p.by_name["high_noise"] is not None

    video = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-wan-a14b", "--prompt", "a person is playing guitar", *SIZE,
                 "--steps", "3", "--lora", str(lo), "--out", str(video), "--quiet"]) == 0, capsys.readouterr().err
    assert video.stat().st_size > 0


def test_train_dualreal_per_expert_then_generate(a14b, tmp_path, capsys):
    from dual_adapter.cli import main
    from dual_adapter.commands.dualreal import generate_patches
    from dual_adapter.dualreal import load_adapters
    from dual_adapter.patches import PerDenoiser

    out = tmp_path / "dr.safetensors"
    cmd = ["train-dualreal", "--model", "tiny-wan-a14b", "--subject", str(ROOT / "examples" / "dog"),
           "--identity-prompt", "dog *", "--motion", CLIP, "--motion-prompt", "a dog is playing guitar",
           "--steps", "2", "--warmup", "0", "--hidden", "8", "--motion-batch", "1", "--checkpoint-every", "0",
           *SIZE, "--out", str(out)]
    assert main(cmd) == 0, capsys.readouterr().err
    hi, lo = tmp_path / "dr_high_noise.safetensors", tmp_path / "dr_low_noise.safetensors"
    assert hi.is_file() and lo.is_file() and not out.exists()
    assert load_adapters(hi).meta.get("reference_encoder") == "tiny"  # tiny-wan-a14b's built-in encoder
    (p,) = generate_patches(_gen_args(dualreal=str(hi), reference_image=str(ROOT / "examples" / "dog" /
                                                                               sorted((ROOT / "examples" / "dog").iterdir())[0].name)), a14b)
    assert isinstance(p, PerDenoiser) and set(p.by_name) == {"high_noise", "low_noise"}
    assert p.by_name["low_noise"].adapters.meta["steps"] == 2
    video = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-wan-a14b", "--prompt", "dog * is playing guitar", *SIZE,
                 "--steps", "3", "--dualreal", str(lo), "--out", str(video), "--quiet"]) == 0, capsys.readouterr().err
    assert video.stat().st_size > 0
