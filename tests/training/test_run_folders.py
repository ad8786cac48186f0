"""One run folder per run (dual_adapter.runs.RunFolder), the same for the nodes and the commands: the same layout,
no checkpoint / state file left by a finished run, a stopped run resumed bit for bit from its folder, the folder
reserved atomically.

CPU, tiny models, a few steps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dual_adapter.errors import DualAdapterError, InterruptedByUser
from dual_adapter.patches import PatchedModel

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a person is playing guitar"


def _clip(seed=0, shape=(9, 64, 96, 3)):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(*shape[1:], generator=g)
    return torch.stack([torch.roll(base, 3 * i, dims=1) for i in range(shape[0])])  # a moving clip


def _layout(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _settle(folder: Path, name: str) -> list[str]:
    """The folder's layout with the final file under one name (the node writes it inside, the CLI at --out)."""
    return [n for n in _layout(folder) if n != f"{name}.safetensors"]


def test_node_and_cli_runs_write_the_same_folder_layout(tiny, out_dir, tmp_path):
    from dual_adapter import media
    from dual_adapter.cli import main
    from dual_adapter.lora import load_lora
    from nodes.lora_nodes import TrainMotionLoRA

    x = _clip()
    lf, _ = TrainMotionLoRA().train(PatchedModel(tiny), x, PROMPT, rank=2, alpha=2.0, steps=3, name="m",
                                    gradient_checkpointing=False, checkpoint_every=1)
    node = out_dir / "runs" / "lora" / "m_00001_"
    clip = media.write_video(x, tmp_path / "clip.mp4", fps=8)
    out = tmp_path / "m.safetensors"
    assert main(["train-lora", "--model", "tiny", "--preset", "tap", "--motion", str(clip), "--prompt", PROMPT,
                 "--steps", "3", "--rank", "2", "--no-gradient-checkpointing", "--checkpoint-every", "1", "--quiet",
                 "--out", str(out)]) == 0
    cli = tmp_path / "runs" / "lora" / "m_00001_"
    assert _layout(node) == ["config.json", "loss.png", "losses.jsonl", "m.safetensors"]
    assert _settle(cli, "m") == _settle(node, "m") == ["config.json", "loss.png", "losses.jsonl"]
    assert load_lora(out).rank == 2 and load_lora(node / "m.safetensors").rank == 2  # the CLI's final is at --out
    assert all(torch.equal(v, load_lora(node / "m.safetensors").state_dict[k]) for k, v in lf.state_dict.items())
    for folder, front in ((node, "node"), (cli, "python -m dual_adapter train-lora")):
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["method"] == "lora" and cfg["name"] == "m" and cfg["front_end"] == front
        assert [json.loads(line)["step"] for line in (folder / "losses.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((node / "config.json").read_text())["settings"]["steps"] == 3
    assert json.loads((cli / "config.json").read_text())["final"] == str(out)
    # --run-dir puts the folder under another root: the nodes' output/runs, where Load LoRA lists it
    out2 = tmp_path / "n.safetensors"
    assert main(["train-lora", "--model", "tiny", "--motion", str(clip), "--prompt", PROMPT, "--steps", "1",
                 "--rank", "2", "--no-gradient-checkpointing", "--quiet", "--out", str(out2),
                 "--run-dir", str(out_dir / "runs")]) == 0
    assert _settle(out_dir / "runs" / "lora" / "n_00001_", "n") == ["config.json", "loss.png", "losses.jsonl"]


def test_dualreal_node_and_cli_share_the_layout_and_leave_no_partial_or_state(tiny, out_dir, tmp_path):
    from dual_adapter import media
    from dual_adapter.cli import main
    from nodes import dualreal_nodes as N

    x = _clip()
    kw = dict(subject=torch.rand(1, 64, 96, 3), identity_prompt="dog *", motion=x, motion_prompt=PROMPT, steps=2,
              lr=1e-3, motion_ratio=0.5, hidden_width=4, groups=1, form="zero_init", seed=0, name="adapters",
              warmup_steps=0, checkpoint_every=1)
    with torch.inference_mode():
        N.DualRealTrain().train(PatchedModel(tiny), **kw)
    node = out_dir / "runs" / "dualreal" / "adapters_00001_"
    clip = media.write_video(x, tmp_path / "clip.mp4", fps=8)
    assert main(["train-dualreal", "--subject", str(ROOT / "examples" / "dog" / "00.png"), "--identity-prompt",
                 "dog *", "--motion", str(clip), "--motion-prompt", PROMPT, "--steps", "2", "--warmup", "0",
                 "--groups", "1", "--hidden", "4", "--motion-batch", "1", "--checkpoint-every", "1",
                 "--out", str(tmp_path / "adapters.safetensors")]) == 0
    cli = tmp_path / "runs" / "dualreal" / "adapters_00001_"
    assert _settle(cli, "adapters") == _settle(node, "adapters") == ["config.json", "loss.png", "losses.jsonl"]
    left = [p for p in list(out_dir.rglob("*")) + list(tmp_path.rglob("*"))
            if ".partial." in p.name or "state." in p.name or p.name == "checkpoint.safetensors"]
    assert left == []


def test_a_stopped_cli_run_resumes_bit_identically_from_its_folder(tiny, tmp_path, monkeypatch, capsys):
    from dual_adapter import media
    from dual_adapter.cli import main
    from dual_adapter.lora import load_lora
    from dual_adapter.progress import TextProgress

    clip = media.write_video(_clip(), tmp_path / "clip.mp4", fps=8)
    args = ["train-lora", "--model", "tiny", "--motion", str(clip), "--prompt", PROMPT, "--steps", "4", "--rank", "2",
            "--dropout", "0", "--no-gradient-checkpointing", "--checkpoint-every", "1", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "straight.safetensors")]) == 0
    real = TextProgress.__call__

    def stop_at_2(bar, step, total=None, info=None):
        real(bar, step, total, info)
        if info and "loss" in info and step >= 2:
            raise InterruptedByUser("stopped for the test")

    out = tmp_path / "again.safetensors"
    with monkeypatch.context() as mp:
        mp.setattr(TextProgress, "__call__", stop_at_2)
        assert main(args + ["--out", str(out)]) == 130
    run = tmp_path / "runs" / "lora" / "again_00001_"
    assert {"checkpoint.safetensors", "state.safetensors", "config.json"} <= set(_layout(run)) and not out.exists()
    assert main(args + ["--out", str(out)]) == 2  # a rerun without --resume is refused, naming the kept files
    assert "checkpoint.safetensors" in capsys.readouterr().err
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert _layout(run) == ["config.json", "loss.png", "losses.jsonl"]
    assert len(json.loads((run / "config.json").read_text())["resumed"]) == 1
    a, b = load_lora(tmp_path / "straight.safetensors").state_dict, load_lora(out).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "runs" / "lora" / "again_00002_").exists()
    assert main(args + ["--out", str(out), "--resume"]) == 2  # finished: never continued
    assert "already exists" in capsys.readouterr().err


