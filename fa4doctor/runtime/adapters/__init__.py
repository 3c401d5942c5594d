"""Adapters: the canonical call translated into each backend's own conventions.

Every adapter module has `bind(spec, scale) -> run`, done once per distinct
call shape, and `run(q, k, v, varlen, alibi_slopes, learnable_sink) -> out` per call; `q, k, v`
are `bshd`, or `thd` with `varlen` set. A backend module that cannot be imported raises
`AdapterImportError` from `bind`, which the runtime turns into an `import_failed` reason.
An adapter may also have `direct(spec, scale) -> Direct | None`: the backend's own function and
the keywords `run` passes it for a dense call with no ALiBi or sink, so the compiled hit path
(`runtime/native`) can call the backend without `run`'s Python frame.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
from types import ModuleType
from typing import Any, Callable, NamedTuple

from fa4doctor.names import DISTRIBUTIONS, BackendName
from fa4doctor.dispatch.semantics import FaMask, fa_mask
from fa4doctor.dispatch.spec import AttentionSpec, SpecError

MODULES = {name: f"fa4doctor.runtime.adapters.{name.value}" for name in BackendName}


class AdapterImportError(ImportError):
    """The backend's own module failed to import (any exception, not only ImportError:
    docs/sources.md#fa4-dependencies)."""

    def __init__(self, backend: BackendName, message: str):
        self.backend, self.message = backend, message
        super().__init__(f"{backend.value}: {message}")


class Direct(NamedTuple):
    """`func(q=q, k=k, v=v, **dict(zip(names[3:], values)))`, unwrapped: what `run` does for a dense
    call with no ALiBi or sink. A tuple, so the compiled hit path reads it without attribute lookups."""

    func: Callable[..., Any]
    names: tuple[str, ...]  # "q", "k", "v", then the keywords
    values: tuple[Any, ...]

    @classmethod
    def of(cls, func: Callable[..., Any], keywords: dict[str, Any]) -> "Direct":
        return cls(func, ("q", "k", "v", *keywords), tuple(keywords.values()))


def adapter(backend: BackendName) -> ModuleType:
    return importlib.import_module(MODULES[BackendName(backend)])


def direct(backend: BackendName, spec: AttentionSpec, scale: float) -> Direct | None:
    """The adapter's `Direct` call for `spec`, or None where it has none (call after `bind`)."""
    make = getattr(adapter(backend), "direct", None)
    return make(spec, scale) if make else None


def load_module(backend: BackendName, module: str) -> ModuleType:
    """Import a backend's module; a broken install becomes `AdapterImportError`, never a crash."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 (AttributeError from a stale CuTe tree: SkyRL PR #2132)
        raise AdapterImportError(backend, f"import {module} failed: {type(exc).__name__}: {exc}") from exc


def unwrap(result):
    """FA4 returns `(out, lse)`, FA3 did before #1851, FA2 with return_attn_probs: keep `out`."""
    return result[0] if isinstance(result, (tuple, list)) else result


@functools.cache
def installed_version(backend: BackendName) -> str | None:
    """The version of the distribution that provides `backend`, from its metadata (as the rules read it)."""
    for name in DISTRIBUTIONS[backend]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def fa_window(spec: AttentionSpec, backend: BackendName, negative_sides: bool = False) -> FaMask:
    """The FA `causal` flag and window for `spec`, or a `SpecError` where FA cannot express it."""
    found = fa_mask(spec, negative_sides=negative_sides)
    if found is None:
        raise SpecError("attn_mask_type", f"top-left {spec.attn_mask_type.value} with seqlen_q != seqlen_kv "
                        f"cannot be expressed in {backend.value}'s bottom-right causal convention")
    return found


def minus_one_window(mask: FaMask) -> tuple[int, int]:
    """FA2/FA3's `window_size`: -1 for an unbounded side, `(-1, 0)` under `causal`."""
    left = -1 if mask.left is None else mask.left
    return (left, 0) if mask.causal else (left, -1 if mask.right is None else mask.right)
