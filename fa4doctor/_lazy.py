"""Lazy package exports (PEP 562): a name imports its module on first use, so importing the package
costs nothing (no torch, no CUDA).

>>> __getattr__, __dir__ = lazy_exports("fa4doctor", {"Policy": "fa4doctor.dispatch.policy"})
>>> __getattr__("Policy").__name__, "Policy" in __dir__()
('Policy', True)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` for `package`, whose `exports` map name -> module."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
