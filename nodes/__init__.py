"""Thin ComfyUI nodes. Each sibling module defines NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS; this package collects them (no module is listed by hand, so
adding a node module needs no edit here)."""
from __future__ import annotations

import importlib
import pkgutil

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name.startswith("_") or _m.name in ("bridge", "common", "headless_core"):
        continue
    _mod = importlib.import_module(f"{__name__}.{_m.name}")
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
