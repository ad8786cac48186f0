"""Shared fixtures: the tiny model (built once per test run), paths of ../shared/data, the node classes.

Tests live in one folder per feature (docs/testing.md); helpers that several folders use are in helpers.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):  # the package, and helpers.py for every test folder
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("DUAL_ADAPTER_OUTPUT", str(ROOT / "output" / "pytest"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not beside the project")
    return DATA


@pytest.fixture(scope="session")
def tiny():
    """The built-in tiny CogVideoX (shared: tests must not modify it; use patches / copies)."""
    from dual_adapter.backbones.cogvideox import build_tiny

    return build_tiny("tiny", seed=0)


@pytest.fixture(scope="module")
def classes():
    """The pack's node classes by name, as the headless runner loads them."""
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


@pytest.fixture()
def out_dir(tmp_path, monkeypatch) -> Path:
    """A fresh output folder, also used by nodes (bridge.output_dir)."""
    d = tmp_path / "output"
    d.mkdir()
    monkeypatch.setenv("DUAL_ADAPTER_OUTPUT", str(d))
    monkeypatch.setenv("DUAL_ADAPTER_INPUT", str(tmp_path / "input"))
    monkeypatch.setenv("DUAL_ADAPTER_MODELS", str(tmp_path / "models"))
    return d


@pytest.fixture(scope="module")
def one_thread():
    """torch on one CPU thread for a module: the tiny models are overhead-bound, so one intra-op thread is as
    fast, and stays fast when other processes share the cores (two spinning OpenMP threads under contention
    made steps ~10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
