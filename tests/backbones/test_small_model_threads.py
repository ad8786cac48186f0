"""Loading a small built-in model (tiny*, mini) on CPU sets torch to one thread, unless the user chose a count
(``--threads``, ``DUAL_ADAPTER_THREADS``, ``OMP_NUM_THREADS``): these models gain nothing from threads and a busy
machine slowed a default-threaded demo tenfold (docs/results/demo.md)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def two_threads(monkeypatch):
    """torch on 2 threads with no user choice in the environment; torch's count restored afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("DUAL_ADAPTER_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["tiny", "tiny-5b", "mini", "tiny-unet3d", "tiny-animatediff"])
def test_small_models_load_on_one_thread(name, two_threads):
    from dual_adapter.models import load_backbone

    load_backbone(name)
    assert torch.get_num_threads() == 1


def test_a_chosen_count_is_kept(two_threads, monkeypatch):
    from dual_adapter.models import load_model

    monkeypatch.setenv("DUAL_ADAPTER_THREADS", "2")
    load_model("tiny")
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("DUAL_ADAPTER_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    load_model("tiny")
    assert torch.get_num_threads() == 2


def test_the_cli_threads_flag_holds_for_its_command_only(two_threads):
    from dual_adapter.models import load_model
    from dual_adapter.cli import build_parser
    from dual_adapter.threads import threads_for_command

    assert build_parser().parse_args(["demo", "--threads", "2"]).threads == 2
    torch.set_num_threads(3)
    with threads_for_command(2):
        load_model("tiny")
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 3
    load_model("tiny")
    assert torch.get_num_threads() == 1


def test_bad_thread_settings_are_refused_by_name(two_threads, monkeypatch):
    from dual_adapter.models import load_model
    from dual_adapter.errors import DualAdapterError
    from dual_adapter.threads import set_threads

    monkeypatch.setenv("DUAL_ADAPTER_THREADS", "many")
    with pytest.raises(DualAdapterError, match="DUAL_ADAPTER_THREADS='many'"):
        load_model("tiny")
    with pytest.raises(DualAdapterError, match="threads=-1"):
        set_threads(-1)


def test_other_devices_keep_torch_threads(two_threads):
    from dual_adapter.threads import small_model_threads

    assert small_model_threads("cuda") == 2 and torch.get_num_threads() == 2
