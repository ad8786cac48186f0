"""The path rule of the nodes (docs/security.md): hostile names are refused from the string alone, before
anything on disk is touched; reads cannot tell a refused path from a missing one; counter names are
reserved atomically, so processes saving under one name never overwrite each other."""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError

from helpers import error_of as _err, node_bridge as _bridge, tiny_lora_file as _tiny_lora


def _files(root: Path) -> set[Path]:
    """Files and folders under ``root`` (a refused save must make neither)."""
    return set(root.rglob("*"))


LONG = "x" * 300  # over the 255-byte limit of one file name
DEEP = "/".join(["d"] * 2000) + "/x"  # made mkdir(parents=True) recurse until RecursionError
DEEPISH = "d/" * 40 + "x"  # 41 names, short in bytes


# ---------------------------------------------------------------- Convert to Native writes only in its folder


@pytest.fixture()
def cogvideo_folder(tiny, out_dir, tmp_path):
    """A diffusers CogVideoX folder (transformer only) in models/CogVideo/, as the node lists it."""
    d = tmp_path / "models" / "CogVideo" / "tiny_folder"
    tiny.transformer.save_pretrained(d / "transformer")
    return d


@pytest.mark.parametrize("prefix", ["{abs}/escaped", "C:escaped", "C:/escaped", "a/C:x", "../escaped",
                                    "bad\x00name", LONG, DEEP, DEEPISH], ids=range(9))
def test_convert_to_native_refuses_prefixes_outside_its_folder(classes, cogvideo_folder, tmp_path, prefix):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    prefix = prefix.format(abs=outside)
    before = _files(tmp_path)
    msg = _err(lambda: classes["DualAdapterConvertToNative"]().convert("tiny_folder", prefix, "keep"))
    assert "filename_prefix" in msg
    assert _files(tmp_path) == before, "a refused conversion made a file or folder"


def test_convert_to_native_checks_the_model_before_making_folders(classes, cogvideo_folder, tmp_path):
    before = _files(tmp_path)
    _err(lambda: classes["DualAdapterConvertToNative"]().convert("missing_model", "sub/dir/native", "keep"))
    assert _files(tmp_path) == before, "folders were made for a model that does not exist"


def test_convert_to_native_writes_a_counted_file_in_diffusion_models(classes, cogvideo_folder, tmp_path):
    r = classes["DualAdapterConvertToNative"]().convert("tiny_folder", "sub/native", "keep")
    p = Path(r["result"][0])
    assert p == tmp_path / "models" / "diffusion_models" / "sub" / "native_00001_.safetensors"
    assert p.stat().st_size > 0


# ---------------------------------------------------------------- reads: no existence oracle


def test_reads_give_one_message_for_refused_too_long_and_missing(classes, out_dir, tmp_path):
    """Before: '/usr/' + 300 x's raised OSError 'File name too long' while a missing folder said 'not
    found', so a workflow could test whether any folder exists."""
    photos, clips = classes["DualAdapterLoadPhotos"](), classes["DualAdapterLoadClip"]()
    inp = tmp_path / "input"
    inp.mkdir()
    probes = ["/usr/" + LONG, "/no_such_folder_anywhere/" + LONG, "/usr", "/no_such_folder_anywhere",
              LONG, "sub/" + LONG, "bad\x00name", "/usr/\x00", str(inp / LONG), str(inp / "missing.png"),
              DEEP, DEEPISH, "C:/Windows", "~/x", "../x"]
    for load in (lambda p: photos.load(p, 64, 96), lambda p: clips.load(path=p, frames=5, height=64, width=96),
                 lambda p: classes["LoadImage"]().load_image(p)):
        msgs = {_err(lambda: load(p)).replace(repr(p.strip()), "P") for p in probes}
        assert len(msgs) == 1, msgs
        assert "not found or is not allowed" in msgs.pop()
    bridge = _bridge()
    (tmp_path / "models" / "loras").mkdir(parents=True)
    msgs = {_err(lambda: bridge.resolve("loras", p)).replace(repr(p.strip()), "P") for p in probes}
    assert len(msgs) == 1, msgs


