"""dual_adapter: customized video generation on CogVideoX (DualReal, TAP motion LoRA, CustomTTT).

Pure torch / diffusers / peft; never imports ComfyUI. See README.md for the Python API.
"""
__version__ = "0.1.0"

from .errors import DualAdapterError, InterruptedByUser  # noqa: F401
