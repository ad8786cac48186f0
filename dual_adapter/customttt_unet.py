"""Deprecated name of :mod:`dual_adapter.customttt.unet` (CustomTTT as published, on AnimateDiff).

``from dual_adapter import customttt_unet`` and ``from dual_adapter.customttt_unet import X`` keep working: this
module stands for that one (the same module object, so settings and monkeypatches reach it). New code imports
``dual_adapter.customttt.unet``.
"""
from __future__ import annotations

import sys

from .customttt import unet as _unet

sys.modules[__name__] = _unet
