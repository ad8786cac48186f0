"""ComfyUI entry point of the DualAdapter node pack (imports nodes/ only)."""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:  # make `dual_adapter` and `nodes` importable as top-level packages
    sys.path.insert(0, _here)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from .nodes.bridge import register_folders  # noqa: E402

register_folders()
WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
