"""The command line: generate writes a video and refuses what it cannot do; inputs are checked before the model
loads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import (
    fake_model_folder as _fake_folder,
    stills,  # noqa: F401  (the fixture: a photo and a 1-frame clip)
)

ROOT = Path(__file__).resolve().parents[2]


def test_cli_generate_writes_video(tmp_path):
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "dual_adapter", "generate", "--model", "tiny", "--prompt", "a dog", "--frames", "9",
           "--steps", "3", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0
    r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 2 and "already exists" in r2.stderr
    bad = cmd[:9] + ["8", "--steps", "3", "--out", str(tmp_path / "x.mp4")]
    r3 = subprocess.run(bad, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert r3.returncode == 2 and "4k+1" in r3.stderr and "Traceback" not in r3.stderr
    h = subprocess.run([sys.executable, "-m", "dual_adapter", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert h.returncode == 0 and "generate" in h.stdout


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
