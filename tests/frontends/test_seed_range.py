"""Seeds: every widget seed maps to a generator, and the CLI refuses an out-of-range seed while parsing."""
from __future__ import annotations

import pytest
import torch

from dual_adapter.errors import DualAdapterError


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
