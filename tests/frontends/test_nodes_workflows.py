"""Node definitions agree with themselves and with the shipped workflows; API workflows run headless."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WF = ROOT / "workflows"  # API format (api/, native/api/) and the builder
UI = ROOT / "example_workflows"  # UI format + thumbnails (ComfyUI's Templates browser)


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _pack_nodes():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS


def test_every_node_is_well_formed():
    mapping, display = _pack_nodes()
    assert len(mapping) >= 7
    for name, cls in mapping.items():
        assert name in display, f"{name} has no display name"
        assert isinstance(cls.RETURN_TYPES, tuple)
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), name
        assert cls.CATEGORY.startswith("DualAdapter"), name
        assert getattr(cls, "DESCRIPTION", ""), f"{name} has no DESCRIPTION"
        fn = getattr(cls, cls.FUNCTION)
        params = inspect.signature(fn).parameters
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for inp, s in (spec.get(section) or {}).items():
                assert inp in params or any(p.kind == p.VAR_KEYWORD for p in params.values()), \
                    f"{name}.{cls.FUNCTION} does not take input {inp!r}"
                opts = s[1] if len(s) > 1 else {}
                assert opts.get("tooltip"), f"{name}: input {inp!r} has no tooltip"
        required = set((spec.get("required") or {}))
        for p in list(params.values())[1:]:
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                assert p.name in required, f"{name}.{cls.FUNCTION} needs {p.name!r}, which is not a required input"


def test_pack_types_do_not_reuse_core_names():
    mapping, _ = _pack_nodes()
    core = {"IMAGE", "LATENT", "MASK", "STRING", "INT", "FLOAT", "BOOLEAN", "CLIP_VISION", "CLIP_VISION_OUTPUT",
            "CONDITIONING", "MODEL", "VAE", "CLIP", "*"}
    for name, cls in mapping.items():
        for t in cls.RETURN_TYPES:
            assert t in core or t.isupper() and t not in ("MODEL", "LORA"), (name, t)


def _api_twin(name: str) -> Path:
    return next(p for p in (WF / "api" / name, WF / "native" / "api" / name) if p.is_file())


def _workflow_files():
    return sorted(p for p in UI.glob("*.json") if not (WF / "native" / "api" / p.name).is_file())


def test_workflows_exist_in_both_formats():
    files = _workflow_files()
    assert files, "no workflows shipped"
    for p in files:
        assert (WF / "api" / p.name).is_file(), f"{p.name} has no API-format twin in workflows/api/"


def test_workflow_files_match_node_definitions(classes):
    """The committed files equal what build_workflows.py makes from the current node definitions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_workflows", WF / "build_workflows.py")
    bw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bw)
    for g in bw.build_all(classes):
        assert json.loads((UI / f"{g.name}.json").read_text()) == json.loads(json.dumps(g.ui())), \
            f"example_workflows/{g.name}.json is stale: run python workflows/build_workflows.py"
        assert json.loads(g.api_path().read_text()) == json.loads(json.dumps(g.api()))


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.stem)
def test_ui_workflow_is_valid_and_matches_api_twin(path, classes):
    from dual_adapter.graph import ui_to_api, validate_workflow

    ui = json.loads(path.read_text())
    for n in ui["nodes"]:
        assert n["type"] in classes or n["type"] in ("Note", "MarkdownNote"), f"{path.name}: unknown node {n['type']}"
    notes = [n for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and "models/CogVideo" in notes[0]["widgets_values"][0], "each workflow says how to use real weights"
    api = json.loads(_api_twin(path.name).read_text())
    assert validate_workflow(api, classes) == []
    conv = ui_to_api(ui, classes)
    assert {k: v["inputs"] for k, v in conv.items()} == {k: v["inputs"] for k, v in api.items()}


def test_validation_catches_bad_values(classes):
    from dual_adapter.graph import validate_workflow

    api = json.loads((WF / "api" / "generate_mini.json").read_text())
    api["1"]["inputs"]["model"] = "no-such-model"
    api["3"]["inputs"]["steps"] = 0
    api["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    errs = "\n".join(validate_workflow(api, classes))
    assert "no-such-model" in errs and "below its minimum" in errs and "NoSuchNode" in errs


def test_generate_workflow_runs_headless(classes, out_dir):
    from dual_adapter.graph import load_workflow, run_workflow

    out = run_workflow(load_workflow(WF / "api" / "generate_mini.json"), classes)
    saved = [e for k, v in out.items() if k.startswith("ui:") for e in v.get("images", [])]
    assert saved and (out_dir / saved[0]["subfolder"] / saved[0]["filename"]).stat().st_size > 0
    frames = out["4"][0]
    assert frames.shape == (9, 32, 32, 3)  # mini's own size (the sampler's 0 = the model's default)


def test_nodes_do_not_mutate_inputs_and_patch_copies(classes, out_dir):
    """Loader -> encode -> sample -> decode through the node classes, inside inference mode like ComfyUI."""
    with torch.inference_mode():
        (model,) = classes["DualAdapterLoadVideoModel"]().load("tiny")
        (emb,) = classes["DualAdapterTextEncode"]().encode(model, "a dog", "")
        before = emb["positive"].clone()
        (lat,) = classes["DualAdapterSampler"]().run(model, emb, steps=2, seed=1)
        assert lat["samples"].shape == (1, 4, 3, 8, 12)
        assert torch.equal(emb["positive"], before)
        (frames,) = classes["DualAdapterVAEDecode"]().decode(model, lat)
        (lat2,) = classes["DualAdapterVAEEncode"]().encode(model, frames)
        assert lat2["samples"].shape == (1, 4, 3, 8, 12)


def test_media_nodes_read_shipped_examples(classes):
    (photos, n) = classes["DualAdapterLoadPhotos"]().load("examples/dog", 64, 96)
    assert photos.shape == (n, 64, 96, 3) and n == 3
    frames, count, fps = classes["DualAdapterLoadClip"]().load(path="examples/guitar.mp4", frames=9, fps=8.0,
                                                               height=64, width=96)
    assert frames.shape == (9, 64, 96, 3) and count == 9 and fps == 8.0
    from dual_adapter.errors import DualAdapterError

    with pytest.raises(DualAdapterError):
        classes["DualAdapterLoadPhotos"]().load("", 64, 96)
    with pytest.raises(DualAdapterError, match="empty"):
        classes["DualAdapterVAEEncode"]().encode(classes["DualAdapterLoadVideoModel"]().load("tiny")[0],
                                                 torch.zeros(0, 64, 96, 3))


def test_shipped_mini_examples_are_the_worlds_inputs(classes):
    """examples/mini/ (the mini workflows' inputs) holds exactly what the world draws, to 8-bit rounding: the
    demo's photos of the held-out striped star and its clips of other sprites orbiting. Fails when the world's
    drawing changes: rerun examples/make_mini_examples.py (after removing examples/mini/)."""
    from dual_adapter.miniworld import world as W

    q = lambda x: (x * 255).round() / 255  # noqa: E731
    (photos, n) = classes["DualAdapterLoadPhotos"]().load("examples/mini/striped_star", W.HEIGHT, W.WIDTH)
    assert n == 4 and torch.allclose(photos, q(W.subject_photos("striped_star", n=4, seed=0)), atol=1e-6)
    clips, _ = W.motion_clips("orbit", n=3, seed=0, exclude="striped_star")
    for i, want in enumerate(clips):
        frames, count, _ = classes["DualAdapterLoadClip"]().load(path=f"examples/mini/orbit/{i:02d}.gif",
                                                                 frames=W.FRAMES, fps=0.0, height=W.HEIGHT,
                                                                 width=W.WIDTH, short_policy="error")
        assert count == W.FRAMES and torch.allclose(frames, q(want), atol=1e-6), f"orbit/{i:02d}.gif"


def test_headless_run_cli(tmp_path, capsys):
    from dual_adapter.cli import main

    rc = main(["run", str(UI / "generate_mini.json"), "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "wrote" in out and list(tmp_path.rglob("*.webp"))


def test_loader_lists_model_folders(classes, out_dir, tmp_path):
    (tmp_path / "models" / "CogVideo" / "CogVideoX-5b").mkdir(parents=True)
    (tmp_path / "models" / "CogVideo" / "CogVideoX-2b").mkdir(parents=True)
    choices = classes["DualAdapterLoadVideoModel"].INPUT_TYPES()["required"]["model"][0]
    assert choices[:3] == ["tiny", "tiny-5b", "tiny-1.5"]
    assert "CogVideoX-5b" in choices and "CogVideoX-2b" in choices
    from dual_adapter.errors import DualAdapterError

    with pytest.raises(DualAdapterError, match="incomplete"):
        classes["DualAdapterLoadVideoModel"]().load("CogVideoX-5b")


def test_loader_refuses_a_native_transformer_with_a_builtin_model(classes, out_dir, tmp_path):
    """A native transformer file with 'mini' was silently dropped (only the tiny models were refused); the refusal
    is load_model's, shared with the CLI."""
    from dual_adapter.errors import DualAdapterError

    (tmp_path / "models" / "diffusion_models").mkdir(parents=True)
    (tmp_path / "models" / "diffusion_models" / "t.safetensors").write_bytes(b"")
    for model in ("tiny", "mini"):
        with pytest.raises(DualAdapterError, match="native transformer file needs a real CogVideoX diffusers folder"):
            classes["DualAdapterLoadVideoModel"]().load(model, native_transformer="t.safetensors")


def test_loader_loads_a_mini_folder_put_in_models_cogvideo(classes, out_dir, tmp_path):
    """A folder that 'miniworld pretrain' wrote, put in models/CogVideo/, is listed; it used to fail to load with
    "num_channels (3) must be divisible by num_groups (32)" (it went to the real-CogVideoX loader)."""
    import shutil

    import torch

    from dual_adapter.miniworld.model import MINI_DIR

    shutil.copytree(MINI_DIR, tmp_path / "models" / "CogVideo" / "my_mini")
    loader = classes["DualAdapterLoadVideoModel"]
    assert "my_mini" in loader.INPUT_TYPES()["required"]["model"][0]
    m = loader().load("my_mini")[0]
    assert m.bundle.name == "mini" and m.bundle.dtype == torch.float32
    shipped = loader().load("mini")[0].bundle.transformer.state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in m.bundle.transformer.state_dict().items())
