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


def _checked(example: doctest.Example) -> bool:
    """An example that runs and whose output is compared (not an import, not skipped)."""
    return bool(example.want) and not example.options.get(doctest.SKIP)


def test_the_public_modules_have_examples():
    finder = doctest.DocTestFinder()
    with_examples = {name for name in MODULES if any(
        _checked(example) for test in finder.find(importlib.import_module(name)) for example in test.examples)}
    for name in ("fa4doctor.runtime.dispatcher", "fa4doctor.dispatch.selection", "fa4doctor.probe.gather",
                 "fa4doctor.smoke.runner", "fa4doctor.serve.server", "fa4doctor.dispatch.spec",
                 "fa4doctor.dispatch.reasons", "fa4doctor.dispatch.semantics", "fa4doctor.dispatch.versions",
                 "fa4doctor.dispatch.policy", "fa4doctor.dispatch.vetting", "fa4doctor.dispatch.backends.sdpa",
                 "fa4doctor.exporters.explain_view"):
        assert name in with_examples