def test_run_folder_names_are_reserved_and_checked(tmp_path):
    from dual_adapter.runs import RunFolder, side_file

    a = RunFolder.start(tmp_path, "lora", "x", resume=False)
    b = RunFolder.start(tmp_path, "lora", "x", resume=False)
    assert (a.path.name, b.path.name) == ("x_00001_", "x_00002_") and a.path.is_dir() and b.path.is_dir()
    assert a.final == a.path / "x.safetensors" and a.state == a.path / "state.safetensors"
    assert side_file(tmp_path / "m.ckpt.safetensors", "state").name == "m.ckpt.state.safetensors"  # outside a run
    for bad in ("a/b", "../x", "", "x" * 200):
        with pytest.raises(DualAdapterError, match="name"):
            RunFolder.start(tmp_path, "lora", bad, resume=False)
    with pytest.raises(DualAdapterError, match="nothing to resume: no stopped run named 'x'"):
        RunFolder.start(tmp_path, "lora", "x", resume=True)
    with pytest.raises(DualAdapterError, match="unknown method"):
        RunFolder.start(tmp_path, "other", "x", resume=False)
    with b.held():  # a run that never trained leaves no folder
        pass
    assert not b.path.exists() and a.path.exists()
    a.state.write_bytes(b"")
    assert RunFolder.start(tmp_path, "lora", "x", resume=True).path == a.path
