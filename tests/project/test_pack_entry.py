"""The pack's ComfyUI entry (the repository's root __init__.py) imports in both ways it is met."""
import importlib.machinery
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name, as_package):
    path = str(ROOT / "__init__.py")
    if as_package:
        spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[str(ROOT)])
    else:  # a top-level module with no package, as pytest imports `__init__.py` of such a folder
        spec = importlib.machinery.ModuleSpec(name, importlib.machinery.SourceFileLoader(name, path), origin=path)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_entry_imported_as_a_plain_module_does_not_fail():
    """pytest imports the root __init__.py this way when the checkout folder is named `comfyui-dual-adapter`
    (the name the install instructions give); a relative import there raised ImportError and every test errored."""
    module = _load("__init__", as_package=False)
    assert module.NODE_CLASS_MAPPINGS == {}


def test_entry_imported_as_a_package_registers_the_nodes():
    """ComfyUI loads a custom-node folder as a package (spec with submodule_search_locations)."""
    module = _load("comfyui_dual_adapter_entry_check", as_package=True)
    assert "DualRealTrain" in module.NODE_CLASS_MAPPINGS and "DualAdapterApplyLoRA" in module.NODE_CLASS_MAPPINGS
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) <= set(module.NODE_CLASS_MAPPINGS)
