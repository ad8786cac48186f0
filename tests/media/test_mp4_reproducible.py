"""The MP4 writer is deterministic: the same frames give the same bytes in separate processes."""
from __future__ import annotations

from pathlib import Path

import torch


def test_mp4_is_byte_reproducible_across_processes(tmp_path):
    """The same frames give the same MP4 bytes in separate processes (x264's macroblock-tree made about
    1 run in 4 differ; the encoder's thread count differs between machines and PyAV versions)."""
    import hashlib
    import subprocess
    import sys

    g = torch.Generator().manual_seed(3)
    frames = torch.rand(9, 64, 96, 3, generator=g) * 0.3 + torch.linspace(0, 0.7, 96).view(1, 1, 96, 1)
    torch.save(frames, tmp_path / "frames.pt")
    root = Path(__file__).resolve().parents[2]
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); torch.set_num_threads(1)\n"
            "from dual_adapter.media import write_video\n"
            "for p in sys.argv[3:]: write_video(torch.load(sys.argv[2]), p)\n")
    outs = []
    for k in range(3):  # 3 processes (the difference came between processes, not within one)
        paths = [str(tmp_path / f"v{k}.mp4")]
        subprocess.run([sys.executable, "-c", code, str(root), str(tmp_path / "frames.pt"), *paths], check=True,
                       timeout=120)
        outs += paths
    digests = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in outs}
    assert len(digests) == 1, f"{len(digests)} different files from the same frames"
    sei = Path(outs[0]).read_bytes()
    if b"x264 - core" in sei:  # the settings x264 records in the stream: the deterministic ones
        assert b" threads=1 " in sei and b" mbtree=0 " in sei
