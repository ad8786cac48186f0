"""ComfyUI entry point of the DualAdapter node pack (imports nodes/ only)."""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:  # make `dual_adapter` and `nodes` importable as top-level packages
    sys.path.insert(0, _here)

if __package__:  # loaded by ComfyUI (or any importer) as a package: register the nodes
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
    from .nodes.bridge import register_folders  # noqa: E402

    register_folders()
else:
    # Imported as a plain module, with no package around it: pytest does this when it collects a checkout
    # whose folder name is not a Python identifier (e.g. `comfyui-dual-adapter`, the name the install
    # instructions use). There is nothing to register outside ComfyUI, so the entry stays empty.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
