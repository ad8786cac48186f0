"""The backbone registry finds a backbone that is a package (``backbones/cogvideox/``) as well as one that is a
module, and a package backbone keeps its names importable from the package itself."""
import importlib


def test_registry_finds_a_backbone_package():
    from dual_adapter.backbones import backbone_modules, kind_of, load_backbone

    mods = backbone_modules()
    cog = mods["cogvideox"]
    assert cog.__name__ == "dual_adapter.backbones.cogvideox" and hasattr(cog, "__path__")  # a package
    assert not hasattr(mods["unet3d"], "__path__")  # and modules still count
    assert kind_of("tiny") == "cogvideox" and load_backbone("tiny").kind == "cogvideox"


def test_package_backbone_names_are_the_submodules_objects():
    cog = importlib.import_module("dual_adapter.backbones.cogvideox")
    for name in cog.__all__:
        obj = getattr(cog, name)
        home = getattr(obj, "__module__", None)
        if callable(obj) and home:
            assert home.startswith("dual_adapter.backbones.cogvideox."), (name, home)
            assert getattr(importlib.import_module(home), name) is obj
