"""Hostile and wrong inputs: path policy of the nodes, seeds, devices, model folders,
motion clips, CLI arguments. Each test failed before its fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def classes():
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def _bridge():
    import sys as _s

    from dual_adapter.commands.run import load_node_classes

    load_node_classes()
    return _s.modules["dual_adapter_pack_nodes.bridge"]


def _tiny_lora():
    from dual_adapter.lora import LoraFile

    k = "transformer.transformer_blocks.0.attn1.to_q"
    return LoraFile({f"{k}.lora_A.weight": torch.zeros(2, 64), f"{k}.lora_B.weight": torch.zeros(64, 2)},
                    rank=2, alpha=2.0, targets=["attn1.to_q"], blocks=[0])


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- writes stay inside the output folder


@pytest.mark.parametrize("prefix", ["{abs}/escaped", "../../escaped", "a/../../escaped", "..", "C:/escaped"])
def test_save_nodes_refuse_prefixes_that_leave_the_output_folder(classes, out_dir, tmp_path, prefix):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    prefix = prefix.format(abs=outside)
    frames = torch.rand(2, 8, 8, 3)
    before = _files(tmp_path)
    calls = [
        lambda: classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), prefix, folder="output"),
        lambda: classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), prefix, folder="models/loras"),
        lambda: classes["SaveImage"]().save_images(frames, prefix),
        lambda: classes["SaveAnimatedWEBP"]().save_images(frames, prefix),
        lambda: classes["SaveAnimatedPNG"]().save_images(frames, prefix),
    ]
    for call in calls:
        with pytest.raises(DualAdapterError, match="only written inside"):
            call()
    assert _files(tmp_path) == before, "a refused save wrote a file"


def test_dualreal_save_refuses_absolute_prefix(classes, out_dir, tmp_path):
    (adapters,) = classes["DualRealLoad"]().load("examples/dualreal_tiny_dog_guitar.safetensors")
    with pytest.raises(DualAdapterError, match="only written inside"):
        classes["DualRealSave"]().save(adapters, str(tmp_path / "x"))
    assert not list(tmp_path.glob("x_*"))


def test_save_inside_subfolders_still_works(classes, out_dir):
    r = classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), "tap/guitar", folder="output")
    p = Path(r["result"][0])
    assert p.is_file() and p.parent == out_dir / "loras" / "tap" and p.name == "guitar_00001_.safetensors"


# ---------------------------------------------------------------- reads stay inside input / models folders


def _err(fn) -> str:
    with pytest.raises(DualAdapterError) as e:
        fn()
    return str(e.value)


def test_load_nodes_read_only_the_input_folder_and_do_not_reveal_existence(classes, out_dir, tmp_path, data_dir):
    photo = next((data_dir / "identity" / "dog").iterdir())
    clip = next(p for p in (data_dir / "motion").rglob("*.mp4"))
    missing = tmp_path / "nope" / "missing.png"
    photos, clips = classes["DualAdapterLoadPhotos"](), classes["DualAdapterLoadClip"]()
    for load in (lambda p: photos.load(p, 64, 96), lambda p: clips.load(path=p, frames=5, height=64, width=96),
                 lambda p: classes["LoadImage"]().load_image(p)):
        existing, absent = _err(lambda: load(str(photo))), _err(lambda: load(str(missing)))
        # the same message, whether the file exists or not (only the echoed path differs)
        assert existing.replace(str(photo), "P") == absent.replace(str(missing), "P")
        rel = "../" * 12 + str(photo).lstrip("/")
        assert _err(lambda: load(rel)).replace(rel, "P") == absent.replace(str(missing), "P")
    # a file inside the input folder is read, by relative or absolute name
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "dog.png").write_bytes(photo.read_bytes())
    assert photos.load("dog.png", 64, 96)[1] == 1
    assert photos.load(str(inp / "dog.png"), 64, 96)[1] == 1
    # the shipped examples stay readable; nothing else of the pack is
    assert photos.load("examples/dog", 64, 96)[1] == 3
    _err(lambda: clips.load(path="examples/../nodes/bridge.py", frames=5))
    _err(lambda: clips.load(video="../" * 12 + str(clip).lstrip("/"), frames=5))


def test_absolute_paths_need_the_documented_opt_in(classes, out_dir, data_dir, monkeypatch):
    photo = next((data_dir / "identity" / "dog").iterdir())
    _err(lambda: classes["DualAdapterLoadPhotos"]().load(str(photo), 64, 96))
    monkeypatch.setenv("DUAL_ADAPTER_ALLOW_ABSOLUTE_PATHS", "1")
    assert classes["DualAdapterLoadPhotos"]().load(str(photo), 64, 96)[1] == 1


def test_bridge_resolve_never_falls_back_to_the_raw_path(out_dir, tmp_path):
    bridge = _bridge()
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "ok.safetensors").write_bytes(b"x")
    assert bridge.resolve("loras", "ok.safetensors") == tmp_path / "models" / "loras" / "ok.safetensors"
    a = _err(lambda: bridge.resolve("loras", str(secret)))
    b = _err(lambda: bridge.resolve("loras", "../../secret.safetensors"))
    c = _err(lambda: bridge.resolve("loras", "missing.safetensors"))
    assert a.replace(str(secret), "P") == b.replace("../../secret.safetensors", "P") == c.replace("missing.safetensors", "P")


# ---------------------------------------------------------------- torch >= 2.6 (CVE-2025-32434)


def test_safe_torch_is_required_everywhere():
    import dual_adapter

    assert not dual_adapter.torch_is_safe("2.5.1+cu124") and not dual_adapter.torch_is_safe("2.4.0")
    assert dual_adapter.torch_is_safe("2.6.0+cu124") and dual_adapter.torch_is_safe("2.14.0")
    with pytest.raises(ImportError, match="CVE-2025-32434"):
        dual_adapter.require_safe_torch("2.5.1")
    dual_adapter.require_safe_torch()  # the installed one passes
    deps = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in deps and "torch>=2.4" not in deps
    assert "torch >= 2.6" in (ROOT / "requirements.txt").read_text()


# ---------------------------------------------------------------- seeds


def test_every_widget_seed_maps_to_a_generator(tiny):
    from dual_adapter import sampling
    from dual_adapter.backbones import cogvideox

    emb = cogvideox.encode_prompt(tiny, "a dog")
    run = lambda s: sampling.sample(tiny, emb, steps=1, cfg=1.0, seed=s, scheduler="dpm")  # noqa: E731
    top = run(2 ** 64 - 1)  # the ComfyUI widget's maximum (was: Overflow when unpacking long long)
    assert torch.isfinite(top).all()
    assert torch.equal(run(-1), top), "the documented mapping: seed mod 2**64"
    # torch's CPU generator (mt19937) keys on the low 32 bits of its seed, as ComfyUI's own samplers do
    # (documented in docs/foundation.md): 2**63 + 1 draws seed 1's noise, not an overflow.
    assert torch.equal(run(2 ** 63 + 1), run(1)) and not torch.equal(run(1), run(2))
    from dual_adapter.seeds import check_seed, seed_generator

    assert seed_generator(5).initial_seed() == 5, "seeds that worked before give the same noise"
    for bad in (2 ** 64, -(2 ** 63) - 1, 1.5, "3"):
        with pytest.raises(DualAdapterError, match="seed"):
            check_seed(bad)


def test_cli_refuses_an_out_of_range_seed_while_parsing(capsys):
    from dual_adapter.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "x", "--out", "x.mp4", "--seed", str(2 ** 64)])
    assert e.value.code == 2 and "2**64 - 1" in capsys.readouterr().err


# ---------------------------------------------------------------- model folders and devices


def _fake_folder(root: Path, tiny, transformer: dict | None = None, scheduler: str | None = None) -> Path:
    """A diffusers-layout folder with the tiny model's configs (and empty weight files): enough for the
    checks that run before any weight loads."""
    from dual_adapter import sampling

    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (root / part).mkdir(parents=True, exist_ok=True)
    t = {"_class_name": "CogVideoXTransformer3DModel", **dict(tiny.transformer.config), **(transformer or {})}
    (root / "transformer" / "config.json").write_text(json.dumps(t, default=list))
    (root / "vae" / "config.json").write_text(json.dumps(dict(tiny.vae.config), default=list))
    (root / "text_encoder" / "config.json").write_text("{}")
    for part in ("transformer", "vae", "text_encoder"):
        (root / part / "model.safetensors").write_bytes(b"")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    if scheduler is None:
        sampling.make_scheduler(tiny, "ddim").save_pretrained(root / "scheduler")
    else:
        (root / "scheduler" / "scheduler_config.json").write_text(scheduler)
    return root


def test_model_folder_configs_are_checked_before_loading(tiny, tmp_path):
    from dual_adapter import models

    cases = [
        (dict(transformer={"num_layers": "30"}), r"num_layers=\"30\".*positive integer"),
        (dict(transformer={"patch_size": None}), r"patch_size=null"),
        (dict(scheduler="{not json"), r"scheduler_config.json.*not valid JSON"),
        (dict(scheduler='{"beta_schedule": "banana"}'), r"does not make a CogVideoXDPMScheduler"),
        # image-to-video: noise + encoded image channels, and CogVideoX 1.5 I2V's ofs embedding
        (dict(transformer={"in_channels": 8}), r"image-to-video.*8 input channels = 2 x 4"),
        (dict(transformer={"ofs_embed_dim": 512}), r"image-to-video.*ofs"),
    ]
    for k, (kw, msg) in enumerate(cases):
        root = _fake_folder(tmp_path / f"m{k}", tiny, **kw)
        with pytest.raises(DualAdapterError, match=msg):
            models.load_cogvideox(root, device="cpu")
    root = _fake_folder(tmp_path / "i2v", tiny)
    (root / "model_index.json").write_text('{"_class_name": "CogVideoXImageToVideoPipeline"}')
    with pytest.raises(DualAdapterError, match="CogVideoXImageToVideoPipeline"):
        models.load_cogvideox(root, device="cpu")
    info = models.inspect_model(_fake_folder(tmp_path / "ok", tiny))  # what the CLI checks inputs against
    assert info.default_size == tiny.default_size and info.vae_scale_temporal == 4


def test_devices_are_checked(tiny):
    from dual_adapter import models
    from dual_adapter.backbones.base import check_device

    with pytest.raises(DualAdapterError, match="'banana' is not a device"):
        models.load_model("tiny", device="banana")
    with pytest.raises(DualAdapterError, match="CUDA"):
        check_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(DualAdapterError, match="no CUDA GPU is visible"):
            models.load_model("tiny", device="cuda")
    assert check_device("auto") is None and check_device("cpu") == "cpu"


def test_headless_run_names_the_failing_node_for_any_error(classes):
    from dual_adapter.graph import run_workflow

    class Boom:
        RETURN_TYPES = ()
        FUNCTION = "go"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def go(self):
            return 1 / 0

    with pytest.raises(DualAdapterError, match=r"node 7 \(Boom\) failed: ZeroDivisionError"):
        run_workflow({"7": {"class_type": "Boom", "inputs": {}}}, {"Boom": Boom})
    wf = json.loads((ROOT / "workflows" / "api" / "generate_mini.json").read_text())
    loader = next(k for k, v in wf.items() if v["class_type"] == "DualAdapterCogVideoXLoader")
    wf[loader]["inputs"]["device"] = "cuda" if not torch.cuda.is_available() else "cpu"
    wf[loader]["inputs"]["model"] = "tiny-nope" if torch.cuda.is_available() else "tiny"
    with pytest.raises(DualAdapterError, match=rf"node {loader} \(DualAdapterCogVideoXLoader\)"):
        run_workflow(wf, classes)


# ---------------------------------------------------------------- motion clips


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    """A JPEG photo and a 1-frame MP4: neither is a motion clip."""
    from PIL import Image

    from dual_adapter import media

    d = tmp_path_factory.mktemp("stills")
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(64, 96, 3, generator=g) * 255).byte().numpy()).save(d / "photo.jpg")
    media.write_video(torch.rand(1, 64, 96, 3, generator=g), d / "one.mp4")
    return d / "photo.jpg", d / "one.mp4"


def test_a_still_is_refused_as_a_motion_clip(stills, classes, out_dir):
    from dual_adapter import media

    for p in stills:
        with pytest.raises(DualAdapterError, match="still"):
            media.load_clip(p, num_frames=9, fps=8.0, require_motion=True)
    # through the nodes: Load Clip Frames loops the photo to 9 identical frames; the trainers refuse them
    frames = media.load_clip(stills[0], num_frames=9, fps=8.0)[0]
    (model,) = classes["DualAdapterCogVideoXLoader"]().load("tiny")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterTrainMotionLoRA"]().train(model, frames, "a dog", steps=1)
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualRealTrain"]().train(model, frames[:1], "dog *", frames, "a dog", 1, 1e-3, 0.5, 8, 1,
                                         "official", 0, "still")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterTrainSelectiveLoRA"]().train(model, "motion", "a dog", steps=1, clip=frames[:1])


def test_a_still_is_refused_by_the_u_net_motion_trainers(classes, out_dir):
    """The U-Net trainers use the same check as the CogVideoX ones (media.check_motion_frames)."""
    still = torch.rand(1, 32, 32, 3).expand(4, -1, -1, -1).contiguous()  # 4 identical frames
    (unet3d,) = classes["DualAdapterUNetVideoLoader"]().load("tiny-unet3d")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterUNetTrainMotionLoRA"]().train(unet3d, still, "a dog", steps=1)
    (animatediff,) = classes["DualAdapterUNetVideoLoader"]().load("tiny-animatediff")
    with pytest.raises(DualAdapterError, match="still"):
        classes["DualAdapterAnimateDiffTrainMotionLoRA"]().train(animatediff, still, "a dog", steps=1)


def test_a_looped_clip_is_announced_and_the_policy_is_a_cli_option(caplog, capsys, tmp_path):
    from dual_adapter import media
    from dual_adapter.cli import main

    clip = ROOT / "examples" / "guitar.mp4"  # 33 frames at 8 fps
    with caplog.at_level("WARNING", logger="dual_adapter.media"):
        media.load_clip(clip, num_frames=49, fps=8.0)
    assert "only 33 of the 49 frames" in caplog.text and "looped" in caplog.text
    rc = main(["train-lora", "--motion", str(clip), "--prompt", "x", "--frames", "49", "--short-policy", "error",
               "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2 and "short_policy='error'" in capsys.readouterr().err


def test_cli_checks_inputs_before_loading_the_model(tiny, tmp_path, stills, capsys):
    """A model folder whose configs are fine but whose weights are empty: every input error must be found
    before the (minutes-long) weight loading would fail."""
    from dual_adapter.cli import main

    model = str(_fake_folder(tmp_path / "cog", tiny))
    out = str(tmp_path / "o.safetensors")
    runs = [
        (["train-lora", "--motion", str(stills[1])], "still"),
        (["train-lora", "--subject", str(tmp_path / "nope")], "does not exist"),
        (["train-lora", "--motion", str(ROOT / "examples" / "guitar.mp4"), "--frames", "8"], "4k\\+1"),
        (["train-dualreal", "--subject", str(ROOT / "examples" / "dog"), "--identity-prompt", "dog *",
          "--motion", str(stills[0]), "--motion-prompt", "x"], "still"),
        (["generate", "--lora", "x.safetensors:abc"], "strength 'abc' is not a number"),
        (["generate", "--lora", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["generate", "--width", "100"], "width=100"),
        (["generate", "--device", "banana"], "not a device"),
    ]
    for argv, msg in runs:
        extra = ["--prompt", "x"] if argv[0] != "train-dualreal" else []
        o = out.replace(".safetensors", ".mp4") if argv[0] == "generate" else out
        rc = main(argv + extra + ["--model", model, "--out", o])
        err = capsys.readouterr().err
        assert rc == 2 and "could not load" not in err, (argv, err)
        assert __import__("re").search(msg, err), (argv, err)


# ---------------------------------------------------------------- train-lora defaults by kind


def test_appearance_lora_gets_customttt_defaults(tmp_path):
    from dual_adapter import lora
    from dual_adapter.cli import main
    from dual_adapter.commands.lora import _defaults

    assert _defaults("appearance", "adamw")["steps"] == 500 and _defaults("motion", "adamw")["steps"] == 1000
    out = tmp_path / "app.safetensors"
    assert main(["train-lora", "--subject", str(ROOT / "examples" / "dog"), "--prompt", "a photo of dog *",
                 "--steps", "1", "--rank", "4", "--quiet", "--out", str(out)]) == 0
    lf = lora.load_lora(out)
    assert "attn1.to_v" in lf.targets and lf.metadata["train"]["lr"] == pytest.approx(1e-4)
