"""The warm-up of the shared training loop follows DualReal's released trainer (diffusers ``get_scheduler``
with ``num_warmup_steps`` as given): a run shorter than its warm-up never reaches the peak learning rate."""
import logging

import pytest
import torch

from dual_adapter.training import TrainConfig, make_lr_schedule


def _lrs(sched, steps):
    out = []
    for _ in range(steps):  # the lr step k (0-based) runs at, as in the authors' loop: optimizer.step, then lr.step
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def _opt(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("schedule", ["cosine_with_restarts", "cosine", "constant"])
def test_short_run_peaks_as_the_authors_schedule(schedule):
    from diffusers.optimization import get_scheduler

    steps, warm, lr = 100, 200, 1e-3
    ours = _lrs(make_lr_schedule(_opt(lr), TrainConfig(steps=steps, lr=lr, warmup_steps=warm, lr_schedule=schedule)),
                steps)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    theirs = _lrs(get_scheduler(name, optimizer=_opt(lr), num_warmup_steps=warm, num_training_steps=steps), steps)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    assert max(ours) == pytest.approx(lr * (steps - 1) / warm, rel=1e-12)  # 4.95e-4, not lr
    assert max(ours) < lr


def test_long_run_reaches_lr_after_the_warm_up():
    steps, warm, lr = 300, 200, 1e-3
    lrs = _lrs(make_lr_schedule(_opt(lr), TrainConfig(steps=steps, lr=lr, warmup_steps=warm)), steps)
    assert lrs[warm] == pytest.approx(lr) and lrs[warm - 1] == pytest.approx(lr * (warm - 1) / warm)


def test_short_run_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="dual_adapter.training"):
        make_lr_schedule(_opt(1e-3), TrainConfig(steps=100, lr=1e-3, warmup_steps=200))
    assert "peaks at 0.000495" in caplog.text
