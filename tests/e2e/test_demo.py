"""The README's demo command (docs/demo.md): DualReal end to end on the shipped example inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_writes_video_adapters_curve_and_report(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "dual_adapter", "demo", "--steps", "40", "--sample-steps", "4",
                        "--out-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("video.mp4", "strip.png", "adapters.safetensors", "loss_curve.png", "adapters.losses.jsonl", "stageblender.png",
                 "metrics.json", "metrics.txt"):
        assert (out / name).stat().st_size > 0, name
        assert str(out / name) in r.stdout, f"the demo does not say where it wrote {name}"
    losses = [json.loads(l) for l in (out / "adapters.losses.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and {r["phase"] for r in losses} == {"identity", "motion"}
    assert sorted(p.name for p in out.iterdir() if "partial" in p.name or "state" in p.name) == []
    report = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= report["metrics"]["temporal_flickering"] <= 1.0
    from dual_adapter.dualreal import load_adapters

    assert load_adapters(out / "adapters.safetensors").num_parameters() > 0
    # never overwrite: the same folder is refused
    r2 = subprocess.run([sys.executable, "-m", "dual_adapter", "demo", "--steps", "2", "--out-dir", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 2 and "not empty" in r2.stderr


def test_demo_on_a_mini_folder_uses_the_mini_world_inputs(tmp_path, capsys):
    """``--model FOLDER`` with a folder ``miniworld pretrain`` wrote is a mini like the shipped one: mini-world
    subject and clips, mini-world scores."""
    import shutil

    from dual_adapter.miniworld.model import MINI_DIR

    folder = tmp_path / "my_mini"
    shutil.copytree(MINI_DIR, folder)
    out = tmp_path / "demo"
    from dual_adapter.cli import main

    rc = main(["demo", "--model", str(folder), "--steps", "4", "--sample-steps", "2", "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    assert "mini world: subject striped_star" in err
    report = json.loads((out / "metrics.json").read_text())
    assert {"identity", "motion"} <= set(report["miniworld"]), report.get("miniworld")
