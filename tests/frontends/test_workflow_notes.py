"""The canvas notes say what a workflow's video shows as shipped, as measured (docs/results/workflows.md): the
flagship DualReal workflow's note promised the yellow striped star, and the run gives the clip's green sprite."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _note(name: str) -> str:
    wf = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    return next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]


def test_measured_workflows_open_with_what_they_show():
    record = (ROOT / "docs" / "results" / "workflows.md").read_text()
    for name in ("dualreal_train_sample", "dualreal_load_sample", "tap_motion_lora", "generate_mini"):
        first = _note(name).splitlines()[0]
        assert first.startswith("**What it shows as shipped** (measured"), (name, first)
        assert f"`{name}`" in record, f"docs/results/workflows.md has no measurement of {name}"
    assert "green" in _note("dualreal_train_sample").splitlines()[0]
