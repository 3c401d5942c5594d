"""The runnable examples in the dispatch docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["fa4doctor.dispatch.spec", "fa4doctor.dispatch.reasons", "fa4doctor.dispatch.semantics",
           "fa4doctor.dispatch.versions", "fa4doctor.dispatch.policy", "fa4doctor.dispatch.selection",
           "fa4doctor.dispatch.vetting", "fa4doctor.dispatch.backends.sdpa", "fa4doctor.exporters.explain_view",
           "fa4doctor._lazy"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
