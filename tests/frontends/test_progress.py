"""One progress format with an ETA (CLI, headless runner, evaluate), warnings once per command, plots without
empty panels."""
from __future__ import annotations

import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_progress_line_format_and_eta():
    import io

    from dual_adapter.progress import TextProgress, format_duration, format_progress

    assert format_duration(75.2) == "1:15" and format_duration(3725) == "1:02:05" and format_duration(None) == "?"
    line = format_progress("train", 3, 10, 30.0, 70.0, {"loss": 0.5, "phase": "motion"})
    assert line == "train  3/10   30%  0:30 elapsed, ETA 1:10  loss 0.5000 (motion)"
    buf = io.StringIO()  # not a terminal: about ten lines per phase, each with an ETA
    p = TextProgress("x", stream=buf)
    for k in range(1, 101):
        p(k, 100, {"loss": 1.0})
    out = buf.getvalue().splitlines()
    assert 10 <= len(out) <= 12 and out[-1].startswith("x  100/100  100%") and all("ETA" in x for x in out)
    buf2 = io.StringIO()
    p = TextProgress("m", stream=buf2)
    p(0, 50, {"stage": "loading CLIP"})  # a slow step that is not a unit of work is shown at once
    assert "loading CLIP" in buf2.getvalue()


def test_headless_run_shows_node_progress_and_durations(tmp_path, capsys):
    from dual_adapter.cli import main

    wf = json.loads((ROOT / "workflows" / "api" / "generate_mini.json").read_text())
    wf["3"]["inputs"]["steps"] = 3
    path = tmp_path / "w.json"
    path.write_text(json.dumps(wf))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "[3/5] node 3 DualAdapterSampler  3/3  100%" in err and "ETA" in err  # progress inside the node
    assert "[3/5] node 3 DualAdapterSampler: done in 0:" in err
    assert "started 0:" in err and "s)" not in err  # start offsets read as such, not as durations


def test_evaluate_reports_progress_and_skips_once(tmp_path, capsys):
    from dual_adapter import media
    from dual_adapter.cli import main

    for name in ("a", "b"):
        (tmp_path / "m").mkdir(exist_ok=True)
        media.write_video(torch.rand(9, 32, 32, 3), tmp_path / "m" / f"{name}.mp4", fps=8)
    assert main(["evaluate", "--batch", str(tmp_path / "m"), "--models-dir", str(tmp_path / "none"), "--prompt", "a dog",
                 "--reference", str(ROOT / "examples" / "dog")]) == 0
    err = capsys.readouterr().err
    assert "ETA" in err  # not silent
    skipped = [x for x in err.splitlines() if x.startswith("skipped")]
    assert any("CLIP-T" in x and "CLIP-I" in x and "(all videos)" in x for x in skipped)
    assert len(skipped) == len({x.split(": ", 1)[1] for x in skipped}) <= 3  # once per reason, not per video


def test_metrics_plot_has_no_empty_panels_and_readout_labels_single_blocks():
    from dual_adapter.dualreal import readout
    from dual_adapter.metrics.report import plot_panels

    only_flicker = {"metrics": {"temporal_flickering": 0.9}, "details": {"flicker_mae_per_pair": [1.0, 2.0]},
                    "skipped": {"clip_t": "no prompt given"}}
    assert plot_panels(only_flicker) == ["summary", "consecutive frames"]
    assert readout.group_label(0, 0, 1) == "group 1 (block 0)"
    assert readout.group_label(1, 2, 4) == "group 2 (blocks 2-3)"


def test_a_warning_is_printed_once_per_command(tmp_path, caplog):
    import logging

    from dual_adapter.cli import main

    long = "a dog " * 12  # more than tiny's 16 tokens: truncated, with a warning naming the dropped words
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "--prompt", long, "--negative-prompt", long, "--steps", "1", "--quiet",
                     "--out", str(tmp_path / "v.mp4")]) == 0
    shown = [r for r in caplog.records if "truncated" in r.getMessage()]  # what passed the handlers' filters
    assert len(shown) == 1, caplog.text
