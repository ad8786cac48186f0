"""torch >= 2.6 (CVE-2025-32434) is required by the package and by every install file."""
from __future__ import annotations

import pytest

from helpers import ROOT


def test_safe_torch_is_required_everywhere():
    import dual_adapter

    assert not dual_adapter.torch_is_safe("2.5.1+cu124") and not dual_adapter.torch_is_safe("2.4.0")
    assert dual_adapter.torch_is_safe("2.6.0+cu124") and dual_adapter.torch_is_safe("2.14.0")
    with pytest.raises(ImportError, match="CVE-2025-32434"):
        dual_adapter.require_safe_torch("2.5.1")
    dual_adapter.require_safe_torch()  # the installed one passes
    deps = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in deps and "torch>=2.4" not in deps
    assert "torch >= 2.6" in (ROOT / "requirements.txt").read_text()
