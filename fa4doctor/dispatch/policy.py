"""The dispatch policy, set by the operator through the environment, never by a hidden default.

- `FA4DOCTOR_BACKEND=fa3` forces one backend; if it cannot run a call, that is an error.
- `FA4DOCTOR_DISABLE=fa4,fa2` disables backends (comma-separated).
- `FA4DOCTOR_STRICT=1` raises instead of falling back from the preferred backend.
- `FA4DOCTOR_POLICY=priority|fastest` orders the eligible backends: `priority` (the default) takes
  the first in FA4 > FA3 > FA2 > SDPA; `fastest` takes the one this node measured fastest among
  those it vetted (`dispatch/speed.py`), and the fixed order where nothing was measured. Why
  `priority` is the default: docs/dispatch.md#choosing-by-measured-speed.

>>> Policy.from_env({"FA4DOCTOR_DISABLE": "FA4, fa2"}).disabled == frozenset({BackendName.FA4, BackendName.FA2})
True
>>> Policy.from_env({"FA4DOCTOR_POLICY": " Fastest "}).order
'fastest'
>>> Policy.from_env({"FA4DOCTOR_POLICY": "speed"})
Traceback (most recent call last):
...
fa4doctor.names.PolicyError: FA4DOCTOR_POLICY: unknown policy 'speed' (valid: priority, fastest)
>>> Policy.from_env({"FA4DOCTOR_BACKEND": "fa5"})
Traceback (most recent call last):
...
fa4doctor.names.PolicyError: FA4DOCTOR_BACKEND: unknown backend 'fa5' (valid: fa4, fa3, fa2, sdpa)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fa4doctor.dispatch.reasons import BackendName, PolicyError

ENV_BACKEND = "FA4DOCTOR_BACKEND"
ENV_DISABLE = "FA4DOCTOR_DISABLE"
ENV_STRICT = "FA4DOCTOR_STRICT"
ENV_POLICY = "FA4DOCTOR_POLICY"
PRIORITY, FASTEST = "priority", "fastest"
ORDERS = (PRIORITY, FASTEST)
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Policy:
    force: BackendName | None = None
    disabled: frozenset[BackendName] = frozenset()
    strict: bool = False
    order: str = PRIORITY  # FA4DOCTOR_POLICY: how eligible backends are ranked

    def __post_init__(self) -> None:
        if self.force is not None and self.force in self.disabled:
            raise PolicyError(f"{ENV_BACKEND}={self.force.value} is also listed in {ENV_DISABLE}")
        if self.order not in ORDERS:
            raise PolicyError(f"{ENV_POLICY}: unknown policy {self.order!r} (valid: {', '.join(ORDERS)})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        environ = os.environ if environ is None else environ
        force = environ.get(ENV_BACKEND, "").strip()
        raw = environ.get(ENV_DISABLE, "")
        disabled = [part for part in raw.split(",") if part.strip()] if raw.strip() else []
        if raw.strip() and not disabled:  # ",,," would disable nothing, silently; "fa4," stays a list of one
            raise PolicyError(f"{ENV_DISABLE}: empty backend name in {raw!r} (expected a comma-separated "
                              f"list of: {', '.join(b.value for b in BackendName)})")
        strict = environ.get(ENV_STRICT, "").strip().lower()
        if strict not in _TRUE | _FALSE:
            raise PolicyError(f"{ENV_STRICT}: expected 1 or 0, got {strict!r}")
        return cls(force=BackendName.parse(force, ENV_BACKEND) if force else None,
                   disabled=frozenset(BackendName.parse(p, ENV_DISABLE) for p in disabled),
                   strict=strict in _TRUE, order=environ.get(ENV_POLICY, "").strip().lower() or PRIORITY)
