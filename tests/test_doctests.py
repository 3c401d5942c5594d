"""The runnable examples in every docstring of the package stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fa4doctor

MODULES = sorted(m.name for m in pkgutil.walk_packages(fa4doctor.__path__, "fa4doctor.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0


def test_the_public_modules_have_examples():
    finder = doctest.DocTestFinder()
    with_examples = {name for name in MODULES
                     if any(test.examples for test in finder.find(importlib.import_module(name)))}
    for name in ("fa4doctor.dispatch.runtime", "fa4doctor.dispatch.selection", "fa4doctor.probe.gather",
                 "fa4doctor.probe.smoke.runner", "fa4doctor.exporters.server"):
        assert name in with_examples
