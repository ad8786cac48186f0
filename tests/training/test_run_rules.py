"""Run rules of every trainer: never lose or destroy a run (reruns refused, one writer per run, the last
finite checkpoint kept, a consistent checkpoint pair, SIGTERM as Ctrl-C), counted run names, atomic writes.

CPU, tiny model, DualReal on random latents (fast). Each test names the failure it guards against.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from dual_adapter.dualreal import load_adapters, run_paths
from dual_adapter.errors import DualAdapterError, InterruptedByUser, TrainingDiverged
from dual_adapter.io import lock_path, save_safetensors
from dual_adapter.training import TrainConfig

from helpers import (  # noqa: F401  (the fixtures data and bundle: one short run's)
    GUITAR,
    GUITAR_PROMPT as PROMPT,
    ROOT,
    run_config as _cfg,
    run_data,
    shared_tiny,
    stop_at as _stop_at,
    train_run as _train,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread in this module


def test_rerun_without_resume_is_refused_and_keeps_the_checkpoint(bundle, data, tmp_path):
    out = tmp_path / "run.safetensors"
    with pytest.raises(InterruptedByUser):
        _train(bundle, data, out, _cfg(6, checkpoint_every=2), callback=_stop_at(3))
    files = run_paths(out)
    before = {k: p.read_bytes() for k, p in files.items()}
    with pytest.raises(DualAdapterError, match=r"already has files.*partial.*step 3.*resume.*another"):
        _train(bundle, data, out, _cfg(6))
    assert {k: p.read_bytes() for k, p in files.items()} == before  # the step-3 checkpoint is intact
    assert not lock_path(out).exists()
    # a losses file alone (a finished run's, or another tool's) is never overwritten either
    other = tmp_path / "other.safetensors"
    run_paths(other)["losses"].write_text("{}\n")
    with pytest.raises(DualAdapterError, match="losses.jsonl"):
        _train(bundle, data, other, _cfg(2))
    assert run_paths(other)["losses"].read_text() == "{}\n"
    # resume with nothing to resume is refused (it used to start fresh silently)
    with pytest.raises(DualAdapterError, match="nothing to resume"):
        _train(bundle, data, tmp_path / "none.safetensors", _cfg(2), resume=True)


def test_a_second_process_with_the_same_out_is_refused_until_it_is_gone(bundle, data, tmp_path):
    out = tmp_path / "run.safetensors"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        lock_path(out).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        with pytest.raises(DualAdapterError, match=rf"another training run is writing.*pid {sleeper.pid}"):
            _train(bundle, data, out, _cfg(1))
        assert not run_paths(out)["partial"].exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    res = _train(bundle, data, out, _cfg(1))  # the owner is gone: its stale lock is taken over
    assert res.completed and not lock_path(out).exists()


def test_divergence_keeps_the_last_finite_checkpoint_and_writes_no_nan(bundle, data, tmp_path):
    out = tmp_path / "run.safetensors"
    # lr 1e8 blows the weights up at the first step: no checkpoint is sane, none is written (a resume from the
    # last *sane* one is tested in test_sane_checkpoints.py)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 1: the weight norm.*no checkpoint had been "
                                               r"written yet.*lr=1e\+08\) and start again"):
        _train(bundle, data, out, _cfg(30, lr=1e8, checkpoint_every=1, grad_clip=0.0))
    files = run_paths(out)
    assert not files["partial"].exists() and not files["state"].exists()


def test_a_kill_between_the_weights_and_state_writes_resumes_consistently(bundle, data, tmp_path):
    cfg = lambda: _cfg(8, lr=1e-2, warmup_steps=2, checkpoint_every=2)  # noqa: E731
    full = _train(bundle, data, tmp_path / "full.safetensors", cfg())
    out = tmp_path / "run.safetensors"
    files = run_paths(out)
    with pytest.raises(InterruptedByUser):
        _train(bundle, data, out, cfg(), callback=_stop_at(4))
    state_at_4 = files["state"].read_bytes()
    with pytest.raises(InterruptedByUser):
        _train(bundle, data, out, cfg(), callback=_stop_at(6), resume=True)
    # simulate a kill after the step-6 weights were written but before the step-6 state was
    files["state"].write_bytes(state_at_4)
    assert load_adapters(files["partial"]).meta["steps"] == 6
    res = _train(bundle, data, out, cfg(), resume=True)
    assert res.steps_done == 8 and [r["step"] for r in res.losses] == list(range(1, 9))
    for k, v in full.adapters.state_dict.items():
        assert torch.allclose(v, res.adapters.state_dict[k], atol=1e-6), k


def test_resume_applies_a_new_learning_rate(bundle, data, tmp_path, caplog):
    out = tmp_path / "run.safetensors"
    with pytest.raises(InterruptedByUser):
        _train(bundle, data, out, _cfg(6, lr=1e-3, lr_schedule="constant"), callback=_stop_at(3))
    with caplog.at_level("WARNING"):
        res = _train(bundle, data, out, _cfg(6, lr=5e-4, lr_schedule="constant"), resume=True)
    assert [r["lr"] for r in res.losses] == [1e-3] * 3 + [pytest.approx(5e-4)] * 3
    assert "learning rate changed from 0.001 to 0.0005" in caplog.text


def test_train_config_refuses_what_would_lose_or_fake_work():
    for kw, msg in (({"steps": 0}, "steps=0.*nothing would be trained"), ({"lr": float("inf")}, "lr=inf"),
                    ({"lr": float("nan")}, "lr=nan"), ({"lr": 0.0}, "lr=0.0"), ({"checkpoint_every": -1}, "checkpoint_every=-1"),
                    ({"warmup_steps": -2}, "warmup_steps=-2")):
        with pytest.raises(DualAdapterError, match=msg):
            TrainConfig(**{"steps": 5, **kw}).validate(min_steps=1)
    TrainConfig(steps=0).validate()  # CustomTTT may merge without TTT steps


def test_all_finite_check_finds_nan_and_inf_but_not_a_large_finite_sum():
    """The per-step divergence check (one summed isfinite): a NaN or an infinity in any tensor is caught; finite
    weights whose float32 sum overflows are not a divergence."""
    from dual_adapter.training import _all_finite

    ok = [torch.ones(3, 4), torch.zeros(5, dtype=torch.float16)]
    assert _all_finite(ok) and _all_finite([])
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.ones(3, 4)
        t[1, 2] = bad
        assert not _all_finite(ok + [t]), bad
    big = [torch.full((4,), 3e38), torch.full((4,), 3e38)]  # each finite; their float32 sum is inf
    assert _all_finite(big)


def test_stale_temp_files_of_killed_writes_are_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".w.pid{dead.pid}.abc123_x.tmp.safetensors"
    live = tmp_path / f".w.pid{os.getpid()}.zzz999.tmp.safetensors"  # a write in progress: never touched
    other = tmp_path / f".w2.pid{dead.pid}.abc123_x.tmp.safetensors"  # another file's temporary
    for f in (stale, live, other):
        f.write_bytes(b"x" * 100)
    save_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert not stale.exists() and live.exists() and other.exists()
    with pytest.raises(DualAdapterError, match="already exists") as e:
        save_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert "overwrite=True" not in str(e.value)  # no option that the CLI does not have


def _dualreal_cli(out, *extra):
    from dual_adapter.cli import main

    return main(["train-dualreal", "--subject", str(ROOT / "examples" / "dog"), "--identity-prompt", "dog *",
                 "--motion", str(GUITAR), "--motion-prompt", PROMPT, "--out", str(out), *extra])


def test_cli_refuses_reruns_and_bad_options_naming_real_options(tmp_path, capsys):
    from dual_adapter.cli import main

    out = tmp_path / "a.safetensors"
    stopped = tmp_path / "runs" / "dualreal" / "a_00001_"  # a stopped run of this --out
    stopped.mkdir(parents=True)
    (stopped / "checkpoint.safetensors").write_bytes(b"step-600 checkpoint")
    (stopped / "state.safetensors").write_bytes(b"state")
    assert _dualreal_cli(out) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and "--resume" in err and "another --out" in err
    assert (stopped / "checkpoint.safetensors").read_bytes() == b"step-600 checkpoint"
    assert sorted(p.name for p in stopped.parent.iterdir()) == ["a_00001_"]  # no new folder for a refused run
    assert _dualreal_cli(tmp_path / "b.safetensors", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    lo = tmp_path / "m.safetensors"
    kept = tmp_path / "runs" / "lora" / "m_00001_"
    kept.mkdir(parents=True)
    (kept / "checkpoint.safetensors").write_bytes(b"kept")
    (kept / "state.safetensors").write_bytes(b"state")
    assert main(["train-lora", "--motion", str(GUITAR), "--prompt", PROMPT, "--out", str(lo)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and "--resume" in err and (kept / "checkpoint.safetensors").read_bytes() == b"kept"
    for opts, msg in ((["--steps", "0"], "--steps 0"), (["--lr", "inf"], "--lr inf"), (["--lr", "nan"], "--lr nan"),
                      (["--lr", "-1"], "--lr -1"), (["--checkpoint-every", "-1"], "--checkpoint-every -1")):
        assert _dualreal_cli(tmp_path / "c.safetensors", *opts) == 2, opts
        assert msg in capsys.readouterr().err
        assert main(["train-lora", "--motion", str(GUITAR), "--prompt", PROMPT, "--out", str(tmp_path / "d.safetensors"),
                     *opts]) == 2, opts
        assert msg in capsys.readouterr().err
    assert not list(tmp_path.glob("c.*")) and not list(tmp_path.glob("d.*"))
    assert not list(tmp_path.glob("runs/*/c_*")) and not list(tmp_path.glob("runs/*/d_*"))


def test_node_rerun_with_the_same_name_starts_a_new_counted_run(bundle, out_dir, monkeypatch):
    """Queueing Train DualReal again (another seed, more steps) starts a new run with the next counter and
    leaves the earlier run's files alone; a finished run keeps its final file only (as the CLI's); resume
    continues the newest interrupted run of the name."""
    from dual_adapter.errors import InterruptedByUser
    from dual_adapter.patches import PatchedModel
    from nodes import dualreal_nodes as N

    kw = dict(model=PatchedModel(bundle), subject=torch.rand(1, 64, 96, 3), identity_prompt="dog *",
              motion=torch.rand(9, 64, 96, 3), motion_prompt=PROMPT, steps=2, lr=1e-3, motion_ratio=0.5,
              hidden_width=8, groups=2, form="zero_init", seed=0, name="same", warmup_steps=0, checkpoint_every=1)
    runs = out_dir / "runs" / "dualreal"
    with torch.inference_mode():
        with pytest.raises(DualAdapterError, match="no stopped run named 'same'"):
            N.DualRealTrain().train(**dict(kw, resume=True))
        assert not runs.exists() or not list(runs.iterdir())  # a refused run leaves no folder
        N.DualRealTrain().train(**kw)
        first = runs / "same_00001_" / "same.safetensors"
        before = first.read_bytes()
        adapters, _ = N.DualRealTrain().train(**dict(kw, seed=1, steps=3))  # a new run, not a refusal
        assert adapters.meta["steps"] == 3
        assert first.read_bytes() == before  # the first run is untouched
        assert sorted(f.name for f in (runs / "same_00002_").iterdir()) == [
            "config.json", "loss.png", "losses.jsonl", "same.safetensors"]

        class StopAt3(N.bridge.Progress):  # the queue's Cancel after step 3
            def __call__(self, step, total, info):
                if step == 3:
                    raise InterruptedByUser("cancelled")
                return super().__call__(step, total, info)

        with monkeypatch.context() as mp, pytest.raises(InterruptedByUser):
            mp.setattr(N.bridge, "Progress", StopAt3)
            N.DualRealTrain().train(**dict(kw, seed=1, steps=4))
        assert (runs / "same_00003_" / "state.safetensors").exists()
        adapters, _ = N.DualRealTrain().train(**dict(kw, seed=1, steps=4, resume=True))  # continues 00003: 3 -> 4
    assert adapters.meta["steps"] == 4
    assert first.read_bytes() == before and not (runs / "same_00004_").exists()
    assert not list(runs.rglob("*state.safetensors")) and not list(runs.rglob("checkpoint.safetensors"))
    # the counter comes after every run folder of the name, so a stopped run's folder is never taken over
    (runs / "same_00005_").mkdir()
    (runs / "same_00005_" / "state.safetensors").write_bytes(b"")
    (runs / "same_00007_").mkdir()
    from dual_adapter.runs import RunFolder

    assert RunFolder.start(out_dir / "runs", "dualreal", "same", resume=False).path.name == "same_00008_"
    assert RunFolder.start(out_dir / "runs", "dualreal", "same", resume=True).path.name == "same_00005_"


def test_sigterm_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    p = subprocess.Popen([sys.executable, "-m", "dual_adapter", "train-lora", "--motion", str(GUITAR), "--prompt",
                          PROMPT, "--steps", "100000", "--rank", "2", "--checkpoint-every", "100000",
                          "--no-gradient-checkpointing", "--out", str(out)],
                         cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and p.poll() is None:  # the first progress line comes after step 1
            if any("train-lora" in x and "/100000" in x for x in list(lines)):
                break
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=120)
        reader.join(timeout=10)
        rest = "".join(lines)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 143, rest[-2000:]
    assert "SIGTERM" in rest and "checkpoint is kept" in rest
    ck = tmp_path / "runs" / "lora" / "m_00001_" / "checkpoint.safetensors"
    from dual_adapter.lora import load_lora, train_state_path

    assert load_lora(ck).metadata["train"]["steps_done"] >= 1 and train_state_path(ck).exists()
    assert not lock_path(out).exists() and not list(tmp_path.glob(".*tmp*"))


def test_demo_twice_gets_two_new_folders(tmp_path, monkeypatch):
    from dual_adapter.cli import main

    monkeypatch.setenv("DUAL_ADAPTER_OUTPUT", str(tmp_path))
    rcs = []

    def two():  # the second run on tiny: the real-photo path (shipped examples) stays covered
        for model in ("mini", "tiny"):
            rcs.append(main(["demo", "--model", model, "--steps", "1", "--sample-steps", "1"]))

    t = threading.Thread(target=two, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the second demo hangs"
    assert rcs == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_00001_", "demo_00002_"]
    assert (tmp_path / "demo_00002_" / "video.mp4").stat().st_size > 0
