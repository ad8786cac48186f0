"""Safe file writes: safetensors round trip, atomic and never overwriting; counted names reserved."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError
from dual_adapter.io import load_safetensors, next_free_path, save_safetensors


def test_safetensors_roundtrip_atomic_no_overwrite(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    p = save_safetensors(t, tmp_path / "w.safetensors", {"rank": 4, "name": "x", "targets": ["q", "k"]})
    back, meta = load_safetensors(p)
    assert all(torch.equal(t[k], back[k]) for k in t)
    assert meta == {"rank": 4, "name": "x", "targets": ["q", "k"]}
    with pytest.raises(DualAdapterError, match="already exists"):
        save_safetensors(t, p)
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(DualAdapterError, match="empty"):
        load_safetensors(tmp_path / "empty.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DualAdapterError, match="bad.safetensors"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_next_free_path_counts_up(tmp_path):
    a = next_free_path(tmp_path, "dualreal/dog", "safetensors")
    assert a.name == "dog_00001_.safetensors"
    a.write_bytes(b"x")
    b = next_free_path(tmp_path, "dualreal/dog", "safetensors")
    assert b.name == "dog_00002_.safetensors" and b.stat().st_size == 0  # reserved: created empty, exclusively
