"""The shipped workflows open from ComfyUI's Templates browser: ComfyUI serves a pack's templates from the FIRST
folder that exists among example_workflows, example, examples, workflow, workflows (app/custom_node_manager.py)
and lists <folder>/*.json of each; the frontend shows <name>.jpg as the thumbnail. The real-host check is in
test_comfyui_host.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
COMFY_TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]  # ComfyUI's order


@pytest.fixture(scope="module")
def graphs():
    from dual_adapter.commands.run import load_node_classes

    spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "workflows" / "build_workflows.py")
    bw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bw)
    return bw, bw.build_all(load_node_classes())


def test_the_served_folder_holds_every_ui_workflow_with_a_thumbnail(graphs):
    bw, built = graphs
    served = next(ROOT / f for f in COMFY_TEMPLATE_FOLDERS if (ROOT / f).exists())
    assert served.name == "example_workflows"
    names = sorted(p.stem for p in served.glob("*.json"))
    assert names == sorted(g.name for g in built)
    for n in names:
        wf = json.loads((served / f"{n}.json").read_text())
        assert "nodes" in wf and "links" in wf, f"{n}.json is not in the UI format the browser opens"
        for ext in ("jpg", "webp"):
            with Image.open(served / f"{n}.{ext}") as im:
                assert im.size == bw.THUMB_SIZE


def test_no_workflow_is_listed_twice():
    """ComfyUI lists the *.json at the top of every one of those folders: only example_workflows/ may have any."""
    listed = [p.name for f in COMFY_TEMPLATE_FOLDERS if (ROOT / f).is_dir() for p in (ROOT / f).glob("*.json")]
    assert len(listed) == len(set(listed)) and all((ROOT / "example_workflows" / n).is_file() for n in listed)


def test_ui_file_finds_its_api_twin_for_the_headless_runner():
    from dual_adapter.graph import api_twin

    assert api_twin(ROOT / "example_workflows" / "generate_mini.json") == ROOT / "workflows" / "api" / "generate_mini.json"
    assert api_twin(ROOT / "example_workflows" / "dualreal_lora_ksampler.json") == \
        ROOT / "workflows" / "native" / "api" / "dualreal_lora_ksampler.json"


def test_image_nodes_have_room_for_their_image(graphs):
    """After a run the frontend grows an image node to 220 px below its widgets: the layout reserves it, so no
    Preview Image grows over the node under it (Apply DualReal, Sample)."""
    bw, built = graphs
    for g in built:
        nodes = [n for n in g.ui()["nodes"] if n["type"] != "MarkdownNote"]
        for n in nodes:
            if n["type"] in ("PreviewImage", "SaveAnimatedWEBP"):
                widgets = 46 + 24 * (len(n["inputs"]) + len(n["widgets_values"]))
                assert n["size"][1] >= widgets + 220, (g.name, n["type"], n["size"])
        for a in nodes:
            for b in nodes:
                if a is not b and a["pos"][0] == b["pos"][0] and a["pos"][1] <= b["pos"][1]:
                    assert a["pos"][1] + a["size"][1] <= b["pos"][1], (g.name, a["type"], b["type"])
