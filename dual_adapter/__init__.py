"""dual_adapter: customized video generation on CogVideoX (DualReal, TAP motion LoRA, CustomTTT).

Pure torch / diffusers / peft; never imports ComfyUI. See README.md and docs/ for the Python API.

Importing the package checks that the installed torch is >= 2.6 (:func:`require_safe_torch`).
"""
__version__ = "0.1.0"

import re as _re

from .errors import DualAdapterError, InterruptedByUser  # noqa: F401

#: The oldest torch the pack runs on: in older versions ``torch.load(weights_only=True)`` (used to
#: import the authors' ``adapter.pth`` and torchvision's RAFT weights) can be made to run code
#: (CVE-2025-32434, fixed in torch 2.6.0).
MIN_TORCH = (2, 6)


def torch_is_safe(version: str) -> bool:
    """Whether a torch version string (``"2.6.0+cu124"``, ``"2.5.1"``, ``"2.7.0a0+git..."``) is >= 2.6."""
    m = _re.match(r"^\s*(\d+)\.(\d+)", str(version))
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= MIN_TORCH


def require_safe_torch(version: str | None = None) -> None:
    """Refuse to run on torch older than 2.6 (checked, never installed).

    Reads the installed version from the package metadata (no torch import) when ``version`` is None.

    Raises:
        ImportError: torch is older than 2.6; the message says why and how to upgrade.
    """
    if version is None:
        try:
            from importlib.metadata import PackageNotFoundError, version as _dist_version

            version = _dist_version("torch")
        except PackageNotFoundError:  # a torch without metadata (e.g. a source build on PYTHONPATH)
            import torch

            version = torch.__version__
    if not torch_is_safe(version):
        raise ImportError(
            f"comfyui-dual-adapter needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}, found torch {version}: in older "
            f"torch, torch.load(weights_only=True) can be made to run code from a crafted weights file "
            f"(CVE-2025-32434). Upgrade torch in this Python environment (for ComfyUI: its own), with the index "
            f"URL of your CUDA build, e.g. pip install -U \"torch>=2.6\" --index-url "
            f"https://download.pytorch.org/whl/cu124")


require_safe_torch()