def test_model_loaders_give_the_one_message_for_long_and_nul_names(classes, out_dir):
    """Before: Load DualReal with 'examples/' + 300 x's raised a raw OSError (File name too long)."""
    for name in ("examples/" + LONG, LONG, "a\x00b", "examples/a\x00b", "examples/../README.md"):
        for load in (lambda n: classes["DualRealLoad"]().load(n), lambda n: classes["DualAdapterLoadLoRA"]().load(n)):
            assert "not found or is not allowed" in _err(lambda: load(name))


def test_the_read_rule_touches_the_disk_only_inside_the_folder(tmp_path, monkeypatch):
    from dual_adapter import paths

    base = tmp_path / "input"
    base.mkdir()
    (base / "ok.png").write_bytes(b"x")
    seen = []
    real = paths._exists
    monkeypatch.setattr(paths, "_exists", lambda p: seen.append(p) or real(p))
    for p in ("/usr", "/usr/" + LONG, "../ok.png", "a\x00", LONG, str(tmp_path)):
        with pytest.raises(DualAdapterError):
            paths.read_path(p, [base])
    assert seen == []
    assert paths.read_path("ok.png", [base]) == base / "ok.png"
    assert paths.read_path(str(base / "ok.png"), [base]) == base / "ok.png"


def test_symlinks_inside_the_input_folder_are_followed(classes, out_dir, tmp_path, data_dir):
    """Documented in docs/security.md: a symlink placed inside the input folder is read, as in ComfyUI."""
    photo = next((data_dir / "identity" / "dog").iterdir())
    inp = tmp_path / "input"
    inp.mkdir()
    try:
        (inp / "linked.png").symlink_to(photo)
    except OSError:
        pytest.skip("symlinks not available")
    assert classes["DualAdapterLoadPhotos"]().load("linked.png", 64, 96)[1] == 1


# ---------------------------------------------------------------- writes: names that break the rule


@pytest.mark.parametrize("prefix,why", [(LONG, "bytes long"), ("a/" + LONG, "bytes long"), ("a\x00b", "NUL"),
                                        (DEEP, "1024 bytes"), (DEEPISH, "41 names deep"), ("C:x", "drive letter"),
                                        ("a/D:/x", "drive letter")], ids=range(7))
def test_save_nodes_refuse_bad_names_before_touching_the_disk(classes, out_dir, tmp_path, prefix, why):
    frames = torch.rand(2, 8, 8, 3)
    before = _files(tmp_path)
    for call in (lambda: classes["SaveImage"]().save_images(frames, prefix),
                 lambda: classes["SaveAnimatedWEBP"]().save_images(frames, prefix),
                 lambda: classes["DualAdapterSaveLoRA"]().save(_tiny_lora(), prefix, folder="models/loras")):
        msg = _err(call)
        assert why in msg and "filename_prefix" in msg and "only written inside" in msg
    assert _files(tmp_path) == before


def test_train_dualreal_name_is_checked_before_anything(tmp_path):
    from dual_adapter.runs import RunFolder

    for name, why in ((LONG, "bytes long"), ("a\x00b", "NUL"), ("a/b", "without folders"), ("..", "'..'")):
        msg = _err(lambda: RunFolder.start(tmp_path / "runs", "dualreal", name, resume=False))
        assert why in msg and "name" in msg
    assert not (tmp_path / "runs").exists()


def test_train_dualreal_node_refuses_a_long_name_before_training(classes, tiny, out_dir):
    from dual_adapter.patches import PatchedModel

    msg = _err(lambda: classes["DualRealTrain"]().train(
        model=PatchedModel(tiny), subject=torch.rand(1, 64, 96, 3), identity_prompt="dog *",
        motion=torch.rand(9, 64, 96, 3), motion_prompt="a dog", steps=2, lr=1e-3, motion_ratio=0.5, hidden_width=8,
        groups=2, form="zero_init", seed=0, name=LONG))
    assert "name" in msg and "bytes long" in msg
    assert list(out_dir.rglob("*")) == []


