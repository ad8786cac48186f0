"""The demo says what its video shows, from the pixel scorers, beside what true videos score; identity is
reported with its parts (shape, colour, texture) in the demo, ``miniworld score`` and the benchmark."""
from __future__ import annotations

import json

import pytest

from dual_adapter.miniworld import scorers as S
from dual_adapter.miniworld import world as W

PARTS = ("identity_shape", "identity_colour", "identity_texture")


@pytest.fixture(scope="module")
def photos():
    return W.subject_photos("striped_star", n=4, height=32, width=32)


def test_score_video_reports_identity_with_its_parts(photos):
    v = W.render(W.VideoSpec("star", "yellow", "striped", "large", "orbit", "gray"), 9, 32, 32, seed=5)
    sc = S.score_video(v, subject_photos=photos)
    score, parts = S.identity_score(v, photos, parts=True)
    assert sc["identity"] == score and [sc[k] for k in PARTS] == [parts[k[9:]] for k in PARTS]
    assert sc["identity"] <= min(sc[k] for k in PARTS) + 1e-6


def test_the_verdict_names_what_the_pixels_show(photos):
    from dual_adapter.miniworld.verdict import describe_video

    true = W.render(W.VideoSpec("star", "yellow", "striped", "large", "orbit", "gray"), 9, 32, 32, seed=5)
    d = describe_video(true, subject="striped_star", motion="orbit", photos=photos)
    assert d["summary"] == "a yellow striped star orbiting: the subject's shape, colour and texture"
    lo, hi = d["truth"]["identity"]
    assert 0.4 < lo <= d["scores"]["identity"] <= hi <= 1.0
    blob = W.render(W.VideoSpec("circle", "yellow", "plain", "small", "still", "gray"), 9, 32, 32, seed=5)
    d = describe_video(blob, subject="striped_star", motion="orbit", photos=photos,
                       prompt="a yellow striped star orbiting on a gray background")
    assert d["summary"] == ("a yellow circle with a motion classified 'still', not 'orbit': the subject's colour, not "
                            "its shape (circle, not star) and texture (plain, not striped)")
    text = "\n".join(d["lines"])
    assert d["scores"]["identity"] < lo and "true videos:" in text
    for part in ("shape", "colour", "texture"):
        assert f"    {part}" in text


def test_miniworld_score_prints_the_identity_parts(tmp_path, photos, capsys):
    from dual_adapter import media
    from dual_adapter.cli import main

    video = tmp_path / "v.webp"
    media.write_video(W.render(W.VideoSpec("star", "yellow", "striped", "large", "orbit", "gray"), 9, 32, 32), video,
                      fps=8)
    (tmp_path / "photos").mkdir()
    for i, p in enumerate(photos):
        media.save_image(p, tmp_path / "photos" / f"{i}.png")
    assert main(["miniworld", "score", str(video), "--subject", str(tmp_path / "photos")]) == 0
    out = capsys.readouterr().out
    assert all(f"{k} " in out for k in ("identity",) + PARTS), out


def test_benchmark_keeps_the_identity_parts():
    from dual_adapter.miniworld import benchmark as B

    res = B.run_benchmark(B.BenchConfig(pairs=[("striped_star", "orbit")], seeds=1, methods=["base"], sample_steps=2,
                                        threads=1), log=lambda m: None)
    assert all(isinstance(res["samples"][0][k], float) for k in PARTS)
    assert all(res["methods"]["base"][k]["n"] == 1 for k in PARTS)
    assert "| base | " in B.markdown_table(res).split("shape ↑")[1]


def test_demo_prints_what_the_video_shows(tmp_path, capsys):
    from dual_adapter.cli import main

    out = tmp_path / "demo"
    rc = main(["demo", "--steps", "4", "--sample-steps", "2", "--out-dir", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    assert "what video.mp4 shows" in stdout and "in short:" in stdout and "true videos:" in stdout
    assert "the subject doing the motion" not in stdout
    report = json.loads((out / "metrics.json").read_text())["miniworld"]
    assert set(PARTS) <= set(report) and "identity" in report["true_video_range"] and report["summary"]
