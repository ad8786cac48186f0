"""The command line: generate writes a video and refuses what it cannot do; inputs are checked before the model
loads."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (
    fake_model_folder as _fake_folder,
    stills,  # noqa: F401  (the fixture: a photo and a 1-frame clip)
)

ROOT = Path(__file__).resolve().parents[2]


def test_cli_generate_writes_video(tmp_path, capsys):
    from dual_adapter.cli import main

    out = tmp_path / "out.mp4"
    cmd = ["generate", "--model", "tiny", "--prompt", "a dog", "--frames", "9", "--steps", "3", "--out", str(out),
           "--quiet"]
    assert main(cmd) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert main(cmd) == 2 and "already exists" in capsys.readouterr().err
    bad = cmd[:6] + ["8", "--steps", "3", "--out", str(tmp_path / "x.mp4")]
    assert main(bad) == 2 and "4k+1" in capsys.readouterr().err  # a refusal, not a traceback
    with pytest.raises(SystemExit) as h:
        main(["--help"])
    assert h.value.code == 0 and "generate" in capsys.readouterr().out


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