# ---------------------------------------------------------------- atomic name reservation


def test_counter_names_are_reserved_when_picked(tmp_path):
    """Two picks without a write in between get two names (before: the same one, which both then wrote)."""
    from dual_adapter.io import atomic_write_bytes, next_free_path
    from dual_adapter.runs import RunFolder

    a, b = next_free_path(tmp_path, "s/img", "png"), next_free_path(tmp_path, "s/img", "png")
    assert (a.name, b.name) == ("img_00001_.png", "img_00002_.png")
    atomic_write_bytes(a, b"A")  # the reservation is this process's: it is written, not refused
    assert a.read_bytes() == b"A"
    with pytest.raises(DualAdapterError, match="already exists"):
        atomic_write_bytes(a, b"again")
    r1, r2 = (RunFolder.start(tmp_path, "dualreal", "run", resume=False) for _ in range(2))
    assert r1.path != r2.path and r1.path.is_dir() and r2.path.is_dir()


def test_an_unused_reservation_is_given_back(classes, out_dir):
    """A save that fails after its name was picked leaves no empty file behind."""
    from dual_adapter.lora import LoraFile

    bad = LoraFile({}, rank=2, alpha=2.0, targets=["attn1.to_q"], blocks=[0])
    with pytest.raises(DualAdapterError):
        classes["DualAdapterSaveLoRA"]().save(bad, "empty", folder="output")
    assert [p for p in out_dir.rglob("*") if p.is_file()] == []


def test_a_killed_runs_reservation_does_not_block_resume(tmp_path):
    from dual_adapter.io import reserve_path
    from dual_adapter.training import check_run_files

    out = tmp_path / "r_00001_.safetensors"
    state = tmp_path / "r_00001_.state.safetensors"
    out.write_bytes(b"")  # left by a killed process (not this one's reservation)
    state.write_bytes(b"x")
    with pytest.raises(DualAdapterError, match="already exists"):
        check_run_files(out, {"state": state}, resume=False)
    check_run_files(out, {"state": state}, resume=True)
    assert not out.exists() and state.exists()
    other = tmp_path / "n_00001_.safetensors"
    assert reserve_path(other)
    check_run_files(other, {"state": tmp_path / "n_00001_.state.safetensors"}, resume=False)  # own: no refusal


def _save_many(out: str, barrier, n: int, q) -> None:
    os.environ["DUAL_ADAPTER_OUTPUT"] = out
    os.environ["OMP_NUM_THREADS"] = "1"
    from dual_adapter.commands.run import load_node_classes

    save = load_node_classes()["SaveImage"]()
    img = torch.rand(1, 4, 4, 3)
    barrier.wait()
    names = []
    for _ in range(n):
        names += [e["filename"] for e in save.save_images(img, "race/same")["ui"]["images"]]
    q.put(names)


def test_two_processes_saving_under_one_prefix_keep_every_file(tmp_path):
    """Before: two processes saving 150 images each under one prefix reported 300 saves and left 268 files."""
    out = tmp_path / "output"
    ctx = mp.get_context("spawn")
    barrier, q, n = ctx.Barrier(2), ctx.Queue(), 50
    procs = [ctx.Process(target=_save_many, args=(str(out), barrier, n, q)) for _ in range(2)]
    for p in procs:
        p.start()
    names = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reported = names[0] + names[1]
    files = sorted(p.name for p in (out / "race").iterdir())
    assert len(reported) == 2 * n and len(set(reported)) == 2 * n, "two saves reported the same file"
    assert files == sorted(reported)
    assert all((out / "race" / f).stat().st_size > 0 for f in files)
