"""The benchmark on any motion: user clips (a folder per motion) besides the world's, results per subject and per
motion as well as pooled with the subjects weighing equally, and each method's gain over the base sampled with the
same prompt."""
from __future__ import annotations

import pytest

from dual_adapter.errors import DualAdapterError
from dual_adapter.miniworld import benchmark as B
from dual_adapter.miniworld import world as W
from dual_adapter.miniworld.baselines import mirrored


@pytest.fixture(scope="module")
def ccw(tmp_path_factory):
    from dual_adapter import media

    d = tmp_path_factory.mktemp("ccw")
    for i, s in enumerate((W.Subject("square", "green", "plain"), W.Subject("cross", "blue", "striped"))):
        media.write_video(W.render_path(s, mirrored(W.trajectory("orbit", 13))), d / f"{i}.gif", fps=8)  # 13 frames
    return d


@pytest.fixture(scope="module")
def res(ccw):
    cfg = B.BenchConfig(pairs=[("striped_star", "orbit"), ("striped_star", "orbit_ccw"), ("dotted_triangle", "orbit_ccw")],
                        seeds=1, methods=["base", "base_placeholder", "tap_motion"], lora_steps=1, sample_steps=2,
                        jobs=1, threads=1, user_motions={"orbit_ccw": str(ccw)})
    return B.run_benchmark(cfg, log=lambda m: None)


def test_user_motion_runs_and_is_reported_per_subject_and_motion(res):
    assert [s["target_motion"] for s in res["samples"] if s["method"] == "base"] == ["orbit", "orbit_ccw", "orbit_ccw"]
    assert set(res["by_motion"]["base"]) == {"orbit", "orbit_ccw"}
    assert set(res["by_subject"]["base"]) == {"striped_star", "dotted_triangle"}
    # a user motion's prompt uses its name as the verb; the placeholder row samples with the placeholder prompt
    prompts = {(s["method"], s["subject"], s["target_motion"]): s["prompt"] for s in res["samples"]}
    assert prompts[("base_placeholder", "striped_star", "orbit_ccw")] == "a * star orbit_ccw on a gray background"
    assert prompts[("base", "striped_star", "orbit")] == "a yellow striped star orbiting on a gray background"
    # the true videos follow the user clips' path (resampled to the model's 9 frames) and score high against it
    assert res["truth"]["striped_star:orbit_ccw"]["motion"][0] > 0.9
    md = B.markdown_table(res)
    for what in ("Per subject", "Per motion", "Gain over the untrained base", "True videos", "What the videos show"):
        assert what in md


def test_subjects_weigh_equally_and_gain_is_over_the_same_prompt_base(res):
    rows = [s for s in res["samples"] if s["method"] == "tap_motion"]
    star = [s["motion"] for s in rows if s["subject"] == "striped_star"]
    tri = [s["motion"] for s in rows if s["subject"] == "dotted_triangle"]
    assert res["methods"]["tap_motion"]["motion"]["mean"] == pytest.approx((sum(star) / 2 + sum(tri)) / 2)
    assert B.BASELINE["tap_motion"] == "base" and B.BASELINE["dualreal"] == "base_placeholder"
    base = {(s["subject"], s["target_motion"]): s for s in res["samples"] if s["method"] == "base"}
    diffs = {(s["subject"], s["target_motion"]): s["identity"] - base[(s["subject"], s["target_motion"])]["identity"]
             for s in rows}
    want = (sum(v for k, v in diffs.items() if k[0] == "striped_star") / 2 + diffs[("dotted_triangle", "orbit_ccw")]) / 2
    assert res["gain"]["tap_motion"]["identity"]["mean"] == pytest.approx(want)
    assert res["gain"]["tap_motion"]["baseline"] == "base" and "base" not in res["gain"]


def test_user_motions_are_checked(ccw, tmp_path):
    with pytest.raises(DualAdapterError, match="not a folder"):
        B.BenchConfig(user_motions={"spiral": str(tmp_path / "missing")}).validate()
    with pytest.raises(DualAdapterError, match="world motion"):
        B.BenchConfig(user_motions={"orbit": str(ccw)}).validate()
    with pytest.raises(DualAdapterError, match="motion of"):
        B.BenchConfig(pairs=[("striped_star", "spiral")]).validate()
    from dual_adapter.cli import main

    assert main(["miniworld", "benchmark", "--motion-clips", "spiral", "--out-dir", str(tmp_path)]) == 2
